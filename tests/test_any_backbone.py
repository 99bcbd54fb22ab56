"""Every adaptation method on every backbone family: train a few steps, save, load, predict."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from fakes import write_digit_pair, write_two_class_data

from transferkit import DomainAdapter
from transferkit.cli import main
from transferkit.models.classifier import BACKBONE_LR_SCALE, BackboneClassifier
from transferkit.names import METHOD_NAMES

# one of each family, with weights that need no network: the paper's digit network, a
# torchvision model, a timm model, Lite0 with its offline ImageNet weights, Chollet's convnet,
# and the network of a finished adapt run
FAMILIES = {
    "digit": ("mnist", None),
    "torchvision": ("resnet18", "random"),
    "timm": ("timm:mobilenetv2_050", "random"),
    "lite0": ("efficientnet_lite0", "imagenet"),
    "small_convnet": ("small_convnet", "random"),
    "run": ("run:", None),
}


@pytest.fixture(scope="module")
def digit_root(tmp_path_factory):
    return write_digit_pair(tmp_path_factory.mktemp("data"), n_train=40, n_test=16)


@pytest.fixture(scope="module")
def finished_run(digit_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "source_only"
    DomainAdapter(method="source_only", epochs=1, steps_per_epoch=2, batch_size=8, device="cpu",
                  run_dir=out, data_root=digit_root, progress=False).fit("mnist", "mnist_m")
    return out


def _backbone(family, finished_run):
    name, weights = FAMILIES[family]
    if family == "run":
        return f"run:{finished_run}", None
    return name, weights


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_method_trains_on_every_backbone_family(method, family, digit_root, finished_run, tmp_path):
    name, weights = _backbone(family, finished_run)
    size = {"digit": 28, "run": 28, "small_convnet": 64}.get(family, 32)
    settings = {"backbone": name, "image_size": size, "epochs": 1, "steps_per_epoch": 2,
                "batch_size": 8, "device": "cpu", "data_root": digit_root, "progress": False,
                "run_dir": tmp_path / "run"}
    if weights is not None:
        settings["weights"] = weights
    if family == "lite0":
        settings["unfreeze"] = 1  # the last stage trains, the rest stays frozen
    adapter = DomainAdapter(method=method, **settings).fit("mnist", "mnist_m")
    assert 0.0 <= adapter.results_["target_test_accuracy"] <= 1.0
    network = adapter.model_.network
    if family != "digit":
        assert isinstance(network, BackboneClassifier)
        config = json.loads((tmp_path / "run" / "config.json").read_text())
        assert config["backbone"] == name and len(config["normalization"]["mean"]) == 3
    loaded = DomainAdapter.load(tmp_path / "run", data_root=digit_root, progress=False)
    images = adapter.pair_.target_test.images[:6]
    torch.testing.assert_close(loaded.predict(images), adapter.predict(images))


def test_a_pretrained_backbone_trains_at_a_fraction_of_the_rate_and_frozen_stages_do_not_move(
        digit_root, tmp_path):
    from transferkit.methods import DANN
    from transferkit.models.classifier import build_network

    torch.manual_seed(0)
    network = build_network("efficientnet_lite0", 10, 32, "imagenet", unfreeze=1)
    method = DANN(network)
    groups = method.parameter_groups()
    scales = sorted(group["lr_scale"] for group in groups)
    assert scales == [BACKBONE_LR_SCALE, 1.0]
    grouped = {id(p) for group in groups for p in group["params"]}
    frozen = [p for p in network.backbone.parameters() if not p.requires_grad]
    assert frozen and not any(id(p) in grouped for p in frozen)
    # the method's own domain classifier is in the full-rate group, sized from the bottleneck
    assert method.discriminator[0].in_features == network.feature_dim
    full = next(group for group in groups if group["lr_scale"] == 1.0)
    assert {id(p) for p in method.discriminator.parameters()} <= {id(p) for p in full["params"]}
    network.train()
    frozen_modules = [m for stage in network.backbone.stages[: network.split] for m in stage.modules()]
    assert frozen_modules and not any(m.training for m in frozen_modules)
    adapter = DomainAdapter(method="dann", backbone="efficientnet_lite0", unfreeze=1, image_size=32,
                            epochs=1, steps_per_epoch=3, batch_size=8, device="cpu", data_root=digit_root,
                            progress=False, seed=0).fit("mnist", "mnist_m")
    trained = adapter.last_weights_ or adapter.model_
    pretrained, after = network.backbone.stages, trained.network.backbone.stages
    for index in range(len(pretrained)):  # frozen stages (BatchNorm statistics too) unchanged
        if not pretrained[index].state_dict():
            continue  # the pooling stage holds nothing
        same = all(torch.equal(a, b) for a, b in zip(pretrained[index].state_dict().values(),
                                                      after[index].state_dict().values(), strict=True))
        assert same == (index < network.split), pretrained_stage_names(network)[index]


def pretrained_stage_names(network):
    return network.backbone.stage_names


def test_adapt_on_a_backbone_from_the_command_line(digit_root, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["adapt", "--method", "dann", "--source", "mnist", "--target", "mnist_m",
                 "--backbone", "small_convnet", "--weights", "random", "--image-size", "64",
                 "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8", "--device", "cpu",
                 "--quiet", "--out", str(out), "--data-root", str(digit_root)])
    assert code == 0
    assert "dann mnist → mnist_m" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["backbone"] == "small_convnet"
    with pytest.raises(SystemExit):
        main(["adapt", "--method", "dann", "--source", "mnist", "--target", "mnist_m",
              "--backbone", "small_convnet", "--unfreeze", "-1"])


def test_a_practitioners_walk_through_two_folders_adapt_a_pretrained_backbone_predict_report(
        tmp_path, capsys):
    """The README's walk-through: labelled source photos, a folder of unlabelled target photos of
    another look, one adapt command on ImageNet EfficientNet-Lite0, then predict on new images
    and report."""
    from fakes import encode, two_class_images

    source = write_two_class_data(tmp_path / "source", {"train": 24, "test": 8}, side=40)
    target = tmp_path / "target"
    (target / "day2").mkdir(parents=True)
    images, _ = two_class_images(24, 40, seed=10)
    for index, image in enumerate(images):  # another camera, darker, no labels
        dimmer = (image.astype(float) * 0.6).astype("uint8")
        folder = target if index % 2 else target / "day2"
        (folder / f"{index}.png").write_bytes(encode(dimmer, "PNG"))
    out = tmp_path / "run"
    code = main(["adapt", "--method", "dann", "--source", f"folder:{source}",
                 "--target", f"unlabelled:{target}", "--backbone", "efficientnet_lite0",
                 "--unfreeze", "1", "--image-size", "32",
                 "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--quiet", "--out", str(out)])
    assert code == 0
    assert "target-test accuracy — (unlabelled target)" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["target_test_accuracy"] is None and metrics["label_free_check"]
    assert main(["adapt", "--method", "target_only", "--source", f"folder:{source}",  # needs labels
                 "--target", f"unlabelled:{target}", "--image-size", "32", "--quiet",
                 "--out", str(tmp_path / "oracle")]) == 2
    assert "trains on target labels" in capsys.readouterr().err
    new = tmp_path / "new"
    new.mkdir()
    images, _ = two_class_images(3, 40, seed=99)
    for index, image in enumerate(images):
        (new / f"photo{index}.jpg").write_bytes(encode(image, "JPEG"))
    assert main(["predict", str(out), str(new), "--top", "2", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3 and all(line["class"] in ("cats", "dogs") for line in lines)
    assert all(abs(sum(t["probability"] for t in line["top"]) - 1.0) < 1e-4 for line in lines)
    assert main(["report", str(out), "--samples", "10"]) == 0
    assert (out / "report" / "report.html").is_file()


def test_review_fixes_rates_token_backbones_flags_and_vada_statistics(digit_root, tmp_path):
    from transferkit.errors import TransferkitError
    from transferkit.methods import DANN, VADA
    from transferkit.models.classifier import build_network

    torch.manual_seed(0)
    random_backbone = DANN(build_network("small_convnet", 10, 64, "random"))
    assert [group["lr_scale"] for group in random_backbone.parameter_groups()] == [1.0, 1.0]
    with pytest.raises(TransferkitError, match="not a feature map to pool"):
        build_network("timm:vit_tiny_patch16_224", 10, 224, "random")
    with pytest.raises(TransferkitError, match="apply to a --backbone"):
        DomainAdapter(method="dann", unfreeze=2)
    with pytest.raises(TransferkitError, match="batches of at least 2"):
        DomainAdapter(method="dann", backbone="small_convnet", weights="random", batch_size=1)
    # VADA's extra passes leave BatchNorm's running statistics to the real batch
    vada = VADA(build_network("small_convnet", 10, 64, "random")).train()
    batchnorm = vada.network.bottleneck[1]
    images = torch.rand(4, 3, 64, 64)
    vada.losses(images, torch.arange(4), torch.rand(4, 3, 64, 64), 0.5)
    assert int(batchnorm.num_batches_tracked) == 1


def test_reverse_validation_of_a_backbone_run_trains_that_backbone(digit_root, tmp_path):
    from transferkit.selection import REVERSE_RUN, reverse_validation

    adapter = DomainAdapter(method="dann", backbone="small_convnet", weights="random", image_size=64,
                            epochs=1, steps_per_epoch=2, batch_size=8, device="cpu", data_root=digit_root,
                            progress=False).fit("mnist", "mnist_m")
    reverse_validation(adapter, run_dir=tmp_path, progress=False)
    config = json.loads((tmp_path / REVERSE_RUN / "config.json").read_text())
    assert config["backbone"] == "small_convnet" and config["network"] is None


def test_run_backbones_take_digit_runs_of_any_method_and_refuse_backbone_runs(digit_root, tmp_path):
    from transferkit.errors import TransferkitError
    from transferkit.models.classifier import build_network

    settings = {"epochs": 1, "steps_per_epoch": 2, "batch_size": 8, "device": "cpu",
                "data_root": digit_root, "progress": False}
    DomainAdapter(method="cdan", run_dir=tmp_path / "cdan", **settings).fit("mnist", "mnist_m")
    network = build_network(f"run:{tmp_path / 'cdan'}", 10, 28, "trained", data_root=str(digit_root))
    assert network.feature_dim == 256  # the bottleneck over the CDAN run's trained features
    DomainAdapter(method="dann", backbone="small_convnet", weights="random", image_size=64,
                  run_dir=tmp_path / "backbone", **settings).fit("mnist", "mnist_m")
    with pytest.raises(TransferkitError, match="not on one of the paper's digit networks"):
        build_network(f"run:{tmp_path / 'backbone'}", 10, 28, "trained", data_root=str(digit_root))


@pytest.mark.parametrize("method", ["dann", "vada"])
def test_frozen_stages_run_once_per_image_and_train_to_the_same_model(method, digit_root, tmp_path,
                                                                      monkeypatch):
    from transferkit import api

    settings = {"method": method, "backbone": "resnet18", "weights": "random", "unfreeze": 1,
                "image_size": 32, "epochs": 2, "steps_per_epoch": 3, "batch_size": 8, "device": "cpu",
                "data_root": digit_root, "progress": False, "ema_decay": 0.9}
    prefix_calls = []
    real_prefix = api.with_cached_prefix

    def counted(*args, **kwargs):
        prefix_calls.append(1)
        return real_prefix(*args, **kwargs)

    monkeypatch.setattr(api, "with_cached_prefix", counted)
    full_passes = []  # images the whole network (frozen stages included) predicts
    real_predict = DomainAdapter.predict

    def counted_predict(self, images, domain="target"):
        full_passes.append(len(images))
        return real_predict(self, images, domain)

    monkeypatch.setattr(DomainAdapter, "predict", counted_predict)
    cached = DomainAdapter(**settings, run_dir=tmp_path / "cached").fit("mnist", "mnist_m")
    if method == "dann":  # scored from the cached activations: the frozen stages ran once
        assert full_passes == []
        # ... and to the same numbers as the whole network gives the same model
        assert cached.prediction_shares().as_dict() == cached.results_["label_free_check"]
        assert full_passes == [len(cached.pair_.target_train)]
        assert cached.score("source_test") == cached.results_["source_test_accuracy"]
    monkeypatch.setattr(api, "PREFIX_CACHE_BYTES", 0)  # too little memory: the frozen stages run per step
    stepped = DomainAdapter(**settings, run_dir=tmp_path / "stepped").fit("mnist", "mnist_m")
    if method == "vada":  # it perturbs the images themselves: never on cached activations
        assert not prefix_calls and cached.results_["inputs"] == "images"
    else:
        assert len(prefix_calls) == 1 and cached.results_["inputs"] == "frozen prefix (layer3) cached"
    assert stepped.results_["inputs"] == "images"
    for key in ("target_test_accuracy", "source_test_accuracy"):
        assert cached.results_[key] == stepped.results_[key]
    for (name, mine), theirs in zip(cached.model_.state_dict().items(),
                                    stepped.model_.state_dict().values(), strict=True):
        if mine.is_floating_point():  # the same sums in another order: rounding apart only
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5, msg=name)
    assert cached.model_.network.start == 0  # images again, for predict
    assert cached.predict(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2,)


def test_another_run_on_the_same_images_and_frozen_stages_reads_their_outputs_from_disk(
        digit_root, tmp_path, monkeypatch):
    from transferkit.training import batches

    computed = []
    real = batches.prefix_outputs

    def counted(backbone, split, inputs, **kwargs):
        computed.append(len(inputs))
        return real(backbone, split, inputs, **kwargs)

    monkeypatch.setattr(batches, "prefix_outputs", counted)
    settings = {"backbone": "resnet18", "weights": "random", "unfreeze": 1, "image_size": 32,
                "epochs": 1, "steps_per_epoch": 2, "batch_size": 8, "device": "cpu",
                "data_root": digit_root, "progress": False}
    first = DomainAdapter(method="dann", seed=0, run_dir=tmp_path / "a", **settings).fit("mnist", "mnist_m")
    assert len(computed) == 4  # source train, target train, source test; target test to score
    assert len(list((Path(os.environ["TRANSFERKIT_CACHE"]) / "activations").glob("prefix-*.npy"))) == 4
    again = DomainAdapter(method="dann", seed=0, run_dir=tmp_path / "b", **settings).fit("mnist", "mnist_m")
    assert len(computed) == 4  # read back: the frozen stages did not run
    for key in ("target_test_accuracy", "source_test_accuracy", "label_free_check"):
        assert again.results_[key] == first.results_[key]
    # another seed draws other random frozen weights: other outputs, computed afresh
    DomainAdapter(method="dann", seed=1, run_dir=tmp_path / "c", **settings).fit("mnist", "mnist_m")
    assert len(computed) == 8
    # a source-only run caches no target images for training; scoring it computes (and keeps)
    # their prefix outputs once, and a DANN run on the same images then reads them
    DomainAdapter(method="source_only", seed=2, run_dir=tmp_path / "d", **settings).fit("mnist", "mnist_m")
    assert len(computed) == 12  # seed 2's frozen weights: all four splits afresh
    DomainAdapter(method="dann", seed=2, run_dir=tmp_path / "e", **settings).fit("mnist", "mnist_m")
    assert len(computed) == 12
