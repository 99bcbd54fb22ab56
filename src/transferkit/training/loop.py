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

Non-finite values are caught where the host reads them anyway, at no cost per step: the
epoch's summed losses (a NaN or infinity in any step leaves its sum non-finite, so the sum is
a complete check) and, before each checkpoint, the weights (one reduction per epoch). A run
whose loss or weights stop being finite raises :class:`NonFiniteError` naming the epoch, its
steps and the loss terms; that epoch is not checkpointed, so the last good checkpoint stays.

Memory is bounded by the data, not by the flags: a batch holds at most every labelled image
once (``batch_size`` larger than the labelled split is clamped to it), and an epoch's sample
order is drawn in chunks, a few whole shuffled passes at a time, in the same random sequence
as drawing the whole epoch at once.
"""

from __future__ import annotations

import json
import math
import numbers
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from transferkit.data.pairs import DomainPair, DomainSplit
from transferkit.errors import TransferkitError
from transferkit.methods.base import Method
from transferkit.training.checkpoint import corrupt_checkpoint, load_checkpoint, save_checkpoint
from transferkit.training.device import resolve_device
from transferkit.training.runfolder import NonFiniteError, non_finite, write_text
from transferkit.training.schedules import annealed_learning_rate

CHECKPOINT = "checkpoint.pt"
METRICS_LINES = "metrics.jsonl"


class SettingError(TransferkitError, ValueError):
    """A training setting out of range: one line in the CLI, a ``ValueError`` in Python."""


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
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise SettingError(f"--{name.replace('_', '-')} {value}: expected a whole number "
                                   "of at least 1")
        steps = self.steps_per_epoch
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, numbers.Integral)
                                  or steps < 1):
            raise SettingError(f"--steps-per-epoch {steps}: expected a whole number of at least 1 "
                               "(or leave it out for one pass over the labelled data)")
        if not _positive_finite(self.learning_rate):
            raise SettingError(f"--lr {self.learning_rate}: expected a finite number above 0 "
                               "(such as 0.01)")
        if not (_finite(self.momentum) and 0.0 <= self.momentum < 1.0):
            raise SettingError(f"momentum {self.momentum}: expected a number in [0, 1)")


def _finite(value: object) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))  # type: ignore[arg-type]


def _positive_finite(value: object) -> bool:
    return _finite(value) and value > 0  # type: ignore[operator]


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


# Indices an epoch's order holds on the device at a time (8 MiB): an ordinary epoch's whole
# order is one chunk, moved to the device once, as before; a huge --steps-per-epoch is drawn a
# chunk at a time instead of all at once.
ORDER_CHUNK = 1 << 20


class _EpochOrder:
    """:func:`_epoch_indices` of ``count`` indices, drawn lazily: the same passes from the same
    generator states, a chunk of whole passes at a time, so memory stays bounded however many
    steps an epoch has. ``take(n)`` returns the next ``n`` indices on ``device``."""

    def __init__(self, size: int, count: int, generator: torch.Generator,
                 device: torch.device) -> None:
        self.size, self.generator, self.device = size, generator, device
        self.passes_left = math.ceil(count / size)
        self.buffer = torch.empty(0, dtype=torch.int64, device=device)
        self.position = 0

    def take(self, n: int) -> torch.Tensor:
        if self.position + n > len(self.buffer):
            rest = self.buffer[self.position:]
            wanted = max(n, ORDER_CHUNK) - len(rest)
            count = min(self.passes_left, max(1, math.ceil(wanted / self.size)))
            passes = [torch.randperm(self.size, generator=self.generator) for _ in range(count)]
            self.passes_left -= count
            self.buffer = torch.cat([rest, torch.cat(passes).to(self.device)])
            self.position = 0
        chosen = self.buffer[self.position : self.position + n]
        self.position += n
        return chosen


def _state_after_passes(generator: torch.Generator, size: int, passes: int) -> torch.Tensor:
    """``generator``'s state after ``passes`` permutations of ``size`` (``generator`` unchanged)."""
    ahead = torch.Generator()
    ahead.set_state(generator.get_state())
    for _ in range(passes):
        torch.randperm(size, generator=ahead)
    return ahead.get_state()


