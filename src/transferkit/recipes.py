"""The three recipes of the lecture, on one labelled data set with train/val/test splits, and the
model they train: a backbone with a new classifier head, trained in stages, saved and loaded.

- ``extract``: the frozen base runs once per image (features cached on disk), a new head is
  trained on the features.
- ``finetune``: stage 1 as ``extract`` but on augmented views; stage 2 unfreezes the last
  ``unfreeze`` stages and trains them with the head at a lower learning rate.
- ``scratch``: the whole network from random weights (Chollet's small convnet by default),
  augmented afresh at every step.

A recipe is a list of stages, each one :func:`transferkit.training.loop.fit` (through
:func:`fit_stage`: AdamW at a constant rate, the best validation epoch kept, early stopping),
checkpointed every epoch as ``checkpoint-STAGE.pt``, so an interrupted run resumes where it
stopped, to the same weights. Each run writes ``config.json``, ``metrics.jsonl`` (one line per
epoch), ``metrics.json`` and the model (``model.safetensors`` + ``model.json``) under its output
folder, each file replaced whole; the stage checkpoints are removed once the run has finished.
The folder is locked while a run writes it. A finished run is kept: run again with the same
settings, it is reported, not trained again (``restart=True`` trains it again); with other
settings it is refused.

A stage always updates ``stages[split:]`` of the backbone and the head; everything before
``split`` is frozen and every BatchNorm stays in inference mode (running statistics from
pre-training are kept — the Keras transfer-learning guide's advice, which matters with
2,000 images). The best epoch is chosen by validation accuracy (ties: lower validation
loss) and its weights are restored; test labels are never looked at during training.
"""

from __future__ import annotations

import json
import math
import numbers
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from transferkit.data import imaging
from transferkit.errors import TransferkitError
from transferkit.methods.base import Method
from transferkit.models.backbones import Backbone, BackboneSpec, build_backbone
from transferkit.training import activations, distributed
from transferkit.training.batches import CachedInputs, FitData, OnlineInputs
from transferkit.training.device import resolve_device
from transferkit.training.loop import RunClock, TrainConfig, best_record, fit, scores
from transferkit.training.runfolder import (
    check_finite,
    check_same_settings,
    discard,
    locked,
    read_safetensors,
    save_tensors,
    write_config,
    write_json,
)
from transferkit.training.runlog import check_log, open_log

RECIPES = ("extract", "finetune", "scratch")
VAL_NAMES = ("val", "valid", "validation")


