"""Checkpoints carry the SHA-256 of their contents: a flipped bit is caught on loading."""

from __future__ import annotations

import pytest
import torch

from transferkit.errors import TransferkitError
from transferkit.training.checkpoint import load_checkpoint, save_checkpoint


def _state():
    return {"model": {"weight": torch.full((256,), 1.0), "steps": torch.tensor(3)},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0]}]},
            "generator": torch.Generator().manual_seed(0).get_state(), "history": [{"epoch": 1}]}


def test_a_checkpoint_round_trips_and_a_flipped_bit_in_a_tensor_is_named(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, _state())
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["weight"], torch.full((256,), 1.0))
    assert "sha256" not in loaded and loaded["history"] == [{"epoch": 1}]
    data = bytearray(path.read_bytes())
    pattern = torch.full((256,), 1.0).numpy().tobytes()
    start = bytes(data).index(pattern)
    data[start + 500] ^= 0x01  # one bit of one float: torch's reader checks no CRC
    path.write_bytes(bytes(data))
    with pytest.raises(TransferkitError, match="do not match the SHA-256 saved with them.*--restart"):
        load_checkpoint(path)


def test_a_checkpoint_written_before_the_digest_still_loads(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save(_state(), path)  # as transferkit wrote them before
    assert load_checkpoint(path)["history"] == [{"epoch": 1}]


def test_a_checkpoint_of_other_settings_is_refused_even_without_config_json(tmp_path, capsys):
    from fakes import write_digit_pair

    from transferkit.cli import main

    root = write_digit_pair(tmp_path / "data", n_train=40, n_test=8)
    out = tmp_path / "run"
    args = ["adapt", "--method", "source_only", "--source", "mnist", "--target", "mnist_m", "--epochs", "1",
            "--steps-per-epoch", "2", "--batch-size", "8", "--device", "cpu", "--quiet", "--out", str(out),
            "--data-root", str(root)]
    assert main(args) == 0
    (out / "config.json").unlink()
    (out / "metrics.json").unlink()  # an interrupted run whose folder lost its config
    assert main([*args[:-4], "--lr", "0.05", "--out", str(out), "--data-root", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was made with other settings (learning_rate=0.01 there, 0.05 here)" in err[0]
