"""The recipes (extract, finetune, scratch) train through the one loop, ``training.loop.fit``:
resume after an interruption, selection of the best epoch, early stopping."""

from __future__ import annotations

import json
import math

import pytest
import torch
from fakes import interrupt_after_first_checkpoint, write_two_class_data
from safetensors.torch import load_file
from torch import nn

from transferkit.cli import main
from transferkit.errors import TransferkitError
from transferkit.methods.source_only import SourceOnly
from transferkit.recipes import CHECKPOINTS, RecipeConfig, run
from transferkit.training import loop
from transferkit.training.batches import CachedInputs, FitData
from transferkit.training.loop import SettingError, TrainConfig, fit

TIMING = ("seconds", "images_per_second", "data_fraction")


@pytest.fixture
def photos(tmp_path):
    return write_two_class_data(tmp_path / "photos", {"train": 16, "val": 8, "test": 8})


def untimed(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in TIMING} for line in lines]


def test_a_finetune_run_interrupted_in_either_stage_resumes_to_the_same_model(photos, tmp_path,
                                                                             monkeypatch, capsys):
    # online augmentation (its generator), a dropout head (torch's generator) and two stages
    config = RecipeConfig(recipe="finetune", data=f"folder:{photos}", backbone="small_convnet",
                          weights="random", image_size=48, head="mlp", views=0, unfreeze="1",
                          epochs=2, finetune_epochs=2, batch_size=8, device="cpu")
    whole = run(config, tmp_path / "whole", progress=False)
    assert [s["name"] for s in whole["stages"]] == ["head", "finetune"]
    records = untimed(tmp_path / "whole")
    assert [(r["stage"], r["epoch"]) for r in records] == [("head", 1), ("head", 2),
                                                           ("finetune", 1), ("finetune", 2)]
    assert {"train_loss", "train_accuracy", "val_accuracy", "val_loss", "learning_rate"} <= set(records[0])
    for stage in whole["stages"]:  # best_epoch counts as metrics.jsonl does, from 1
        mine = [r for r in records if r["stage"] == stage["name"]]
        assert 1 <= stage["best_epoch"] <= len(mine)
        assert mine[stage["best_epoch"] - 1]["val_accuracy"] == stage["best_val_accuracy"]
    assert not any((tmp_path / "whole" / name).exists() for name in CHECKPOINTS)  # finished: removed
    expected = load_file(str(tmp_path / "whole" / "model.safetensors"))

    for count in (1, 3):  # the middle of the head stage; the middle of the finetune stage
        out = tmp_path / f"stopped-{count}"
        interrupt_after_first_checkpoint(monkeypatch, lambda out=out: run(config, out, progress=False),
                                         count)
        assert not (out / "metrics.json").exists()
        kept = {name: len(torch.load(out / name, weights_only=True)["history"])
                for name in CHECKPOINTS if (out / name).exists()}
        assert kept == ({"checkpoint-head.pt": 1} if count == 1
                        else {"checkpoint-head.pt": 2, "checkpoint-finetune.pt": 1})
        spent = max(torch.load(out / name, weights_only=True)["wall_seconds"] for name in kept)
        # checkpoints hold what the stage trains, not the frozen stages
        head = torch.load(out / "checkpoint-head.pt", weights_only=True)["model"]
        assert head and all(key.startswith("network.head.") for key in head)
        if count == 1:  # nor on frozen layers other than the ones it trained on
            from transferkit import recipes

            real_build = recipes.build_backbone

            def other_weights(*args, real_build=real_build, **kwargs):
                backbone = real_build(*args, **kwargs)
                with torch.no_grad():
                    next(backbone.parameters()).add_(0.01)
                return backbone

            monkeypatch.setattr(recipes, "build_backbone", other_weights)
            with pytest.raises(TransferkitError, match="the frozen layers here differ"):
                run(config, out, progress=False)
            monkeypatch.setattr(recipes, "build_backbone", real_build)
        if count == 3:  # a partly trained run is not continued with other settings
            assert main(["finetune", "--data", f"folder:{photos}", "--backbone", "small_convnet",
                         "--weights", "random", "--image-size", "48", "--head", "mlp", "--views", "0",
                         "--unfreeze", "1", "--epochs", "2", "--finetune-epochs", "2",
                         "--batch-size", "8", "--lr", "0.01", "--device", "cpu", "--quiet",
                         "--out", str(out)]) == 2
            assert "holds a run with other settings (learning_rate=0.001 there, 0.01 here)" in \
                capsys.readouterr().err
        resumed = run(config, out, progress=False)
        assert resumed["val_accuracy"] == whole["val_accuracy"]
        assert resumed["wall_seconds"] > spent  # the interrupted invocation's time counts too
        assert untimed(out) == records
        got = load_file(str(out / "model.safetensors"))
        assert got.keys() == expected.keys()
        for name in expected:
            assert torch.equal(got[name], expected[name]), name


class _Flat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 3)

    def forward(self, x):
        return self.linear(x)


def _data(seed: int = 0) -> FitData:
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(48, 6, generator=generator), torch.randint(0, 3, (48,), generator=generator)
    cpu = torch.device("cpu")
    return FitData(CachedInputs([x], cpu), y, monitor=CachedInputs([x[:12]], cpu), monitor_labels=y[:12],
                   monitor_name="val")


def _trained(epochs: int, **options) -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    method = SourceOnly(_Flat())
    config = TrainConfig(epochs=epochs, batch_size=8, learning_rate=0.05, device="cpu",
                         schedule="constant", **options)
    return method, fit(method, _data(), config, progress=False)


def test_best_selection_keeps_the_best_epoch_ties_to_the_lower_loss_and_patience_stops(monkeypatch):
    reference, _ = _trained(3)  # the weights after epoch 3 of the same run
    scripted = iter([(0.5, 1.0), (0.8, 0.5), (0.8, 0.4), (0.6, 0.9), (0.7, 0.9), (0.9, 0.1)])

    def scores(module, inputs, labels, batch_size=None):
        accuracy, loss = next(scripted)
        return accuracy, loss, None

    monkeypatch.setattr(loop, "scores", scores)
    method, history = _trained(6, selection="best", patience=2)
    # epoch 3 ties epoch 2's accuracy at a lower loss; epochs 4 and 5 are no better: stop
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert loop.best_record(history, "val")["epoch"] == 3
    for mine, theirs in zip(method.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)
    monkeypatch.undo()
    last, _ = _trained(5)  # selection "last" keeps epoch 5, which differs from epoch 3
    assert not torch.equal(last.network.linear.weight, reference.network.linear.weight)


def test_adamw_at_a_constant_rate_and_partial_last_batches():
    method, history = _trained(2, optimizer="adamw", weight_decay=0.01, epoch_images=20)
    assert all(h["learning_rate"] == 0.05 for h in history)
    assert all(math.isfinite(h["loss"]) for h in history)
    assert history[0]["images_per_second"] > 0
    with pytest.raises(SettingError, match="optimizer 'adam'"):
        TrainConfig(optimizer="adam")
    with pytest.raises(SettingError, match="--patience 0"):
        TrainConfig(patience=0)
    method = SourceOnly(_Flat())
    data = _data()
    data.monitor = None
    with pytest.raises(SettingError, match="needs a labelled split to watch"):
        fit(method, data, TrainConfig(epochs=1, selection="best", device="cpu"), progress=False)
