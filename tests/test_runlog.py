"""``--log tensorboard``: event files that TensorBoard reads, for adapt and recipe runs."""

from __future__ import annotations

import pytest
from fakes import write_digit_pair, write_two_class_data

from transferkit.cli import main
from transferkit.errors import TransferkitError
from transferkit.training import runlog

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def scalars(folder):
    events = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_an_adapt_run_logs_step_losses_domain_accuracy_learning_rate_and_epochs(tmp_path):
    root = write_digit_pair(tmp_path / "data", n_train=64, n_test=16)
    out = tmp_path / "run"
    assert main(["adapt", "--method", "dann", "--source", "mnist", "--target", "mnist_m", "--epochs", "2",
                 "--steps-per-epoch", "21", "--batch-size", "8", "--device", "cpu", "--quiet",
                 "--data-root", str(root), "--log", "tensorboard", "--out", str(out)]) == 0
    logged = scalars(out / "tensorboard")
    # steps 1, 21, 41 of 42: every 20th step's values, as read then
    assert [step for step, _ in logged["train/domain_accuracy"]] == [1, 21, 41]
    assert all(0 <= value <= 1 for _, value in logged["train/domain_accuracy"])
    rates = [value for _, value in logged["train/learning_rate"]]
    assert rates[0] == pytest.approx(0.01) and rates[0] > rates[1] > rates[2]  # annealed
    assert {"train/loss", "train/class_loss", "train/domain_loss"} <= set(logged)
    # each epoch's record, at the step that ends it, as metrics.jsonl has it
    import json

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [step for step, _ in logged["epoch/source_val_accuracy"]] == [21, 42]
    assert [value for _, value in logged["epoch/source_val_accuracy"]] == pytest.approx(
        [line["source_val_accuracy"] for line in lines])
    # the log is not a setting of the run: the same run without it is reported as recorded
    assert main(["adapt", "--method", "dann", "--source", "mnist", "--target", "mnist_m", "--epochs", "2",
                 "--steps-per-epoch", "21", "--batch-size", "8", "--device", "cpu", "--quiet",
                 "--data-root", str(root), "--out", str(out)]) == 0


def test_a_finetune_run_logs_each_stage_under_its_name(tmp_path):
    photos = write_two_class_data(tmp_path / "photos", {"train": 16, "val": 8, "test": 8})
    out = tmp_path / "run"
    assert main(["finetune", "--data", f"folder:{photos}", "--backbone", "small_convnet", "--weights",
                 "random", "--image-size", "48", "--epochs", "2", "--finetune-epochs", "1",
                 "--batch-size", "8", "--device", "cpu", "--quiet", "--log", "tensorboard",
                 "--out", str(out)]) == 0
    logged = scalars(out / "tensorboard")
    assert len(logged["head/epoch/val_accuracy"]) == 2 and len(logged["finetune/epoch/val_accuracy"]) == 1
    assert {"head/train/loss", "head/train/train_accuracy", "finetune/train/learning_rate"} <= set(logged)
    assert all(value == pytest.approx(1e-4) for _, value in logged["finetune/train/learning_rate"])
    before = sorted(p.name for p in (out / "tensorboard").iterdir())
    assert main(["finetune", "--data", f"folder:{photos}", "--backbone", "small_convnet", "--weights",
                 "random", "--image-size", "48", "--epochs", "2", "--finetune-epochs", "1",
                 "--batch-size", "8", "--device", "cpu", "--quiet", "--restart", "--out", str(out)]) == 0
    assert not (out / "tensorboard").exists() or not set(before) & {
        p.name for p in (out / "tensorboard").iterdir()}  # --restart: the old events are gone


def test_a_missing_tensorboard_is_one_line(monkeypatch, capsys, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(TransferkitError, match=r"pip install 'transferkit\[tensorboard\]'"):
        runlog.check_log("tensorboard")
    assert main(["scratch", "--data", f"folder:{tmp_path}", "--log", "tensorboard", "--quiet"]) == 2
    assert "transferkit[tensorboard]" in capsys.readouterr().err
    assert runlog.check_log("none") is None
