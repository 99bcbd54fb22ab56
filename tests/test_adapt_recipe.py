"""`transferkit adapt`'s defaults: the adaptation recipe for a pair outside the paper's table
(issue 22), the paper's settings for its pairs and plain defaults on a pretrained backbone."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fakes import write_digit_pair, write_usps_bz2

from transferkit.api import ADAPT_RECIPE, PLAIN_DEFAULTS, DomainAdapter, adapt_defaults, default_network
from transferkit.cli import main


def test_the_recipe_is_the_default_outside_the_papers_table_on_a_digit_network():
    assert adapt_defaults("mnist", "usps") == ADAPT_RECIPE
    assert adapt_defaults("mnist", "zip:data/mnist_cd", backbone="mnist") == ADAPT_RECIPE
    assert ADAPT_RECIPE == {"method": "dann_fixmatch", "epochs": 20, "steps_per_epoch": 1000,
                            "ema_decay": 0.999, "input_norm": "auto", "select": "im"}
    # the paper's pairs keep the paper's settings; a pretrained backbone the plain ones
    for source, target, backbone in (("mnist", "mnist_m", None), ("syn_signs", "gtsrb", None),
                                     ("mnist", "usps", "resnet18"), ("mnist", "usps", "run:runs/x")):
        assert adapt_defaults(source, target, backbone) == PLAIN_DEFAULTS
    assert PLAIN_DEFAULTS["epochs"] == 10 and PLAIN_DEFAULTS["steps_per_epoch"] is None
    # a method given replaces the recipe's; SA chooses no epoch (its network is source-only)
    assert adapt_defaults("mnist", "usps", method="dann")["method"] == "dann"
    assert adapt_defaults("mnist", "usps", method="sa")["select"] is None
    # the library takes them as they are
    adapter = DomainAdapter(**adapt_defaults("mnist", "usps"), run_dir="unused")
    assert (adapter.method, adapter.input_norm, adapter.select, adapter.keep_epochs) == \
        ("dann_fixmatch", "auto", "im", True)


def test_the_default_network_outside_the_table_is_the_recipes():
    assert default_network("mnist", "usps", 10) == ("mnist", 28)
    assert default_network("folder:a", "folder:b", 43) == ("gtsrb", 40)
    assert default_network("svhn", "mnist", 10) == ("svhn", 32)  # the paper's, for its pairs


@pytest.fixture
def usps_root(tmp_path):
    """Tiny MNIST and a tiny USPS (16 px gray, LIBSVM) whose classes are learnable squares."""
    root = write_digit_pair(tmp_path / "data", n_train=48, n_test=16)
    rng = np.random.default_rng(3)
    for name, n in (("usps.bz2", 40), ("usps.t.bz2", 20)):
        digits = np.arange(n) % 10
        images = rng.integers(0, 40, (n, 16, 16), dtype=np.uint8)
        for image, digit in zip(images, digits, strict=True):
            row, col = 1 + (digit // 5) * 7, 1 + (digit % 5) * 3
            image[row : row + 5, col : col + 2] = 255
        write_usps_bz2(root / "usps" / name, images, digits)
    return root


def _adapt(root, out, *extra):
    return main(["adapt", "--source", "mnist", "--target", "usps", "--epochs", "2",
                 "--steps-per-epoch", "2", "--batch-size", "8", "--device", "cpu",
                 "--out", str(out), "--data-root", str(root), *extra])


def test_adapt_on_a_pair_outside_the_table_runs_the_recipe_and_says_so(usps_root, tmp_path, capsys):
    out = tmp_path / "recipe"
    assert _adapt(usps_root, out) == 0
    err = capsys.readouterr().err
    assert "mnist → usps is outside the paper's table, so the adaptation recipe's defaults apply: " \
           "--method dann_fixmatch, --ema-decay 0.999, --input-norm auto, --select im" in err
    config = json.loads((out / "config.json").read_text())
    assert (config["method"], config["network"], config["image_size"]) == ("dann_fixmatch", "mnist", 28)
    # auto: instance normalization on the MNIST network, where the recipe was developed
    assert (config["ema_decay"], config["input_norm"], config["select"]) == (0.999, "instance", "im")
    assert (config["epochs"], config["steps_per_epoch"]) == (2, 2)  # given: not the recipe's
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["selected_by"].startswith("im (label-free)")
    assert sorted(p.name for p in (out / "epochs").iterdir()) == ["epoch-1.safetensors",
                                                                  "epoch-2.safetensors"]


def test_every_recipe_default_can_be_turned_off(usps_root, tmp_path, capsys):
    out = tmp_path / "plain"
    assert _adapt(usps_root, out, "--method", "dann", "--ema-decay", "none", "--input-norm", "none",
                  "--select", "last", "--quiet") == 0
    assert "recipe" not in capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "dann" and config["ema_decay"] is None
    assert "input_norm" not in config and "select" not in config
    assert json.loads((out / "metrics.json").read_text())["selected_by"] == "last_epoch"
    assert not (out / "epochs").exists()


def test_the_papers_pair_keeps_the_papers_defaults(tmp_path, capsys):
    root = write_digit_pair(tmp_path / "data", n_train=24, n_test=8)
    out = tmp_path / "paper"
    assert main(["adapt", "--method", "dann", "--source", "mnist", "--target", "mnist_m",
                 "--steps-per-epoch", "1", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                 "--out", str(out), "--data-root", str(root), "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["ema_decay"] is None and "input_norm" not in config and "select" not in config


def test_auto_input_norm_is_instance_on_the_mnist_network_only(usps_root, tmp_path):
    out = tmp_path / "signs-network"
    assert _adapt(usps_root, out, "--network", "gtsrb", "--image-size", "32", "--quiet") == 0
    config = json.loads((out / "config.json").read_text())
    assert config["network"] == "gtsrb" and "input_norm" not in config  # none there
    assert DomainAdapter(input_norm="auto", backbone="resnet18").input_norm is None
