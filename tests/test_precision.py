"""--precision: training steps under autocast (bf16 on a CPU here), evaluation in float32."""

from __future__ import annotations

import json

import pytest
import torch
from fakes import write_digit_pair, write_two_class_data

from transferkit.cli import main
from transferkit.methods.dann import DANN


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_digit_pair(tmp_path_factory.mktemp("data"), n_train=48, n_test=16)


def adapt(out, root, *extra, method="dann"):
    return ["adapt", "--method", method, "--source", "mnist", "--target", "mnist_m", "--epochs", "1",
            "--steps-per-epoch", "3", "--batch-size", "8", "--device", "cpu", "--quiet",
            "--data-root", str(root), "--out", str(out), *extra]


def test_bf16_runs_the_step_under_autocast_and_keeps_float32_weights(root, tmp_path, monkeypatch):
    seen = []
    real = DANN.losses

    def losses(self, images, labels, target_images, progress):
        values = real(self, images, labels, target_images, progress)
        seen.append((torch.is_autocast_enabled("cpu"), self.network.features(images).dtype,
                     values["loss"].dtype))
        return values

    monkeypatch.setattr(DANN, "losses", losses)
    out = tmp_path / "bf16"
    assert main(adapt(out, root, "--precision", "bf16")) == 0
    assert seen and all(on and features == torch.bfloat16 and loss == torch.float32
                        for on, features, loss in seen)
    assert json.loads((out / "config.json").read_text())["precision"] == "bf16"
    state = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    seen.clear()
    assert main(adapt(tmp_path / "fp32", root)) == 0  # the default: no autocast
    assert seen and not any(on for on, _, _ in seen)
    assert json.loads((tmp_path / "fp32" / "config.json").read_text())["precision"] is None


def test_combinations_that_do_not_run_are_one_line(root, tmp_path, capsys):
    assert main(adapt(tmp_path / "a", root, "--precision", "fp16")) == 2
    assert "--precision fp16: needs a GPU (--device cuda); on a CPU use bf16" in capsys.readouterr().err
    assert main(adapt(tmp_path / "b", root, "--precision", "bf16", method="vada")) == 2
    assert "train it in fp32" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(adapt(tmp_path / "c", root, "--precision", "fp8"))
    assert "invalid choice: 'fp8'" in capsys.readouterr().err


def test_a_finetune_run_in_bf16(tmp_path):
    photos = write_two_class_data(tmp_path / "photos", {"train": 16, "val": 8, "test": 8})
    out = tmp_path / "run"
    assert main(["finetune", "--data", f"folder:{photos}", "--backbone", "small_convnet", "--weights",
                 "random", "--image-size", "48", "--epochs", "1", "--finetune-epochs", "1",
                 "--batch-size", "8", "--device", "cpu", "--quiet", "--precision", "bf16",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["test_accuracy"] <= 1
    assert json.loads((out / "config.json").read_text())["precision"] == "bf16"
