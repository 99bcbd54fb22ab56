"""A backbone with a new classifier head: training in stages, saving, loading, predicting.

Training always updates ``stages[split:]`` of the backbone and the head; everything before
``split`` is frozen and every BatchNorm stays in inference mode (running statistics from
pre-training are kept — the Keras transfer-learning guide's advice, which matters with
2,000 images). The best epoch is chosen by validation accuracy (ties: lower validation
loss) and its weights are restored; test labels are never looked at during training.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from transferkit.errors import TransferkitError
from transferkit.methods.base import Method
from transferkit.models.backbones import Backbone, BackboneSpec, build_backbone
from transferkit.training.batches import CachedInputs, FitData, OnlineInputs
from transferkit.training.loop import RunClock, TrainConfig, best_record, fit, scores
from transferkit.training.runfolder import (
    check_finite,
    read_safetensors,
    save_tensors,
    write_json,
)
from transferkit.training.runlog import open_log

HEADS = ("linear", "mlp")


def make_head(kind: str, in_dim: int, num_classes: int) -> nn.Module:
    """``linear``: dropout 0.2 + one linear layer; ``mlp``: Chollet's Dense(256) + ReLU +
    Dropout(0.5) + linear."""
    if kind == "linear":
        return nn.Sequential(nn.Dropout(0.2), nn.Linear(in_dim, num_classes))
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(in_dim, 256), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(256, num_classes)
        )
    raise TransferkitError(f"--head {kind}: expected one of {', '.join(HEADS)}")


class Classifier(nn.Module):
    def __init__(self, backbone: Backbone, head: nn.Module, classes: tuple[str, ...], head_kind: str) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.classes, self.head_kind = classes, head_kind

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        return self.head(self.backbone(x, start))


# ---------------------------------------------------------------- training, one stage a fit


@dataclass
class StageConfig:
    name: str
    epochs: int
    learning_rate: float
    weight_decay: float = 1e-4
    patience: int = 5
    batch_size: int = 32
    min_batches: int = 10  # an "epoch" of a tiny training set repeats it to at least this many batches
    precision: str | None = None  # None: float32 (see transferkit.training.loop.TrainConfig)


@dataclass
class StageResult:
    name: str
    split: int
    best_epoch: int = 0  # counted from 1, as metrics.jsonl's "epoch" (0: none yet)
    best_val_accuracy: float = -1.0
    best_val_loss: float = float("inf")
    epochs_run: int = 0
    seconds: float = 0.0
    epoch_seconds: list[float] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


class StageObjective(Method):
    """One stage of a recipe as a method of the one training loop: cross-entropy of
    ``model(x, split)`` on cached or online inputs of ``stages[:split]``, training
    ``stages[split:]`` and the head. The backbone, BatchNorm included, stays in inference mode
    (running statistics from pre-training are kept — the Keras transfer-learning guide's
    advice, which matters with 2,000 images); the head (and its dropout) trains."""

    def __init__(self, model: Classifier, split: int, name: str, lr_flag: str = "--lr") -> None:
        super().__init__(model)  # type: ignore[arg-type]
        self.split, self.name, self.lr_flag = split, name, lr_flag
        for p in model.parameters():
            p.requires_grad_(False)
        self.trainable = [p for stage in model.backbone.stages[split:] for p in stage.parameters()]
        self.trainable += list(model.head.parameters())
        for p in self.trainable:
            p.requires_grad_(True)

    def parameter_groups(self) -> list[dict]:
        return [{"params": self.trainable, "lr_scale": 1.0}]

    def train(self, mode: bool = True) -> StageObjective:
        super().train(False)
        self.network.head.train(mode)
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x, self.split)

    def losses(self, images: torch.Tensor, labels: torch.Tensor,
               target_images: torch.Tensor | None, progress: float) -> dict[str, torch.Tensor]:
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        return {"loss": loss, "train_loss": loss.detach(),
                "train_accuracy": (logits.argmax(1) == labels).float().mean()}


EVAL_BATCH = 128


def fit_stage(
    model: Classifier,
    split: int,
    data: FitData,
    config: StageConfig,
    generator: torch.Generator,
    device: torch.device,
    run_dir: Path | None = None,
    earlier: list[dict[str, Any]] | tuple = (),
    progress: bool = True,
    seed: int = 0,
    lr_flag: str = "--lr",
    log: str | None = None,
    clock: RunClock | None = None,
) -> StageResult:
    """Train ``stages[split:]`` and the head with AdamW at a constant rate, one
    :func:`~transferkit.training.loop.fit`, and keep the epoch with the best validation
    accuracy (ties: lower validation loss), stopping after ``patience`` epochs without a
    better one. An epoch draws at least ``min_batches`` batches. With ``run_dir`` the stage is
    checkpointed each epoch as ``checkpoint-NAME.pt`` and resumes from it (``clock``, shared by a
    recipe's stages, carries the run's wall time across resumes); ``log``
    (``tensorboard``) writes the stage's steps and epochs under ``run_dir/tensorboard``."""
    objective = StageObjective(model, split, config.name, lr_flag)
    n = len(data.labels)
    batch = min(config.batch_size, max(n, StageConfig.batch_size))
    train_config = TrainConfig(
        epochs=config.epochs, batch_size=batch, learning_rate=config.learning_rate,
        seed=seed, device=str(device), optimizer="adamw", weight_decay=config.weight_decay,
        schedule="constant", selection="best", patience=config.patience,
        epoch_images=max(n, config.min_batches * batch),
        precision=None if config.precision in (None, "fp32") else config.precision)
    started = time.perf_counter()
    run_log = open_log(log, run_dir, prefix=config.name)
    try:
        history = fit(objective, replace(data, monitor_name="val", eval_batch_size=EVAL_BATCH),
                      train_config, run_dir, progress, generator=generator,
                      checkpoint_name=f"checkpoint-{config.name}.pt", earlier=earlier,
                      stage=config.name, log=run_log, clock=clock)
    finally:
        if run_log is not None:
            run_log.close()
    for p in model.parameters():
        p.requires_grad_(False)
    best = best_record(history, "val")
    assert best is not None
    return StageResult(
        config.name, split, best_epoch=history.index(best) + 1,
        best_val_accuracy=best["val_accuracy"], best_val_loss=best["val_loss"],
        epochs_run=len(history), seconds=time.perf_counter() - started,
        epoch_seconds=[h["seconds"] for h in history], history=history)


