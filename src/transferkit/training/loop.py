"""The one training loop: every method runs through :func:`fit`.

Batches are drawn from in-memory uint8 tensors (already on the training device) by index,
then normalised in one vectorised step — no per-sample Python work, no worker processes.
Each epoch ends with an evaluation on the method's monitor split, a line in
``metrics.jsonl`` and a checkpoint (model, optimiser, epoch, sampler RNG, history), so an
interrupted run resumes where its last epoch ended.

With ``average`` (see :func:`weight_average`) the loop also keeps an exponential moving
average of the weights, updated after every step, evaluated on the monitor split each epoch
and checkpointed with the rest.

Nothing inside a step waits for the device: losses are summed on the device and read once
per epoch (and every 20th step for the progress bar), and the weight average keeps its step
count on the host. On a GPU the small digit networks are bound by kernel launches, and each
wait would empty the queue.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from transferkit.data.pairs import DomainPair, DomainSplit
from transferkit.methods.base import Method
from transferkit.training.checkpoint import load_checkpoint, save_checkpoint
from transferkit.training.device import resolve_device
from transferkit.training.schedules import annealed_learning_rate

CHECKPOINT = "checkpoint.pt"
METRICS_LINES = "metrics.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    """Plain values; defaults are the paper's (SGD, momentum 0.9, μ₀ = 0.01, 64 + 64)."""

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 0.01
    momentum: float = 0.9
    steps_per_epoch: int | None = None  # default: one pass over the labelled split
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


def _to_device(split: DomainSplit, device: torch.device) -> DomainSplit:
    memory_format = torch.channels_last  # faster oneDNN convolutions on the CPU
    return DomainSplit(split.images.to(device).contiguous(memory_format=memory_format),
                       split.labels.to(device))


OUTPUTS = ("logits", "hidden")


# Inference batch on the CPU: the MNIST network ran 15,800 images/s at 256 images a batch and
# 10,200 at 1,024 (2 threads; conv1's output for 1,024 images, 75 MB, outgrows the 32 MB L3);
# the SVHN and GTSRB networks ran as fast at 256 as at 1,024. A GPU keeps the larger batch.
CPU_INFERENCE_BATCH = 256
GPU_INFERENCE_BATCH = 1024


@torch.no_grad()
def run_batches(method: Method, images: torch.Tensor, pair: DomainPair, output: str = "logits",
                batch_size: int | None = None) -> torch.Tensor:
    """Logits (or, ``output="hidden"``, the label predictor's last hidden layer) of uint8
    images, batch by batch, returned on the CPU. ``batch_size`` defaults to 256 images on the
    CPU and 1,024 on a GPU."""
    if output not in OUTPUTS:
        raise ValueError(f"output {output!r}: expected one of {', '.join(OUTPUTS)}")
    was_training = method.training
    method.eval()
    device = next(method.parameters()).device
    if batch_size is None:
        batch_size = CPU_INFERENCE_BATCH if device.type == "cpu" else GPU_INFERENCE_BATCH
    forward = method.hidden if output == "hidden" else method
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = pair.normalize(images[start : start + batch_size].to(device))
        outputs.append(forward(batch.contiguous(memory_format=torch.channels_last)).cpu())
    method.train(was_training)
    return torch.cat(outputs)


def evaluate(method: Method, split: DomainSplit, pair: DomainPair) -> float:
    """Accuracy of ``method`` on a labelled split."""
    predictions = run_batches(method, split.images, pair).argmax(1)
    return float((predictions == split.labels.cpu()).float().mean())