@dataclass
class RecipeConfig:
    recipe: str = "finetune"
    data: str = "cats_vs_dogs"
    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"
    image_size: int | None = None
    head: str = "linear"
    views: int = 4  # augmented views cached for training (0: augment online, no cache)
    unfreeze: str = "2"  # stages trained in stage 2 (a count, a stage name, or "all")
    epochs: int = 30  # stage 1 (the only stage of extract and scratch)
    finetune_epochs: int = 10  # stage 2
    learning_rate: float = 1e-3
    finetune_learning_rate: float = 1e-4
    batch_size: int = 32
    patience: int = 6
    train_size: int | None = None  # a class-balanced subset of the training split
    flip: bool = True  # horizontal flips in augmentation (off for digits, text)
    seed: int = 0
    device: str = "auto"
    precision: str | None = None  # None: float32; bf16 or fp16 autocast (training/loop.TrainConfig)

    def check(self) -> None:
        if self.recipe not in RECIPES:
            raise TransferkitError(f"recipe {self.recipe}: expected one of {', '.join(RECIPES)}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise TransferkitError(f"--{name.replace('_', '-')} {getattr(self, name)}: expected ≥ 1")
        if self.views < 0:
            raise TransferkitError(f"--views {self.views}: expected ≥ 0")
        if self.train_size is not None and self.train_size < 2:
            raise TransferkitError(f"--train-size {self.train_size}: expected at least 2 images")
        if self.patience < 1:
            raise TransferkitError(f"--patience {self.patience}: expected ≥ 1")
        if self.recipe == "finetune" and self.finetune_epochs < 1:
            raise TransferkitError(f"--finetune-epochs {self.finetune_epochs}: expected ≥ 1")
        for flag, value in (("--lr", self.learning_rate), ("--finetune-lr", self.finetune_learning_rate)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                    or value <= 0:
                raise TransferkitError(f"{flag} {value}: expected a finite number above 0 (such as 1e-3)")


@dataclass
class Splits:
    train: Any
    val: Any
    test: Any | None
    classes: tuple[str, ...]
    val_from_train: bool


def load_splits(data: str, data_root: str | None) -> Splits:
    """train, val (or 20 % of train, class-balanced, when the data set has none) and test."""
    from transferkit.data.images import ImageSet
    from transferkit.data.loading import load_split
    from transferkit.data.sources import get_source

    source = get_source(data)
    if "train" not in source.splits:
        raise TransferkitError(f"{data}: needs a 'train' split (has {', '.join(source.splits)})")
    train = load_split(data, "train", data_root)
    val_name = next((v for v in VAL_NAMES if v in source.splits), None)
    test = load_split(data, "test", data_root) if "test" in source.splits else None
    if val_name is not None:
        return Splits(train, load_split(data, val_name, data_root), test, train.classes, False)
    rng = np.random.default_rng(12345)
    val_index = np.concatenate(
        [
            rng.permutation(np.flatnonzero(train.labels == c))[: max(1, int(0.2 * n))]
            for c, n in enumerate(np.bincount(train.labels))
        ]
    )
    keep = np.setdiff1d(np.arange(len(train)), val_index)

    def take(index: np.ndarray) -> ImageSet:
        from transferkit.data.images import stack_images

        return ImageSet(
            stack_images([np.asarray(train.images[i]) for i in index]), train.labels[index], train.classes
        )

    return Splits(take(keep), take(val_index), test, train.classes, True)


def balanced_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` indices, as equal per class as possible, drawn with ``seed``."""
    if size >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per = [size // len(classes) + (1 if i < size % len(classes) else 0) for i in range(len(classes))]
    chosen = []
    for c, k in zip(classes, per, strict=True):
        pool = np.flatnonzero(labels == c)
        if k > len(pool):
            raise TransferkitError(f"--train-size {size}: class {c} has only {len(pool)} training images")
        chosen.append(rng.choice(pool, size=k, replace=False))
    return np.sort(np.concatenate(chosen))


def _over_budget(data: str, named: list[tuple[str, Any]], size: int, crop_fraction: float) -> bool:
    """Whether the splits, resized, would take more memory than :func:`memory_budget` allows:
    then they are resized to a file and read from it a batch at a time, and the frozen
    prefix's outputs are memory-mapped from their cache (announced once)."""
    from transferkit.data.pairs import memory_budget, streaming_notice

    side = imaging.stored_size(size, crop_fraction)
    needed = sum(len(s) for _, s in named) * 3 * side * side
    budget = memory_budget()
    if budget is None or needed <= budget:
        return False
    if distributed.is_writer():
        streaming_notice(data, needed, side, budget, "resized images and frozen-stage outputs are kept",
                         ("prepared", "activations"))
    return True


def _check_input_size(backbone: Any, size: int, device: torch.device) -> None:
    if size < 8:
        raise TransferkitError(f"--image-size {size}: expected at least 8 pixels")
    try:
        with torch.inference_mode():
            backbone.eval()(torch.zeros(1, 3, size, size, device=device))
    except RuntimeError as exc:
        raise TransferkitError(
            f"--image-size {size}: too small for {backbone.spec.name} ({str(exc).splitlines()[0]})"
        ) from exc


# A finished run's files; --restart discards them, metrics.json (the mark of a finished run) first.
FINISHED_FILES = ("metrics.json", "model.safetensors", "model.json")
# Each stage's checkpoint while the run trains (removed once the run has finished).
CHECKPOINTS = tuple(f"checkpoint-{stage}.pt" for stage in ("scratch", "head", "finetune"))
RUN_FILES = (*FINISHED_FILES, "metrics.jsonl", *CHECKPOINTS)


def _finished(out: Path) -> dict[str, Any] | None:
    """The metrics of the finished run in ``out`` (all its files there and readable), else None."""
    if not all((out / name).is_file() for name in FINISHED_FILES):
        return None
    try:
        result = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and "val_accuracy" in result else None


def run(
    config: RecipeConfig,
    out: str | Path,
    data_root: str | None = None,
    progress: bool = True,
    splits: Splits | None = None,
    prepared: dict[str, torch.Tensor] | None = None,
    restart: bool = False,
    log: str | None = None,
) -> dict[str, Any]:
    """Run one recipe; returns (and writes) its metrics. ``splits``/``prepared`` let a
    benchmark reuse decoded and resized images across runs.

    ``out`` is locked while the run writes it (another process writing it is refused). A
    finished run of the same settings there is returned as it was, not trained again, unless
    ``restart``, which discards its model and metrics and trains it again; a finished run of
    other settings is refused either way. ``log="tensorboard"`` writes each stage's steps and
    epochs under ``out/tensorboard`` (:mod:`transferkit.training.runlog`; not a setting of the
    run).
    """
    config.check()
    check_log(log)
    started = time.perf_counter()
    out = Path(out)
    # under torchrun: join the process group; rank 0 alone holds the lock and writes
    config = replace(config, device=distributed.setup(config.device))
    with distributed.writer_only(locked(out)):
        return _run(config, out, data_root, progress, splits, prepared, restart, started, log)


def _run(
    config: RecipeConfig,
    out: Path,
    data_root: str | None,
    progress: bool,
    splits: Splits | None,
    prepared: dict[str, torch.Tensor] | None,
    restart: bool,
    started: float,
    log: str | None = None,
) -> dict[str, Any]:
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    weights = config.weights
    if config.recipe == "scratch" and weights == "imagenet":
        weights = "random"
    backbone = build_backbone(config.backbone, weights, config.image_size, data_root).to(device)
    size = backbone.spec.input_size
    _check_input_size(backbone, size, device)
    record = {**asdict(config), "weights": weights, "input_size": size}
    if distributed.is_writer():
        check_same_settings(out, record, FINISHED_FILES + CHECKPOINTS, unreadable_ok=restart)
        if restart:
            discard(out, RUN_FILES)
    distributed.barrier()  # the other ranks read the folder rank 0 has settled
    if not restart:
        finished = _finished(out) if distributed.is_writer() else None
        finished = distributed.broadcast_object(finished)  # rank 0's folder decides
        if finished is not None:  # the same settings, finished: kept as it is
            if progress:
                print(f"transferkit: {out} holds this run, finished: reported as recorded "
                      "(--restart trains it again)", file=sys.stderr)
            return finished
    splits = splits or load_splits(config.data, data_root)
    if distributed.is_writer():
        write_config(out, record)
    named = [(n, s) for n, s in (("train", splits.train), ("val", splits.val), ("test", splits.test))
             if s is not None]
    # rank 0 decides (the processes' free memory differs) and writes the files first; the
    # others then find them (on its machine) instead of resizing every image again
    on_disk = bool(distributed.broadcast_object(
        prepared is None and _over_budget(config.data, named, size, backbone.spec.crop_fraction)))
    if prepared is None:
        prepare = imaging.prepare_on_disk if on_disk else imaging.prepare
        if on_disk and not distributed.is_writer():
            distributed.barrier()
        prepared = {name: prepare(s, size, progress, backbone.spec.crop_fraction) for name, s in named}
        if on_disk and distributed.is_writer():
            distributed.barrier()
    labels = {name: torch.as_tensor(np.array(s.labels)) for name, s in named}
    subset = torch.as_tensor(
        balanced_subset(labels["train"].numpy(), config.train_size, config.seed)
        if config.train_size
        else np.arange(len(labels["train"]))
    )
    model = Classifier(
        backbone,
        make_head(config.head, backbone.feature_dim, len(splits.classes)).to(device),
        splits.classes,
        config.head,
    )
    n_stages = len(backbone.stages)
    timings: dict[str, float] = {}

    whole_train = len(subset) == len(labels["train"])  # no subset to copy out of the split

    def inputs(name: str, split: int, augment: bool) -> CachedInputs | OnlineInputs:
        images = prepared[name] if name != "train" or whole_train else prepared["train"][subset]
        if split == 0 or config.views == 0:  # nothing to cache, or caching switched off
            gen = torch.Generator().manual_seed(config.seed + 1) if augment else None
            return OnlineInputs(images, backbone, split, size, device, gen, config.flip)
        if name == "train":  # cache the whole training split; subsets index into it
            whole = prepared["train"]
            t = time.perf_counter()
            views = activations.cached_views(
                backbone,
                whole,
                split,
                size,
                device,
                config.views if augment else 1,
                config.seed if augment else -1,
                progress,
                f"{name} ⟶ {backbone.stage_names[split - 1]}",
                flip=config.flip,
                on_disk=on_disk,
            )
            timings[f"prefix_{name}_{'aug' if augment else 'center'}_seconds"] = time.perf_counter() - t
            return CachedInputs(views if whole_train else [v[subset] for v in views], device)
        t = time.perf_counter()
        views = activations.cached_views(
            backbone,
            images,
            split,
            size,
            device,
            1,
            -1,
            progress,
            f"{name} ⟶ {backbone.stage_names[split - 1]}",
            on_disk=on_disk,
        )
        timings[f"prefix_{name}_seconds"] = time.perf_counter() - t
        return CachedInputs(views, device)

    stages: list[StageResult] = []
    y_train = labels["train"][subset]
    # the run's wall time, its earlier invocations' included (read from the stage checkpoints)
    clock = RunClock(started=started)

    def train(split: int, train_in: Any, val_in: Any, stage: StageConfig) -> None:
        data = FitData(train_in, y_train, monitor=val_in, monitor_labels=labels["val"])
        earlier = [record for done in stages for record in done.history]
        stages.append(fit_stage(model, split, data, stage, generator, device, out, earlier, progress,
                                config.seed, "--finetune-lr" if stage.name == "finetune" else "--lr",
                                log, clock))

    head_config = StageConfig(
        "head", config.epochs, config.learning_rate, patience=config.patience, batch_size=config.batch_size,
        precision=config.precision,
    )
    if config.recipe == "scratch":
        split = 0
        train(split, inputs("train", 0, True), inputs("val", 0, False), replace(head_config, name="scratch"))
    elif config.recipe == "extract":
        split = n_stages
        train(split, inputs("train", split, False), inputs("val", split, False), head_config)
    else:
        split = backbone.split_index(config.unfreeze)
        train_in, val_in = inputs("train", split, True), inputs("val", split, False)
        if split == n_stages:  # --unfreeze 0: the head alone, on augmented views
            train(split, train_in, val_in, head_config)
        elif isinstance(train_in, CachedInputs):
            # The prefix up to the first unfrozen stage is computed once; stage 1's features
            # are the frozen suffix applied to those same cached views.
            train(
                n_stages,
                CachedInputs(activations.extend(backbone, train_in.views, split, n_stages, device,
                                                on_disk=on_disk), device),
                CachedInputs(activations.extend(backbone, val_in.views, split, n_stages, device,
                                                on_disk=on_disk), device),
                head_config,
            )
        else:
            train(n_stages, inputs("train", n_stages, True), inputs("val", n_stages, False), head_config)
        if split < n_stages:
            train(
                split,
                train_in,
                val_in,
                StageConfig(
                    "finetune",
                    config.finetune_epochs,
                    config.finetune_learning_rate,
                    patience=config.patience,
                    batch_size=config.batch_size,
                    precision=config.precision,
                ),
            )
    result: dict[str, Any] = {
        "recipe": config.recipe,
        "data": config.data,
        "backbone": config.backbone,
        "weights": weights,
        "input_size": size,
        "head": config.head,
        "seed": config.seed,
        "train_size": len(subset),
        "val_size": len(labels["val"]),
        "val_from_train": splits.val_from_train,
        "val_accuracy": stages[-1].best_val_accuracy,
        "selected_by": "best validation accuracy over epochs (ties: lower validation loss)",
        "stages": [
            {
                "name": s.name,
                "trainable_from": backbone.stage_names[s.split] if s.split < n_stages else "head only",
                "epochs_run": s.epochs_run,
                "best_epoch": s.best_epoch,
                "best_val_accuracy": s.best_val_accuracy,
                "seconds": s.seconds,
                "median_epoch_seconds": float(np.median(s.epoch_seconds)) if s.epoch_seconds else None,
            }
            for s in stages
        ],
        "timings": timings,
        "device": str(device),
    }
    if "test" in labels:
        test_in = inputs("test", split, False)
        accuracy, _, _ = evaluate(model, split, test_in, labels["test"])
        result["test_accuracy"] = accuracy
        result["test_size"] = len(labels["test"])
    result["wall_seconds"] = clock.total()
    if not distributed.is_writer():  # rank 0 writes the model and the metrics
        return result
    save_model(model, out, {"recipe": config.recipe, "data": config.data})
    write_json(out / "metrics.json", result)  # last: the mark of a finished run
    for name in CHECKPOINTS:  # the model and metrics hold all a finished run needs
        (out / name).unlink(missing_ok=True)
    return result


# ---------------------------------------------------------------- the model: a backbone with a new head


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