def evaluate(
    model: Classifier,
    split: int,
    inputs: CachedInputs | OnlineInputs,
    labels: torch.Tensor,
    batch_size: int = EVAL_BATCH,
) -> tuple[float, float, torch.Tensor]:
    """Accuracy, mean cross-entropy and the predicted probabilities of ``model`` on inputs of
    ``stages[:split]`` (:func:`transferkit.training.loop.scores`)."""
    return scores(_FromSplit(model, split), inputs, labels, batch_size)


class _FromSplit(nn.Module):
    def __init__(self, model: Classifier, split: int) -> None:
        super().__init__()
        self.model, self.split = model, split

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.split)


# ---------------------------------------------------------------- saving and loading


def save_model(model: Classifier, directory: Path, extra: dict[str, Any]) -> None:
    """``model.safetensors`` and ``model.json``, each replaced whole (a full disk leaves the
    previous file, not half of one). Weights that are not finite are refused, never saved."""
    directory.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    check_finite(state, f"{directory / 'model.safetensors'}: the trained model",
                 "nothing was saved; lower the learning rate and run again")
    save_tensors(directory / "model.safetensors", state)
    config = {
        "backbone": asdict(model.backbone.spec),
        "head": model.head_kind,
        "classes": list(model.classes),
        **extra,
    }
    write_json(directory / "model.json", config)


def load_model(directory: str | Path) -> Classifier:
    """A classifier saved by ``extract``/``finetune`` (weights from its own safetensors file,
    refused with one line naming it when corrupt, truncated or not finite)."""
    directory = Path(directory)
    config_path, weights_path = directory / "model.json", directory / "model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise TransferkitError(
                f"{directory}: not a saved model (no {path.name}); expected the --out "
                f"folder of transferkit extract or finetune"
            )
    try:
        config = json.loads(config_path.read_text())
        spec = BackboneSpec(
            **{
                **config["backbone"],
                "mean": tuple(config["backbone"]["mean"]),
                "std": tuple(config["backbone"]["std"]),
            }
        )
        classes = tuple(config["classes"])
        head = config["head"]
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise TransferkitError(f"{config_path}: unreadable model description ({exc})") from None
    state = read_safetensors(
        weights_path, f"the saved model is damaged: train it again (with --restart) into {directory}"
    )
    backbone = build_backbone(spec.name, "random", spec.input_size)
    backbone.spec = spec
    model = Classifier(backbone, make_head(head, backbone.feature_dim, len(classes)), classes, head)
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise TransferkitError(
            f"{weights_path}: does not match {spec.name} with a {head} head"
        ) from None
    return model.eval()
