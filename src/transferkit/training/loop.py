"""The one training loop: every adaptation method, and every stage of the extract /
finetune / scratch recipes, runs through :func:`fit`.

Batches are drawn by index from the data's inputs (:mod:`transferkit.training.batches`):
in-memory uint8 tensors already on the training device, normalized in one vectorized step — no
per-sample Python work, no worker processes — or a frozen prefix's cached activations, or
images augmented and run through the prefix at each step, or, for a pair too large for memory,
rows read from its memory-mapped file by DataLoader workers ahead of the step
(:func:`~transferkit.training.batches.step_batches`: the same sample order, the same batches).
Each epoch ends with an evaluation on the monitored labelled split, a line in
``metrics.jsonl`` and a checkpoint (model, optimizer, epoch, sampler and torch generators, the
selected epoch's weights, history), so an interrupted run resumes where its last epoch ended,
to the same weights.

The optimizer and schedule are settings (:class:`TrainConfig`): the DANN paper's SGD with
annealing for adaptation, AdamW at a constant rate for fine-tuning; so is the selection, the
last epoch or the best on the monitored split with early stopping.

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

import contextlib
import json
import math
import numbers
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from transferkit.data.pairs import DomainPair, DomainSplit
from transferkit.errors import TransferkitError
from transferkit.methods.base import Method
from transferkit.training import distributed
from transferkit.training.batches import FitData, InMemory, Inputs, Streamed, step_batches
from transferkit.training.checkpoint import (
    content_digest,
    corrupt_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from transferkit.training.device import resolve_device
from transferkit.training.runfolder import NonFiniteError, non_finite, save_tensors, write_text
from transferkit.training.runlog import STEP_EVERY, RunLog
from transferkit.training.schedules import annealed_learning_rate

CHECKPOINT = "checkpoint.pt"
METRICS_LINES = "metrics.jsonl"
EPOCHS_FOLDER = "epochs"  # each epoch's model, with keep_epochs


class SettingError(TransferkitError, ValueError):
    """A training setting out of range: one line in the CLI, a ``ValueError`` in Python."""


OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("annealed", "constant")
SELECTIONS = ("last", "best")
PRECISIONS = ("fp32", "bf16", "fp16")
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainConfig:
    """Plain values; defaults are the paper's (SGD, momentum 0.9, μ₀ = 0.01 annealed, 64 + 64,
    the last epoch kept).

    Options added after the first runs default to None, meaning the paper's choice, so that
    run folders recorded before them still match their settings:

    - ``optimizer``: None or "sgd" (SGD with ``momentum``), or "adamw" (AdamW with
      ``weight_decay``, None meaning 0) — fine-tuning's;
    - ``schedule``: None or "annealed" (μ_p = μ₀ / (1 + 10 p)^0.75), or "constant";
    - ``selection``: None or "last" (the last epoch's weights), or "best" (the epoch with the
      best accuracy on the monitored labelled split, ties to the lower loss; never target
      data), with ``patience``: stop after that many epochs without a better one;
    - ``epoch_images``: images drawn per epoch, the last batch partial (overrides
      ``steps_per_epoch``);
    - ``precision``: None or "fp32", or "bf16" / "fp16": each training step's forward pass under
      autocast in that type (losses and softmaxes stay float32, as autocast keeps them; fp16
      with a gradient scaler, on GPUs only); evaluation stays float32.
    """

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 0.01
    momentum: float = 0.9
    steps_per_epoch: int | None = None  # default: one pass over the labelled split
    seed: int = 0
    device: str = "auto"
    optimizer: str | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    selection: str | None = None
    patience: int | None = None
    epoch_images: int | None = None
    precision: str | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise SettingError(f"--{name.replace('_', '-')} {value}: expected a whole number "
                                   "of at least 1")
        for name in ("steps_per_epoch", "patience", "epoch_images"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                                      or value < 1):
                raise SettingError(f"--{name.replace('_', '-')} {value}: expected a whole number of "
                                   "at least 1 (or leave it out)")
        if not _positive_finite(self.learning_rate):
            raise SettingError(f"--lr {self.learning_rate}: expected a finite number above 0 "
                               "(such as 0.01)")
        if not (_finite(self.momentum) and 0.0 <= self.momentum < 1.0):
            raise SettingError(f"momentum {self.momentum}: expected a number in [0, 1)")
        if self.weight_decay is not None and not (_finite(self.weight_decay) and self.weight_decay >= 0):
            raise SettingError(f"weight decay {self.weight_decay}: expected a finite number ≥ 0")
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
                              ("selection", SELECTIONS), ("precision", PRECISIONS)):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise SettingError(f"{name} {value!r}: expected one of {', '.join(allowed)}")


def _finite(value: object) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))  # type: ignore[arg-type]


def _positive_finite(value: object) -> bool:
    return _finite(value) and value > 0  # type: ignore[operator]


def _on_device(split: DomainSplit, pair: DomainPair, device: torch.device) -> InMemory | Streamed:
    if split.path is not None:  # too large for memory: read from its file as the steps need it
        return Streamed(split.images, split.path, pair.normalize, device)
    memory_format = torch.channels_last  # faster oneDNN convolutions on the CPU
    return InMemory(split.images.to(device).contiguous(memory_format=memory_format), pair.normalize,
                    device)


def pair_data(method: Method, pair: DomainPair, device: torch.device) -> FitData:
    """What ``method`` trains on in ``pair``: its labelled split and (if it uses them) the
    target's training images, in memory on ``device`` (or streamed from disk, for a pair that
    does not fit: :attr:`DomainPair.streamed`); it watches ``method.monitor_split``."""
    labelled = method.labelled_split(pair)
    monitor = method.monitor_split(pair)
    inputs = _on_device(labelled, pair, device)
    return FitData(
        labelled=inputs, labels=labelled.labels.to(inputs.index_device),
        target=_on_device(pair.target_train, pair, device) if method.uses_target else None,
        monitor=InMemory(monitor.images, pair.normalize, device) if monitor is not None else None,
        monitor_labels=monitor.labels if monitor is not None else None)


OUTPUTS = ("logits", "hidden")


# Inference batch on the CPU: the MNIST network ran 15,800 images/s at 256 images a batch and
# 10,200 at 1,024 (2 threads; conv1's output for 1,024 images, 75 MB, outgrows the 32 MB L3);
# the SVHN and GTSRB networks ran as fast at 256 as at 1,024. A GPU keeps the larger batch.
CPU_INFERENCE_BATCH = 256
GPU_INFERENCE_BATCH = 1024


def _batches_of(inputs: Inputs, batch_size: int):
    for start in range(0, len(inputs), batch_size):
        stop = min(start + batch_size, len(inputs))
        if hasattr(inputs, "slice"):
            yield start, stop, inputs.slice(start, stop)
        else:
            yield start, stop, inputs.batch(torch.arange(start, stop, device=inputs.index_device), 0)


@torch.no_grad()
def predict(module: torch.nn.Module, inputs: Inputs, batch_size: int | None = None,
            output: str = "logits") -> torch.Tensor:
    """The one batched-inference path: logits (or, ``output="hidden"``, the last hidden layer
    of a method's label predictor) of every item of ``inputs``, in inference mode, returned on
    the CPU. ``batch_size`` defaults to 256 on the CPU and 1,024 on a GPU."""
    if output not in OUTPUTS:
        raise ValueError(f"output {output!r}: expected one of {', '.join(OUTPUTS)}")
    was_training = module.training
    module.eval()
    if batch_size is None:
        device = next(module.parameters()).device
        batch_size = CPU_INFERENCE_BATCH if device.type == "cpu" else GPU_INFERENCE_BATCH
    forward = module.hidden if output == "hidden" else module
    outputs = [forward(batch).float().cpu() for _, _, batch in _batches_of(inputs, batch_size)]
    module.train(was_training)
    return torch.cat(outputs)


@torch.no_grad()
def scores(module: torch.nn.Module, inputs: Inputs, labels: torch.Tensor,
           batch_size: int | None = None) -> tuple[float, float, torch.Tensor]:
    """The one ``evaluate``: accuracy, mean cross-entropy and class probabilities (CPU) of
    ``module`` on labelled ``inputs`` (the loss is summed batch by batch in float64)."""
    logits = predict(module, inputs, batch_size)
    labels = labels.cpu()
    if batch_size is None:
        batch_size = len(logits) or 1
    loss = sum(F.cross_entropy(logits[i : i + batch_size], labels[i : i + batch_size],
                               reduction="sum").item() for i in range(0, len(labels), batch_size))
    probabilities = logits.softmax(1)
    accuracy = (probabilities.argmax(1) == labels).float().mean().item()
    return accuracy, loss / max(1, len(labels)), probabilities


def run_batches(method: Method, images: torch.Tensor, pair: DomainPair, output: str = "logits",
                batch_size: int | None = None) -> torch.Tensor:
    """Logits (or the last hidden layer) of uint8 images of ``pair``: :func:`predict` on them."""
    device = next(method.parameters()).device
    return predict(method, InMemory(images, pair.normalize, device), batch_size, output)


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


def _plan(steps: int, global_batch: int, count: int, order: _EpochOrder, target_order: _EpochOrder | None,
          rank: int, world: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None] | None]:
    """Each step's indices (labelled, target or None) in the order they are drawn — streamed
    inputs read them ahead of the steps — or None for a step this process skips."""
    for step in range(steps):
        size = min(global_batch, count - step * global_batch)
        chosen = order.take(size)
        target_chosen = target_order.take(size) if target_order is not None else None
        if world > 1:  # this process's share of the global batch
            if size < world:
                yield None  # a last partial batch too small to share: skipped by every process
                continue
            chosen = torch.tensor_split(chosen, world)[rank]
            if target_chosen is not None:
                target_chosen = torch.tensor_split(target_chosen, world)[rank]
        yield chosen, target_chosen


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
    to the host: one device synchronization per step. Here a host copy of the count decides
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


class _Losses(torch.nn.Module):
    """A method's step as a module call, for DistributedDataParallel (which averages the
    gradients of what its forward computed)."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    def forward(self, images: torch.Tensor, labels: torch.Tensor, target_images: torch.Tensor | None,
                progress: float) -> dict[str, torch.Tensor]:
        return self.method.losses(images, labels, target_images, progress)


