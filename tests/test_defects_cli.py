"""Issue 20, command-line validation: every numeric flag of every subcommand is checked at the
door (argparse types with ranges), before any data is read or any run folder is written; the
digit networks refuse an image too small for them by name; accuracies print rounded."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transferkit import cli
from transferkit.cli import main


def _base(command: str, tmp: Path) -> list[str]:
    """A command line that would start work (read data, write --out) if its flags passed."""
    root, out, run = str(tmp / "data"), str(tmp / "out"), str(tmp / "run")
    return {
        "adapt": ["adapt", "--method", "dann", "--source", "mnist", "--target", "mnist_m",
                  "--data-root", root, "--out", out, "--device", "cpu", "--quiet"],
        "reverse-validate": ["reverse-validate", run, "--data-root", root, "--quiet"],
        "extract": ["extract", "--data", f"folder:{root}", "--data-root", root, "--out", out],
        "finetune": ["finetune", "--data", f"folder:{root}", "--data-root", root, "--out", out],
        "scratch": ["scratch", "--data", f"folder:{root}", "--data-root", root, "--out", out],
        "predict": ["predict", run, str(tmp / "image.png")],
        "advise": ["advise", "--target", f"folder:{root}", "--data-root", root, "--out", out],
        "report": ["report", run, "--out", out],
        "benchmark ganin2016": ["benchmark", "ganin2016", "--out", out, "--data-root", root,
                                "--quiet"],
        "benchmark cats_vs_dogs": ["benchmark", "cats_vs_dogs", "--out", out, "--data-root", root,
                                   "--quiet"],
        "benchmark advise": ["benchmark", "advise", "--out", out, "--data-root", root, "--quiet"],
    }[command]


POSITIVE_INT = "an integer ≥ 1"
FINITE_POSITIVE = "a finite number > 0"
OPEN_UNIT = "a number strictly between 0 and 1"
SEED = "an integer from 0 to 4294967295"
RECIPES = ("extract", "finetune", "scratch")

BAD = [
    # adapt
    *[("adapt", "--lr", v, FINITE_POSITIVE) for v in ("nan", "inf", "-inf", "-1", "0", "1e400",
                                                      "fast")],
    *[("adapt", "--ema-decay", v, OPEN_UNIT) for v in ("1.5", "1", "0", "-0.5", "nan", "inf")],
    *[("adapt", "--batch-size", v, POSITIVE_INT) for v in ("0", "-3", "2.5")],
    ("adapt", "--epochs", "0", POSITIVE_INT),
    ("adapt", "--epochs", "ten", POSITIVE_INT),
    ("adapt", "--steps-per-epoch", "-1", POSITIVE_INT),
    ("adapt", "--steps-per-epoch", "0", POSITIVE_INT),  # was: a full pass, config.json said 0
    *[("adapt", "--image-size", v, "an integer from 16 to 1024") for v in ("0", "1", "15", "-28", "1025")],
    ("adapt", "--seed", "-1", SEED),
    ("adapt", "--seed", str(2**32), SEED),
    # reverse-validate
    ("reverse-validate", "--epochs", "0", POSITIVE_INT),
    # the three recipes
    *[(r, "--epochs", "0", POSITIVE_INT) for r in RECIPES],
    *[(r, "--lr", v, FINITE_POSITIVE) for r in RECIPES for v in ("nan", "-1")],
    *[(r, "--batch-size", "0", POSITIVE_INT) for r in RECIPES],
    *[(r, "--patience", "0", POSITIVE_INT) for r in RECIPES],
    *[(r, "--image-size", v, "an integer from 8 to 1024") for r in RECIPES for v in ("0", "7", "20000")],
    *[(r, "--train-size", v, "an integer ≥ 2") for r in RECIPES for v in ("1", "0")],
    *[(r, "--seed", "-1", SEED) for r in RECIPES],
    ("finetune", "--views", "-1", "an integer ≥ 0"),
    ("finetune", "--finetune-epochs", "0", POSITIVE_INT),
    *[("finetune", "--finetune-lr", v, FINITE_POSITIVE) for v in ("inf", "0", "nan")],
    ("finetune", "--unfreeze", "-2", "a number of stages ≥ 0, a stage name or 'all'"),
    # predict, advise, report
    ("predict", "--top", "0", POSITIVE_INT),
    ("advise", "--samples", "9", "an integer ≥ 10"),
    ("report", "--samples", "0", "an integer ≥ 10"),
    # benchmark
    *[("benchmark ganin2016", flag, "0", POSITIVE_INT)
      for flag in ("--seeds", "--oracle-seeds", "--jobs", "--epochs")],
    ("benchmark cats_vs_dogs", "--seeds", "0", POSITIVE_INT),
    ("benchmark cats_vs_dogs", "--curve-seeds", "0", POSITIVE_INT),
    *[("benchmark cats_vs_dogs", "--sizes", v, "comma-separated integers ≥ 2")
      for v in ("20,many", "20,1", "20,,50", "50,20,50", "")],
    ("benchmark advise", "--seeds", "-2", POSITIVE_INT),
]


@pytest.mark.parametrize(("command", "flag", "value", "expected"), BAD,
                         ids=[f"{c}{f}={v}" for c, f, v, _ in BAD])
def test_a_bad_numeric_flag_is_refused_at_the_door(command, flag, value, expected, tmp_path,
                                                   capsys):
    args = _base(command, tmp_path)
    with pytest.raises(SystemExit) as exited:
        main([*args, f"{flag}={value}"])  # FLAG=VALUE: argparse takes '-inf' as a value too
    assert exited.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("transferkit ") and f"error: argument {flag}: expected {expected}" in last
    assert value in last  # what the user typed is quoted back
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before any run folder was written


def test_a_negative_value_after_a_space_is_refused_too(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*_base("adapt", tmp_path), "--lr", "-1"])
    assert exited.value.code == 2
    assert "argument --lr: expected a finite number > 0, got -1" in capsys.readouterr().err


def test_the_console_script_refuses_lr_nan_in_one_line_before_any_config_is_written(tmp_path):
    """Issue 20 §2.4: `adapt --lr nan` exited 0 and wrote a bare NaN into config.json."""
    result = subprocess.run(
        [sys.executable, "-m", "transferkit", *_base("adapt", tmp_path), "--lr", "nan"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == \
        "transferkit adapt: error: argument --lr: expected a finite number > 0, got nan"
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def _parse(argv: list[str]) -> argparse.Namespace:
    return cli.build_parser().parse_args(argv)


def test_values_at_the_edges_of_each_range_are_accepted(tmp_path):
    adapt = _parse([*_base("adapt", tmp_path), "--image-size", "16", "--lr", "1e-6",
                    "--ema-decay", "0.999", "--steps-per-epoch", "1", "--batch-size", "1",
                    "--epochs", "1", "--seed", str(2**32 - 1)])
    assert (adapt.image_size, adapt.lr, adapt.ema_decay, adapt.steps_per_epoch) == \
        (16, 1e-6, 0.999, 1)
    assert adapt.seed == 2**32 - 1
    finetune = _parse([*_base("finetune", tmp_path), "--views", "0", "--unfreeze", "0",
                       "--train-size", "2", "--image-size", "8", "--patience", "1",
                       "--finetune-epochs", "1", "--finetune-lr", "3e-5"])
    assert (finetune.views, finetune.unfreeze, finetune.train_size, finetune.image_size) == \
        (0, "0", 2, 8)
    for unfreeze, kept in (("all", "all"), ("block5", "block5"), ("blocks.5", "blocks.5"),
                           ("+2", "2")):
        assert _parse([*_base("finetune", tmp_path), "--unfreeze", unfreeze]).unfreeze == kept
    bench = _parse([*_base("benchmark cats_vs_dogs", tmp_path), "--sizes", "20, 50,100"])
    assert bench.sizes == (20, 50, 100)
    assert _parse([*_base("advise", tmp_path), "--samples", "10"]).samples == 10
    assert _parse([*_base("report", tmp_path), "--samples", "10"]).samples == 10


def test_the_defaults_are_unchanged(tmp_path):
    adapt = _parse(_base("adapt", tmp_path))
    assert (adapt.batch_size, adapt.lr, adapt.seed) == (64, 0.01, 0)
    # not given: adapt_defaults fills them in (tests/test_adapt_recipe.py)
    assert adapt.image_size is adapt.steps_per_epoch is adapt.ema_decay is adapt.epochs is None
    assert adapt.input_norm is adapt.select is None
    finetune = _parse(_base("finetune", tmp_path))
    assert (finetune.epochs, finetune.lr, finetune.batch_size, finetune.patience) == (40, 1e-3, 32, 6)
    assert (finetune.views, finetune.unfreeze, finetune.finetune_epochs, finetune.finetune_lr) == \
        (4, "2", 10, 1e-4)
    assert finetune.image_size is finetune.train_size is None
    bench = _parse(_base("benchmark ganin2016", tmp_path))
    assert (bench.seeds, bench.jobs) == (3, 1)
    assert bench.oracle_seeds is bench.curve_seeds is bench.epochs is bench.sizes is None
    assert _parse(_base("predict", tmp_path)).top == 1
    assert _parse(_base("advise", tmp_path)).samples == 1000
    assert _parse(_base("report", tmp_path)).samples == 500


def _every_action():
    def walk(parser: argparse.ArgumentParser, name: str):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    yield from walk(sub, f"{name} {sub_name}".strip())
            else:
                yield name, action

    yield from walk(cli.build_parser(), "")


def test_no_flag_of_any_subcommand_is_parsed_with_a_bare_int_or_float():
    """A new numeric flag must say its range: bare int/float let 0, -1, nan and inf through."""
    actions = list(_every_action())
    assert {name for name, _ in actions} >= {
        "data list", "data verify", "adapt", "reverse-validate", "extract", "finetune", "scratch",
        "predict", "advise", "report", "benchmark"}
    bare = [f"{name} {'/'.join(a.option_strings)}" for name, a in actions if a.type in (int, float)]
    assert bare == []


def test_the_door_minimum_of_adapt_is_the_largest_minimum_of_the_digit_networks():
    from transferkit.models.digit_networks import NETWORKS, minimum_image_size

    minimums = {name: minimum_image_size(name) for name in NETWORKS}
    assert minimums == {"mnist": 16, "svhn": 7, "gtsrb": 8}
    assert max(minimums.values()) == cli.ADAPT_MIN_IMAGE_SIZE


@pytest.mark.parametrize("name", ["mnist", "svhn", "gtsrb"])
def test_a_digit_network_too_small_for_its_input_says_which_and_the_minimum(name):
    from transferkit.errors import TransferkitError
    from transferkit.models.digit_networks import DigitNetwork, minimum_image_size

    smallest = minimum_image_size(name)
    network = DigitNetwork(name, 10, smallest)  # the smallest size builds and runs
    assert network(torch.zeros(2, 3, smallest, smallest)).shape == (2, 10)
    for size in (smallest - 1, 1, 0):
        with pytest.raises(ValueError, match=rf"image size {size} is too small for the {name} "
                                             rf"network: .* at least {smallest}×{smallest}") as info:
            DigitNetwork(name, 10, size)
        assert isinstance(info.value, TransferkitError)  # the CLI prints it as one line
    assert DigitNetwork(name, 10).image_size == DigitNetwork(name, 10, None).image_size


def test_finding_the_minimum_size_draws_nothing_from_the_seeded_generator():
    from transferkit.models import digit_networks

    digit_networks.minimum_image_size.cache_clear()
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    digit_networks.minimum_image_size("svhn")
    assert torch.equal(torch.rand(4), expected)


def test_adapt_prints_accuracies_rounded(tmp_path, monkeypatch, capsys):
    import transferkit.api

    class Fitted:
        as_recorded_ = False  # a run trained now, not a finished one reported again

        def __init__(self, **kwargs):
            pass

        def fit(self, source, target):
            self.results_ = {"oracle": False, "target_test_accuracy": 0.7604999899864197,
                             "source_test_accuracy": 0.09375, "wall_seconds": 3.2,
                             "device": "cpu",
                             "label_free_check": {"classes": ["0", "1"],
                                                  "target_train_prediction_shares": [0.5, 0.5],
                                                  "source_class_shares": [0.5, 0.5]}}
            return self

    monkeypatch.setattr(transferkit.api, "DomainAdapter", Fitted)
    assert main(_base("adapt", tmp_path)) == 0
    out = capsys.readouterr().out
    assert "target-test accuracy 0.7605, source-test 0.0938," in out
    assert "0.76049" not in out and "0.09375" not in out


def test_a_recipe_prints_accuracies_rounded(tmp_path, monkeypatch, capsys):
    import transferkit.recipes as recipes

    def run(config, out, data_root, progress=True, restart=False, log=None):
        return {"test_accuracy": 0.8312499523162842, "val_accuracy": 0.7604999899864197,
                "train_size": 40, "wall_seconds": 1.0, "device": "cpu"}

    monkeypatch.setattr(recipes, "run", run)
    assert main(_base("extract", tmp_path)) == 0
    out = capsys.readouterr().out
    assert "test accuracy 0.8312, validation 0.7605 (40 training images" in out
    assert "0.83124" not in out and "0.76049" not in out