@dataclass
class RunClock:
    """A run's wall time across invocations: ``before`` (seconds its earlier invocations spent
    up to their last checkpoint, read from the checkpoint) plus this invocation's since
    ``started``. ``trained`` says whether this invocation finished an epoch."""

    started: float = field(default_factory=time.perf_counter)
    before: float = 0.0
    trained: bool = False

    def total(self) -> float:
        return self.before + time.perf_counter() - self.started


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
        progress: bool = True, average: AveragedModel | None = None,
        clock: RunClock | None = None) -> list[dict[str, Any]]:
    """Train ``method`` on ``pair``; returns one dict of metrics per epoch.

    ``average``, made by :func:`weight_average` from ``method`` before training, is updated
    after every optimiser step; its monitor accuracy is logged as ``average_val_accuracy``.
    ``clock`` (see :class:`RunClock`) is given the wall time a resumed run had already spent,
    and each checkpoint records the run's total so far.
    """
    clock = clock if clock is not None else RunClock()
    device = resolve_device(config.device)
    method.to(device).to(memory_format=torch.channels_last)
    if average is not None:
        average.to(device).to(memory_format=torch.channels_last)
    labelled = _to_device(method.labelled_split(pair), device)
    target = _to_device(pair.target_train, device) if method.uses_target else None
    monitor = method.monitor_split(pair)
    # Memory is bounded by the data, or one default batch where the data are fewer: a
    # --batch-size beyond both would only repeat images, at the cost of memory without bound
    # (a default batch of a tiny set repeats some, as every committed run was made).
    batch = min(config.batch_size, max(len(labelled), TrainConfig.batch_size))
    if batch < config.batch_size and progress:
        tqdm.write(f"transferkit: --batch-size {config.batch_size} is more than the {len(labelled)} "
                   f"labelled images: batches of {batch}")
    steps_per_epoch = config.steps_per_epoch or max(1, len(labelled) // batch)
    total_steps = config.epochs * steps_per_epoch
    # parameter groups with an lr_scale each: a pretrained backbone trains at a fraction of
    # the rate (Method.parameter_groups); the paper's networks are one group at the full rate
    optimizer = torch.optim.SGD(method.parameter_groups(), lr=config.learning_rate,
                                momentum=config.momentum)
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, Any]] = []

    checkpoint_path = run_dir / CHECKPOINT if run_dir is not None else None
    state = load_checkpoint(checkpoint_path) if checkpoint_path is not None else None
    if state is not None:
        assert checkpoint_path is not None
        # the checkpoint's own record of its settings: a run folder that lost its config.json
        # must not resume a run of other settings either (the device may change)
        saved_config = state.get("config")
        if isinstance(saved_config, dict):
            changed = [f"{key}={saved_config.get(key)!r} there, {value!r} here"
                       for key, value in asdict(config).items()
                       if key != "device" and key in saved_config and saved_config[key] != value]
            if changed:
                raise TransferkitError(f"{checkpoint_path} was made with other settings "
                                       f"({'; '.join(changed)}): choose another --out, or rerun "
                                       "with --restart to train this run from the start")
        if average is not None and "average" not in state:
            raise TransferkitError(f"{checkpoint_path}: made without a weight average; it cannot "
                                   "resume a run that keeps one (remove the folder, or choose "
                                   "another --out)")
        try:
            method.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            history = list(state["history"])
            if average is not None:
                average.load_state_dict(state["average"])
            bad = non_finite(state["model"]) + non_finite(state.get("average", {}))
            seconds = float(state.get("wall_seconds", sum(h["seconds"] for h in history)))
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise corrupt_checkpoint(checkpoint_path, f"it does not fit this run: {detail}") from None
        if bad:
            raise corrupt_checkpoint(checkpoint_path, f"{bad[0]} holds NaN or infinite values")
        clock.before = seconds
    if run_dir is not None:  # rewrite from the checkpoint: a line after it is not trusted
        _write_lines(run_dir / METRICS_LINES, history)

    method.train()
    for epoch in range(len(history), config.epochs):
        count = steps_per_epoch * batch
        labelled_order = _EpochOrder(len(labelled), count, generator, device)
        if target is not None:  # the target's passes follow the labelled ones in the sequence
            target_generator = torch.Generator()
            target_generator.set_state(_state_after_passes(generator, len(labelled),
                                                           labelled_order.passes_left))
            target_order = _EpochOrder(len(target), count, target_generator, device)
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
                group["lr"] = learning_rate * group.get("lr_scale", 1.0)
            data_start = time.perf_counter()
            chosen = labelled_order.take(batch)
            images = pair.normalize(labelled.images[chosen])
            labels = labelled.labels[chosen]
            target_images = None
            if target is not None:
                target_images = pair.normalize(target.images[target_order.take(batch)])
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
        if target is not None:
            generator.set_state(target_generator.get_state())
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the clock stops when the device's work is done
        seconds = time.perf_counter() - started
        images_per_step = batch * (2 if target is not None else 1)
        record: dict[str, Any] = {"epoch": epoch + 1}
        record.update({k: float(v) / steps_per_epoch for k, v in sums.items()})
        _stop_unless_finite(record, method, average, epoch, steps_per_epoch, config, len(history),
                            checkpoint_path)
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
            assert checkpoint_path is not None
            snapshot = {"model": method.state_dict(), "optimizer": optimizer.state_dict(),
                        "generator": generator.get_state(), "history": history,
                        "config": asdict(config), "wall_seconds": clock.total()}
            if average is not None:
                snapshot["average"] = average.state_dict()
            save_checkpoint(checkpoint_path, snapshot)
            _write_lines(run_dir / METRICS_LINES, history)
        clock.trained = True
        if progress:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch")
            tqdm.write(f"{method.name} epoch {epoch + 1}/{config.epochs}: {shown}")
    return history