def _distributed_losses(method: Method, device: torch.device) -> Any:
    """``method.losses`` under DistributedDataParallel. Parameters a method leaves unused in a
    step (Source-only beside the digit network's domain classifier) are allowed."""
    from torch.nn.parallel import DistributedDataParallel

    if method.perturbs_inputs:
        raise TransferkitError(f"--method {method.name} under torchrun: its input-perturbation passes are "
                               "not supported across processes yet; run it in one process")
    if device.type == "cuda":  # BatchNorm statistics over the global batch (CPUs: per process)
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    wrapped = DistributedDataParallel(_Losses(method), device_ids=[device] if device.type == "cuda" else None,
                                      find_unused_parameters=True)
    return wrapped


def _autocast_dtype(config: TrainConfig, method: Method, device: torch.device) -> torch.dtype | None:
    """The autocast type of ``config.precision`` (None: float32 throughout), or one line for a
    combination that does not run."""
    if config.precision in (None, "fp32"):
        return None
    if config.precision == "fp16" and device.type != "cuda":
        raise SettingError("--precision fp16: needs a GPU (--device cuda); on a CPU use bf16")
    if method.perturbs_inputs:
        raise SettingError(f"--precision {config.precision}: --method {method.name} computes its "
                           "adversarial direction to float32 precision; train it in fp32")
    return AUTOCAST[config.precision]


