"""A backbone with a new classifier head: training in stages, saving, loading, predicting.

Training always updates ``stages[split:]`` of the backbone and the head; everything before
``split`` is frozen and every BatchNorm stays in inference mode (running statistics from
pre-training are kept — the Keras transfer-learning guide's advice, which matters with
2,000 images). The best epoch is chosen by validation accuracy (ties: lower validation
loss) and its weights are restored; test labels are never looked at during training.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from transferkit.errors import TransferkitError
from transferkit.pretrained import imaging
from transferkit.pretrained.backbones import Backbone, BackboneSpec, build_backbone
from transferkit.training.runfolder import (
    NonFiniteError,
    check_finite,
    read_safetensors,
    save_tensors,
    write_json,
)

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


# ---------------------------------------------------------------- inputs to the trainable part


class CachedInputs:
    """Prefix outputs computed beforehand; epoch ``e`` reads view ``e mod V``."""

    def __init__(self, views: list[torch.Tensor], device: torch.device) -> None:
        self.views, self.device = views, device

    def __len__(self) -> int:
        return len(self.views[0])

    def batch(self, index: torch.Tensor, epoch: int) -> torch.Tensor:
        view = self.views[epoch % len(self.views)]
        return view[index].to(self.device, non_blocking=True).float()


class OnlineInputs:
    """uint8 images cropped (randomly when ``generator`` is given) and run through the frozen
    prefix at every step."""

    def __init__(
        self,
        images: torch.Tensor,
        backbone: Backbone,
        split: int,
        size: int,
        device: torch.device,
        generator: torch.Generator | None,
        flip: bool = True,
    ) -> None:
        self.images, self.backbone, self.split, self.size = images, backbone, split, size
        self.device, self.generator, self.flip = device, generator, flip

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, index: torch.Tensor, epoch: int) -> torch.Tensor:
        batch = self.images[index]
        batch = (
            imaging.augment(batch, self.size, self.generator, self.flip)
            if self.generator is not None
            else imaging.centre(batch, self.size)
        )
        spec = self.backbone.spec
        x = imaging.normalise(batch.to(self.device), spec.mean, spec.std)
        x = x.contiguous(memory_format=torch.channels_last)
        if self.split == 0:
            return x
        with torch.no_grad():
            return self.backbone(x, 0, self.split)


# ---------------------------------------------------------------- training


@dataclass
class StageConfig:
    name: str
    epochs: int
    learning_rate: float
    weight_decay: float = 1e-4
    patience: int = 5
    batch_size: int = 32
    min_batches: int = 10  # an "epoch" of a tiny training set repeats it to at least this many batches


@dataclass
class StageResult:
    name: str
    split: int
    best_epoch: int = -1
    best_val_accuracy: float = -1.0
    best_val_loss: float = float("inf")
    epochs_run: int = 0
    seconds: float = 0.0
    epoch_seconds: list[float] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)


@torch.no_grad()
def evaluate(
    model: Classifier,
    split: int,
    inputs: CachedInputs | OnlineInputs,
    labels: torch.Tensor,
    batch_size: int = 128,
) -> tuple[float, float, torch.Tensor]:
    """Accuracy, mean cross-entropy and the predicted probabilities."""
    model.eval()
    probs, loss = [], 0.0
    for start in range(0, len(labels), batch_size):
        index = torch.arange(start, min(start + batch_size, len(labels)))
        logits = model(inputs.batch(index, 0), split).float()
        target = labels[index].to(logits.device)
        loss += F.cross_entropy(logits, target, reduction="sum").item()
        probs.append(logits.softmax(1).cpu())
    p = torch.cat(probs)
    return (p.argmax(1) == labels).float().mean().item(), loss / len(labels), p


def _trainable(model: Classifier, split: int) -> list[nn.Parameter]:
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for stage in model.backbone.stages[split:] for p in stage.parameters()]
    params += list(model.head.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


def _train_mode(model: Classifier) -> None:
    """Head (and its dropout) trains; the backbone, BatchNorm included, stays in inference mode."""
    model.eval()
    model.head.train()


def train_stage(
    model: Classifier,
    split: int,
    train: CachedInputs | OnlineInputs,
    train_labels: torch.Tensor,
    val: CachedInputs | OnlineInputs,
    val_labels: torch.Tensor,
    config: StageConfig,
    generator: torch.Generator,
    device: torch.device,
    on_epoch: Callable[[StageResult, dict[str, float]], None] | None = None,
    progress: bool = True,
) -> StageResult:
    """Train ``stages[split:]`` and the head; restore the epoch with the best validation accuracy.

    A batch holds at most every training image once (a larger ``batch_size`` is clamped to the
    training set), so memory is bounded by the data. A loss that is not finite stops training
    with :class:`NonFiniteError` naming the epoch and step (the loss is read every step here
    anyway).
    """
    params = _trainable(model, split)
    optimiser = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    result = StageResult(config.name, split)
    best_state = None
    n = len(train_labels)
    # Memory is bounded by the data, or one default batch where the data are fewer: a batch
    # larger than both would only repeat images (a default batch of a tiny set repeats some, as
    # every committed result was made).
    batch_size = min(config.batch_size, max(n, StageConfig.batch_size))
    if batch_size < config.batch_size and progress:
        print(f"transferkit: --batch-size {config.batch_size} is more than the {n} training images: "
              f"batches of {batch_size}", file=sys.stderr)
    per_epoch = max(n, config.min_batches * batch_size)
    steps = -(-per_epoch // batch_size)
    total = config.epochs * steps
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=config.name, unit="step", leave=False)
    start_all = time.perf_counter()
    stale = 0
    for epoch in range(config.epochs):
        started = time.perf_counter()
        order = torch.cat([torch.randperm(n, generator=generator) for _ in range(-(-per_epoch // n))])[
            :per_epoch
        ]
        _train_mode(model)
        running, seen, correct = 0.0, 0, 0
        for step in range(steps):
            index = order[step * batch_size : (step + 1) * batch_size]
            x = train.batch(index, epoch)
            target = train_labels[index].to(device)
            logits = model(x, split)
            loss = F.cross_entropy(logits, target)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            value = loss.item()
            if not math.isfinite(value):
                if bar is not None:
                    bar.close()
                raise NonFiniteError(
                    f"training stopped: the {config.name} stage's training loss became {value} at "
                    f"epoch {epoch + 1}, step {step + 1} of {steps} (learning rate "
                    f"{config.learning_rate}); no model was saved. Lower the learning rate (or "
                    "check the data) and run again")
            running += value * len(index)
            correct += (logits.argmax(1) == target).sum().item()
            seen += len(index)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{running / seen:.3f}", acc=f"{correct / seen:.3f}")
        train_seconds = time.perf_counter() - started
        val_accuracy, val_loss, _ = evaluate(model, split, val, val_labels)
        record = {
            "stage": config.name,
            "epoch": epoch,
            "train_loss": running / seen,
            "train_accuracy": correct / seen,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "train_seconds": train_seconds,
        }
        result.history.append(record)
        result.epoch_seconds.append(train_seconds)
        result.epochs_run = epoch + 1
        better = val_accuracy > result.best_val_accuracy or (
            val_accuracy == result.best_val_accuracy and val_loss < result.best_val_loss
        )
        if better:
            result.best_epoch, result.best_val_accuracy, result.best_val_loss = epoch, val_accuracy, val_loss
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            stale = 0
        else:
            stale += 1
        if bar is not None:
            bar.set_description(f"{config.name} val {val_accuracy:.3f} (best {result.best_val_accuracy:.3f})")
        if on_epoch is not None:
            on_epoch(result, record)
        if stale >= config.patience:
            break
    if bar is not None:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    for p in model.parameters():
        p.requires_grad_(False)
    result.seconds = time.perf_counter() - start_all
    return result


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