def _write_lines(path: Path, history: list[dict[str, Any]]) -> None:
    """``metrics.jsonl``: one line per finished epoch, the whole file replaced at once."""
    write_text(path, "".join(json.dumps(h) + "\n" for h in history))


def _stop_unless_finite(record: dict[str, Any], method: Method, average: AveragedModel | None,
                        epoch: int, steps_per_epoch: int, config: TrainConfig, kept: int,
                        checkpoint_path: Path | None) -> None:
    """Raise :class:`NonFiniteError` if an epoch's mean losses (``record``) or the weights
    after it are not finite; called before the epoch is evaluated or checkpointed."""
    bad_losses = [key for key, value in record.items() if key != "epoch" and not math.isfinite(value)]
    tensors = {f"weight {name}": value for name, value in method.state_dict().items()}
    if average is not None:
        tensors.update({f"average weight {name}": value
                        for name, value in average.module.state_dict().items()})
    bad_weights = non_finite(tensors) if not bad_losses else []
    if not bad_losses and not bad_weights:
        return
    first, last = epoch * steps_per_epoch + 1, (epoch + 1) * steps_per_epoch
    if bad_losses:
        values = sorted({str(record[key]) for key in bad_losses})
        what = (f"the loss {'term' if len(bad_losses) == 1 else 'terms'} {', '.join(bad_losses)} "
                f"became {' and '.join(values)}")
    else:
        what = f"the {bad_weights[0]} became NaN or infinite ({len(bad_weights)} tensors)"
    if checkpoint_path is not None and kept:
        kept_text = (f"{checkpoint_path} keeps epoch {kept}, the last with finite values. Lower "
                     "--lr (or check the data) and train into another --out")
    else:
        kept_text = "no epoch was saved. Run again with a lower --lr (or check the data)"
    raise NonFiniteError(
        f"training stopped: {what} in epoch {epoch + 1} (steps {first}-{last} of "
        f"{config.epochs * steps_per_epoch}) of {method.name} at --lr {config.learning_rate:g}; "
        f"{kept_text}")