def _rank_seed(seed: int, rank: int, epoch: int) -> int:
    return (seed * 1_000_003 + rank * 10_007 + epoch) % (2**63)


def _better(record: dict[str, Any], best: dict[str, Any] | None, name: str) -> bool:
    """Whether ``record``'s monitored accuracy beats ``best``'s (ties: a lower loss)."""
    if best is None:
        return True
    accuracy, best_accuracy = record[f"{name}_accuracy"], best[f"{name}_accuracy"]
    return accuracy > best_accuracy or (accuracy == best_accuracy
                                        and record[f"{name}_loss"] < best[f"{name}_loss"])


def best_record(history: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The epoch ``selection="best"`` keeps: the first with the best monitored accuracy, ties
    to the lower loss."""
    best = None
    for record in history:
        if _better(record, best, name):
            best = record
    return best


def _stopped_early(history: list[dict[str, Any]], config: TrainConfig, name: str) -> bool:
    if config.selection != "best" or config.patience is None or not history:
        return False
    best = best_record(history, name)
    assert best is not None
    return len(history) - history.index(best) - 1 >= config.patience


def _optimizer(method: Method, config: TrainConfig) -> torch.optim.Optimizer:
    # parameter groups with an lr_scale each: a pretrained backbone trains at a fraction of
    # the rate (Method.parameter_groups); the paper's networks are one group at the full rate
    groups = method.parameter_groups()
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay or 0.0)
    return torch.optim.SGD(groups, lr=config.learning_rate, momentum=config.momentum)


def fit(method: Method, data: DomainPair | FitData, config: TrainConfig, run_dir: Path | None = None,
        progress: bool = True, average: AveragedModel | None = None, clock: RunClock | None = None,
        *, generator: torch.Generator | None = None, checkpoint_name: str = CHECKPOINT,
        earlier: list[dict[str, Any]] | tuple = (), stage: str | None = None,
        log: RunLog | None = None, keep_epochs: bool = False) -> list[dict[str, Any]]:
    """Train ``method``; returns one dict of metrics per epoch.

    ``data`` is a :class:`~transferkit.data.pairs.DomainPair` (the method's labelled split and,
    if it uses them, the target's images, in memory on the device) or any
    :class:`~transferkit.training.batches.FitData`. ``average``, made by
    :func:`weight_average` from ``method`` before training, is updated after every optimizer
    step; its monitor accuracy is logged as ``average_val_accuracy``. ``clock`` (see
    :class:`RunClock`) is given the wall time a resumed run had already spent, and each
    checkpoint records the run's total so far.

    A recipe is a list of stages, each one ``fit`` of its own ``checkpoint_name`` in the same
    ``run_dir``: ``generator`` (the sampling order's, default seeded with ``config.seed``) is
    shared by the stages and restored with each; ``earlier`` are the earlier stages' records,
    written before this stage's in ``metrics.jsonl``; ``stage`` names each record. A stage
    already finished in its checkpoint is not trained again: its weights (the selected epoch's)
    are loaded and its records returned.

    ``log`` (:mod:`transferkit.training.runlog`) is given the losses and learning rate of every
    :data:`~transferkit.training.runlog.STEP_EVERY`-th step and each epoch's record.

    ``keep_epochs`` writes each epoch's model (the weight average where there is one) to
    ``run_dir/epochs/epoch-K.safetensors``, whole (frozen weights included), for choosing an
    epoch afterwards without target labels (``benchmarks/validator_study.py``). Not a setting
    of the run: a run resumes with or without it.
    """
    clock = clock if clock is not None else RunClock()
    device = resolve_device(config.device)
    method.to(device).to(memory_format=torch.channels_last)
    if average is not None:
        average.to(device).to(memory_format=torch.channels_last)
    if isinstance(data, DomainPair):
        pair = data
        data = pair_data(method, pair, device)
    labelled, target = data.labelled, data.target
    name = data.monitor_name
    if config.selection == "best" and data.monitor is None:
        raise SettingError("selection 'best' needs a labelled split to watch; this run has none")
    # Memory is bounded by the data, or one default batch where the data are fewer: a
    # --batch-size beyond both would only repeat images, at the cost of memory without bound
    # (a default batch of a tiny set repeats some, as every committed run was made).
    batch = min(config.batch_size, max(len(labelled), TrainConfig.batch_size))
    if batch < config.batch_size and progress:
        tqdm.write(f"transferkit: --batch-size {config.batch_size} is more than the {len(labelled)} "
                   f"labelled images: batches of {batch}")
    # Under torchrun each of the W processes takes its share of a global batch of W × batch
    # (training/distributed.py); one process: the global batch is the batch.
    rank, world = distributed.rank(), distributed.world_size()
    global_batch = batch * world
    if config.epoch_images is not None:
        count = config.epoch_images
        steps_per_epoch = math.ceil(count / global_batch)
    else:
        steps_per_epoch = config.steps_per_epoch or max(1, len(labelled) // global_batch)
        count = steps_per_epoch * global_batch
    total_steps = config.epochs * steps_per_epoch
    optimizer = _optimizer(method, config)
    generator = generator if generator is not None else torch.Generator().manual_seed(config.seed)
    history: list[dict[str, Any]] = []
    best_state: dict[str, torch.Tensor] | None = None
    earlier = list(earlier)

    # Checkpoints and the selected epoch's copy hold what training can change: a frozen
    # backbone's weights and statistics are the same at every epoch (and rebuilt on resume).
    method.train()
    frozen = method.frozen_keys()

    def trained_state() -> dict[str, torch.Tensor]:
        return {k: v for k, v in method.state_dict().items() if k not in frozen}

    def load_trained(tensors: dict[str, torch.Tensor]) -> None:
        result = method.load_state_dict(tensors, strict=False)
        missing = set(result.missing_keys) - frozen
        if missing or result.unexpected_keys:
            raise KeyError(f"missing {sorted(missing)[:3]}, unexpected {result.unexpected_keys[:3]}")

    # A hash of the frozen tensors: a resumed run must find the prefix it trained on (not, say,
    # newer pretrained weights of the same name).
    frozen_state = {k: v for k, v in method.state_dict().items() if k in frozen}
    frozen_digest = content_digest(frozen_state) if frozen_state else None

    checkpoint_path = run_dir / checkpoint_name if run_dir is not None else None
    state = (load_checkpoint(checkpoint_path)
             if checkpoint_path is not None and distributed.is_writer() else None)
    state = distributed.broadcast_object(state)  # under torchrun: rank 0's checkpoint everywhere
    if state is not None:
        assert checkpoint_path is not None
        # the checkpoint's own record of its settings: a run folder that lost its config.json
        # must not resume a run of other settings either (the device may change)
        saved_config = state.get("config")
        if isinstance(saved_config, dict):
            changed = [f"{key}={saved_config.get(key)!r} there, {value!r} here"
                       for key, value in asdict(config).items()
                       if key != "device" and saved_config.get(key) != value]
            if changed:
                raise TransferkitError(f"{checkpoint_path} was made with other settings "
                                       f"({'; '.join(changed)}): choose another --out, or rerun "
                                       "with --restart to train this run from the start")
        if state.get("world_size", 1) != world:
            raise TransferkitError(f"{checkpoint_path} was trained by {state.get('world_size', 1)} "
                                   f"process(es), here {world}: the global batch would change; resume "
                                   "it with as many, or rerun with --restart")
        if frozen_digest is not None and state.get("frozen_digest", frozen_digest) != frozen_digest:
            raise TransferkitError(f"{checkpoint_path}: the frozen layers here differ from the ones "
                                   "this run trained on (new pretrained weights, or another run:DIR?); "
                                   "rerun with --restart to train it again on these")
        if average is not None and "average" not in state:
            raise TransferkitError(f"{checkpoint_path}: made without a weight average; it cannot "
                                   "resume a run that keeps one (remove the folder, or choose "
                                   "another --out)")
        try:
            load_trained(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            history = list(state["history"])
            if average is not None:
                average.load_state_dict(state["average"])
            if config.selection == "best":
                best_state = state["best"]
            if "torch_rng" in state:  # dropout and other draws from torch's global generator
                torch.set_rng_state(state["torch_rng"])
            if "cuda_rng" in state and device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"], device)
            if hasattr(labelled, "load_state"):
                labelled.load_state(state.get("inputs"))
            bad = (non_finite(state["model"]) + non_finite(state.get("average", {}))
                   + non_finite(best_state or {}))
            seconds = float(state.get("wall_seconds", sum(h["seconds"] for h in history)))
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise corrupt_checkpoint(checkpoint_path, f"it does not fit this run: {detail}") from None
        if bad:
            raise corrupt_checkpoint(checkpoint_path, f"{bad[0]} holds NaN or infinite values")
        clock.before = seconds
    if run_dir is not None and distributed.is_writer():  # rewrite from the checkpoint: a line
        _write_lines(run_dir / METRICS_LINES, earlier + history)  # after it is not trusted

    method.train()
    best = best_record(history, name) if config.selection == "best" else None
    step_losses = _distributed_losses(method, device) if world > 1 else method.losses
    autocast_dtype = _autocast_dtype(config, method, device)
    scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16" else None
    if scaler is not None and state is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    writer = distributed.is_writer()
    progress = progress and writer
    for epoch in range(len(history), config.epochs):
        if _stopped_early(history, config, name):
            break
        if rank > 0:  # other processes draw their own dropout masks and crops, per epoch
            torch.manual_seed(_rank_seed(config.seed, rank, epoch))
            if getattr(labelled, "generator", None) is not None:
                labelled.generator.manual_seed(_rank_seed(config.seed + 1, rank, epoch))
        labelled_order = _EpochOrder(len(labelled), count, generator, labelled.index_device)
        if target is not None:  # the target's passes follow the labelled ones in the sequence
            target_generator = torch.Generator()
            target_generator.set_state(_state_after_passes(generator, len(labelled),
                                                           labelled_order.passes_left))
            target_order = _EpochOrder(len(target), count, target_generator, target.index_device)
        sums: dict[str, torch.Tensor | float] = defaultdict(float)
        data_seconds = 0.0
        started = time.perf_counter()
        description = f"{method.name} epoch {epoch + 1}/{config.epochs}"
        bar = tqdm(range(steps_per_epoch), desc=description, unit="step", leave=False,
                   disable=not progress, mininterval=0.5)
        feed = step_batches(labelled, target, _plan(steps_per_epoch, global_batch, count, labelled_order,
                                                    target_order if target is not None else None,
                                                    rank, world), epoch)
        for step in bar:
            global_step = epoch * steps_per_epoch + step
            progress_p = global_step / total_steps
            learning_rate = (config.learning_rate if config.schedule == "constant"
                             else annealed_learning_rate(progress_p, config.learning_rate))
            for group in optimizer.param_groups:
                group["lr"] = learning_rate * group.get("lr_scale", 1.0)
            data_start = time.perf_counter()
            fed = next(feed)
            if fed is None:
                continue
            chosen, images, target_images = fed
            labels = data.labels[chosen].to(device, non_blocking=True)
            data_seconds += time.perf_counter() - data_start

            with (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                  else contextlib.nullcontext()):
                values = step_losses(images, labels, target_images, progress_p)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:  # fp16: the loss scaled up so small gradients survive
                scaler.scale(values["loss"]).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                values["loss"].backward()
                optimizer.step()
            if average is not None:
                average.update_parameters(method)
            for key, value in values.items():  # summed where they are: no wait per step
                sums[key] = sums[key] + value.detach().double()
            if progress and step % STEP_EVERY == 0:
                bar.set_postfix({k: f"{float(v) / (step + 1):.3f}" for k, v in sums.items()
                                 if k != "grl_coefficient"})
            if log is not None and global_step % STEP_EVERY == 0:
                log.step(global_step + 1, {**{k: float(v.detach()) for k, v in values.items()},
                                           "learning_rate": learning_rate})
        feed.close()  # a streamed epoch's workers stop (every step was read)
        if target is not None:
            generator.set_state(target_generator.get_state())
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the clock stops when the device's work is done
        seconds = time.perf_counter() - started
        record: dict[str, Any] = {"epoch": epoch + 1}
        if stage is not None:
            record["stage"] = stage
        record.update({k: float(v) / steps_per_epoch for k, v in sums.items()})
        _stop_unless_finite(record, method, trained_state(), average, epoch, steps_per_epoch, config,
                            len(history), checkpoint_path)
        record.update({
            "learning_rate": learning_rate,
            "seconds": seconds,
            "images_per_second": count * (2 if target is not None else 1) / seconds,
            "data_fraction": data_seconds / seconds,
        })
        if data.monitor is not None:
            assert data.monitor_labels is not None
            accuracy, loss, _ = scores(method, data.monitor, data.monitor_labels, data.eval_batch_size)
            record[f"{name}_accuracy"], record[f"{name}_loss"] = accuracy, loss
            if average is not None:
                record["average_val_accuracy"] = scores(average.module, data.monitor,
                                                        data.monitor_labels, data.eval_batch_size)[0]
        # under torchrun every process goes on from rank 0's record (its share's losses, its
        # evaluation), so that choosing and stopping are decided alike everywhere
        record = distributed.broadcast_object(record)  # type: ignore[assignment]
        if config.selection == "best" and _better(record, best, name):
            best = record
            best_state = {k: v.detach().clone() for k, v in trained_state().items()}
        history.append(record)
        if log is not None:
            log.epoch((epoch + 1) * steps_per_epoch, record)
        if run_dir is not None and writer:
            assert checkpoint_path is not None
            snapshot = {"model": trained_state(), "optimizer": optimizer.state_dict(),
                        "generator": generator.get_state(), "history": history,
                        "config": asdict(config), "wall_seconds": clock.total(),
                        "torch_rng": torch.get_rng_state(), "world_size": world}
            if device.type == "cuda":
                snapshot["cuda_rng"] = torch.cuda.get_rng_state(device)
            if frozen_digest is not None:
                snapshot["frozen_digest"] = frozen_digest
            if average is not None:
                snapshot["average"] = average.state_dict()
            if best_state is not None:
                snapshot["best"] = best_state
            if scaler is not None:
                snapshot["scaler"] = scaler.state_dict()
            if hasattr(labelled, "state") and labelled.state() is not None:
                snapshot["inputs"] = labelled.state()
            if keep_epochs:
                model = average.module if average is not None else method
                (run_dir / EPOCHS_FOLDER).mkdir(exist_ok=True)
                save_tensors(run_dir / EPOCHS_FOLDER / f"epoch-{epoch + 1}.safetensors",
                             model.state_dict())
            save_checkpoint(checkpoint_path, snapshot)
            _write_lines(run_dir / METRICS_LINES, earlier + history)
        clock.trained = True
        if progress:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in record.items()
                              if k not in ("epoch", "stage"))
            tqdm.write(f"{description}: {shown}")
    if best_state is not None:
        load_trained(best_state)  # the selected epoch's weights
    return history


def _write_lines(path: Path, history: list[dict[str, Any]]) -> None:
    """``metrics.jsonl``: one line per finished epoch, the whole file replaced at once."""
    write_text(path, "".join(json.dumps(h) + "\n" for h in history))


def _stop_unless_finite(record: dict[str, Any], method: Method, weights: dict[str, torch.Tensor],
                        average: AveragedModel | None,
                        epoch: int, steps_per_epoch: int, config: TrainConfig, kept: int,
                        checkpoint_path: Path | None) -> None:
    """Raise :class:`NonFiniteError` if an epoch's mean losses (``record``) or the weights
    after it are not finite; called before the epoch is evaluated or checkpointed."""
    bad_losses = [key for key, value in record.items()
                  if key not in ("epoch", "stage") and not math.isfinite(value)]
    tensors = {f"weight {name}": value for name, value in weights.items()}
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
        f"{config.epochs * steps_per_epoch}) of {method.name} at {getattr(method, 'lr_flag', '--lr')} "
        f"{config.learning_rate:g}; "
        f"{kept_text}")