def _epoch_indices(size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` indices into ``size`` items: whole shuffled passes, as many as needed."""
    passes = [torch.randperm(size, generator=generator) for _ in range(math.ceil(count / size))]
    return torch.cat(passes)[:count]


class _HostCountedAverage(AveragedModel):
    """:class:`AveragedModel` whose update never waits for the device.

    The parent compares its ``n_averaged`` buffer with zero on every update, which copies it
    to the host: one device synchronisation per step. Here a host copy of the count decides
    whether to copy or to average; the buffer is still kept (and checkpointed) as before, so
    state dicts are unchanged.
    """

    def __init__(self, method: Method, decay: float) -> None:
        super().__init__(method, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self._host_count: int | None = 0

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        result = super().load_state_dict(*args, **kwargs)
        self._host_count = None  # read from the loaded buffer at the next update
        return result

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        if self._host_count is None:
            self._host_count = int(self.n_averaged)
        averaged = [*self.module.parameters(), *self.module.buffers()]
        current = [t.detach() for t in (*model.parameters(), *model.buffers())]
        if self._host_count == 0:
            for mine, theirs in zip(averaged, current, strict=True):
                mine.copy_(theirs)
        else:
            floating = [(a, c) for a, c in zip(averaged, current, strict=True)
                        if a.is_floating_point()]
            self.multi_avg_fn([a for a, _ in floating], [c for _, c in floating], None)
            for mine, theirs in zip(averaged, current, strict=True):
                if not mine.is_floating_point():
                    mine.copy_(theirs)
        self.n_averaged += 1
        self._host_count += 1


def weight_average(method: Method, decay: float) -> AveragedModel:
    """An exponential moving average of ``method``'s weights: after each step
    w̄ ← decay · w̄ + (1 − decay) · w (the first step copies w). Its ``module`` is a
    :class:`Method` like ``method``, to evaluate or save."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"weight-average decay must lie strictly between 0 and 1, got {decay}")
    return _HostCountedAverage(method, decay)


def fit(method: Method, pair: DomainPair, config: TrainConfig, run_dir: Path | None = None,
        progress: bool = True, average: AveragedModel | None = None) -> list[dict[str, Any]]:
    """Train ``method`` on ``pair``; returns one dict of metrics per epoch.

    ``average``, made by :func:`weight_average` from ``method`` before training, is updated
    after every optimiser step; its monitor accuracy is logged as ``average_val_accuracy``.
    """
    device = resolve_device(config.device)
    method.to(device).to(memory_format=torch.channels_last)
    if average is not None:
        average.to(device).to(memory_format=torch.channels_last)
    labelled = _to_device(method.labelled_split(pair), device)
    target = _to_device(pair.target_train, device) if method.uses_target else None
    monitor = method.monitor_split(pair)
    steps_per_epoch = config.steps_per_epoch or max(1, len(labelled) // config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    optimizer = torch.optim.SGD(method.parameters(), lr=config.learning_rate,
                                momentum=config.momentum)
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, Any]] = []

    checkpoint_path = run_dir / CHECKPOINT if run_dir is not None else None
    state = load_checkpoint(checkpoint_path) if checkpoint_path is not None else None
    if state is not None:
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        history = list(state["history"])
        if average is not None:
            if "average" not in state:
                raise ValueError(f"{checkpoint_path}: made without a weight average; "
                                 "it cannot resume a run that keeps one")
            average.load_state_dict(state["average"])
    if run_dir is not None:  # rewrite from the checkpoint: a line after it is not trusted
        (run_dir / METRICS_LINES).write_text("".join(json.dumps(h) + "\n" for h in history))

    method.train()
    batch = config.batch_size
    for epoch in range(len(history), config.epochs):
        count = steps_per_epoch * batch
        labelled_order = _epoch_indices(len(labelled), count, generator).to(device)
        target_order = (_epoch_indices(len(target), count, generator).to(device)
                        if target is not None else None)
        sums: dict[str, torch.Tensor | float] = defaultdict(float)
        data_seconds = 0.0
        started = time.perf_counter()
        bar = tqdm(range(steps_per_epoch), desc=f"{method.name} epoch {epoch + 1}/{config.epochs}",
                   unit="step", leave=False, disable=not progress, mininterval=0.5)
        for step in bar:
            global_step = epoch * steps_per_epoch + step
            progress_p = global_step / total_steps
            learning_rate = annealed_learning_rate(progress_p, config.learning_rate)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate
            data_start = time.perf_counter()
            chosen = labelled_order[step * batch : (step + 1) * batch]
            images = pair.normalize(labelled.images[chosen])
            labels = labelled.labels[chosen]
            target_images = None
            if target is not None and target_order is not None:
                target_images = pair.normalize(target.images[target_order[step * batch : (step + 1) * batch]])
            data_seconds += time.perf_counter() - data_start

            values = method.losses(images, labels, target_images, progress_p)
            optimizer.zero_grad(set_to_none=True)
            values["loss"].backward()
            optimizer.step()
            if average is not None:
                average.update_parameters(method)
            for key, value in values.items():  # summed where they are: no wait per step
                sums[key] = sums[key] + value.detach().double()
            if progress and step % 20 == 0:
                bar.set_postfix({k: f"{float(v) / (step + 1):.3f}" for k, v in sums.items()
                                 if k != "grl_coefficient"})
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the clock stops when the device's work is done
        seconds = time.perf_counter() - started
        images_per_step = batch * (2 if target is not None else 1)
        record: dict[str, Any] = {"epoch": epoch + 1}
        record.update({k: float(v) / steps_per_epoch for k, v in sums.items()})
        record.update({
            "learning_rate": learning_rate,
            "seconds": seconds,
            "images_per_second": steps_per_epoch * images_per_step / seconds,
            "data_fraction": data_seconds / seconds,
        })
        if monitor is not None:
            record["source_val_accuracy"] = evaluate(method, monitor, pair)
            if average is not None:
                record["average_val_accuracy"] = evaluate(average.module, monitor, pair)
        history.append(record)
        if run_dir is not None:
            snapshot = {"model": method.state_dict(), "optimizer": optimizer.state_dict(),
                        "generator": generator.get_state(), "history": history,
                        "config": asdict(config)}
            if average is not None:
                snapshot["average"] = average.state_dict()
            save_checkpoint(checkpoint_path, snapshot)
            with open(run_dir / METRICS_LINES, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        if progress:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch")
            tqdm.write(f"{method.name} epoch {epoch + 1}/{config.epochs}: {shown}")
    return history
