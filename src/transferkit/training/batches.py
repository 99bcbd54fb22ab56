"""Where the training loop's batches come from: the data decide, not the method.

Each kind of *inputs* holds one split and gives the network-ready float batch of any index
tensor, ``batch(index, epoch)``, with ``index`` on its ``index_device``:

- :class:`InMemory`: uint8 images in memory (on the training device for training), normalized
  per batch in one vectorized step — the paper's digit networks;
- :class:`CachedInputs`: the frozen prefix's outputs, computed once per augmented view
  (:mod:`transferkit.training.activations`); epoch ``e`` reads view ``e mod V`` — feature
  extraction and fine-tuning on a CPU;
- :class:`OnlineInputs`: uint8 images cropped (randomly, with flips, when given a generator)
  and run through the frozen prefix at every step;
- :class:`Streamed`: uint8 images memory-mapped from a file (a pair too large for memory,
  :mod:`transferkit.data.pairs`), read in DataLoader workers ahead of the step that needs them
  and then normalized exactly as :class:`InMemory` normalizes them.

:func:`step_batches` gives the training loop each step's batches from the sample order it
draws: the same indices, hence the same batches, whichever kind of inputs holds the images.

:class:`FitData` bundles what :func:`transferkit.training.loop.fit` trains on: the labelled
inputs and labels, optional unlabelled target inputs, and the labelled split it watches.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch


class Inputs(Protocol):
    index_device: torch.device

    def __len__(self) -> int: ...

    def batch(self, index: torch.Tensor, epoch: int) -> torch.Tensor: ...


class InMemory:
    """uint8 N×C×H×W ``images`` → ``normalize(images[index])`` on ``device``, channels-last
    (faster oneDNN convolutions on the CPU)."""

    def __init__(self, images: torch.Tensor, normalize: Any, device: torch.device) -> None:
        self.images, self.normalize, self.device = images, normalize, device
        self.index_device = images.device

    def __len__(self) -> int:
        return len(self.images)

    def finish(self, rows: torch.Tensor) -> torch.Tensor:
        """uint8 rows → the network's batch."""
        batch = self.normalize(rows.to(self.device, non_blocking=True))
        return batch.contiguous(memory_format=torch.channels_last)

    def batch(self, index: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        return self.finish(self.images[index])

    def slice(self, start: int, stop: int) -> torch.Tensor:
        """``batch`` of ``range(start, stop)``, without an index (inference)."""
        return self.finish(self.images[start:stop])


# DataLoader workers reading a streamed split, and the batches each keeps read ahead
STREAM_WORKERS = 2
STREAM_PREFETCH = 4


class Streamed(InMemory):
    """uint8 N×C×H×W ``images`` memory-mapped from ``path`` → the batch :class:`InMemory` gives
    (``normalize(images[index])`` on ``device``, channels-last), for splits larger than memory.

    :func:`step_batches` reads the rows of a step in ``workers`` DataLoader worker processes,
    ahead of time, into pinned memory on a GPU run; :meth:`batch` (and :meth:`slice`, for
    inference) reads them in the calling process. Either way only the rows asked for are read
    from the file (through the page cache), and augmentation, which methods apply to the
    normalized batch, is the same as in memory."""

    def __init__(self, images: torch.Tensor, path: Path, normalize: Any, device: torch.device,
                 workers: int | None = None) -> None:
        super().__init__(images, normalize, device)  # a memory-mapped tensor: indexed on the CPU
        self.path = Path(path)
        self.workers = STREAM_WORKERS if workers is None else workers


class _Rows(torch.utils.data.Dataset):
    """What a DataLoader worker reads for a step: the rows of each streamed split at the step's
    indices. It holds the files' paths only; each process maps them itself on first use (so a
    spawned worker is not sent the data)."""

    def __init__(self, paths: list[Path | None]) -> None:
        self.paths = paths
        self.arrays: list[np.ndarray | None] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"paths": self.paths, "arrays": None}

    def __getitem__(self, item: Any) -> Any:
        if item is None:  # a step this process skips (a last partial batch under torchrun)
            return None
        if self.arrays is None:
            self.arrays = [np.load(p, mmap_mode="r") if p is not None else None for p in self.paths]
        return [torch.from_numpy(array[index]) if array is not None and index is not None else None
                for index, array in zip(item, self.arrays, strict=True)]


def stream_workers() -> int:
    """DataLoader workers for a streamed split: none inside a daemonic process (a worker of the
    benchmark's ``--jobs`` pool may not start processes of its own), where the main process
    reads the rows itself."""
    return 0 if multiprocessing.current_process().daemon else STREAM_WORKERS


def step_batches(labelled: Inputs, target: Inputs | None,
                 plan: Iterable[tuple[torch.Tensor, torch.Tensor | None] | None], epoch: int,
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None]:
    """For each step of ``plan`` — ``(labelled index, target index or None)``, or None for a
    step to skip — ``(labelled index, labelled batch, target batch or None)``, or None.

    Inputs in memory are gathered when the step asks; :class:`Streamed` inputs are read by
    DataLoader workers running ahead through the plan (``plan`` is consumed ahead of the steps,
    in order, so the sample order drawn is the same)."""
    sides = [labelled, target]
    streamed = [isinstance(x, Streamed) for x in sides]
    if not any(streamed):
        for item in plan:
            if item is None:
                yield None
                continue
            chosen, target_chosen = item
            yield (chosen, labelled.batch(chosen, epoch),
                   target.batch(target_chosen, epoch) if target is not None and target_chosen is not None
                   else None)
        return
    workers = min(x.workers for x, s in zip(sides, streamed, strict=True) if s)
    workers = 0 if stream_workers() == 0 else workers
    first = next(x for x, s in zip(sides, streamed, strict=True) if s)
    indices: deque[tuple[torch.Tensor, torch.Tensor | None] | None] = deque()  # steps read ahead

    def send(items: Iterable[tuple[torch.Tensor, torch.Tensor | None] | None]) -> Iterator[Any]:
        for item in items:  # workers are sent numpy indices (tensors would travel as shared memory)
            indices.append(item)
            yield None if item is None else tuple(i.numpy() if i is not None and s else None
                                                  for i, s in zip(item, streamed, strict=True))

    loader = torch.utils.data.DataLoader(
        _Rows([x.path if s else None for x, s in zip(sides, streamed, strict=True)]),
        sampler=send(plan), batch_size=None, num_workers=workers,
        prefetch_factor=STREAM_PREFETCH if workers else None,
        pin_memory=first.device.type == "cuda",
        # its own generator for the workers' seeds: a draw from torch's global one would change
        # the dropout masks that follow, and the run would no longer be the in-memory one
        generator=torch.Generator().manual_seed(0))
    iterator = iter(loader)
    try:
        for read in iterator:
            item = indices.popleft()
            if item is None:
                yield None
                continue
            out = [None if index is None else side.finish(rows) if is_streamed else side.batch(index, epoch)
                   for side, is_streamed, index, rows in zip(sides, streamed, item, read, strict=True)]
            yield item[0], out[0], out[1]
    finally:
        del iterator  # its workers stop here, not when the collector finds it


class CachedInputs:
    """Prefix outputs computed beforehand (on the CPU); epoch ``e`` reads view ``e mod V``."""

    index_device = torch.device("cpu")

    def __init__(self, views: list[torch.Tensor], device: torch.device) -> None:
        self.views, self.device = views, device

    def __len__(self) -> int:
        return len(self.views[0])

    def batch(self, index: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        view = self.views[epoch % len(self.views)]
        batch = view[index].to(self.device, non_blocking=True).float()
        # feature maps channels-last, as the loop keeps the network's weights
        return batch.contiguous(memory_format=torch.channels_last) if batch.ndim == 4 else batch


class OnlineInputs:
    """uint8 images cropped (randomly when ``generator`` is given) and run through the frozen
    prefix ``backbone.stages[:split]`` at every step. ``generator`` is part of a run's state:
    :meth:`state` and :meth:`load_state` let a resumed run draw the same crops."""

    index_device = torch.device("cpu")

    def __init__(self, images: torch.Tensor, backbone: Any, split: int, size: int,
                 device: torch.device, generator: torch.Generator | None, flip: bool = True) -> None:
        self.images, self.backbone, self.split, self.size = images, backbone, split, size
        self.device, self.generator, self.flip = device, generator, flip

    def __len__(self) -> int:
        return len(self.images)

    def state(self) -> torch.Tensor | None:
        return self.generator.get_state() if self.generator is not None else None

    def load_state(self, state: torch.Tensor | None) -> None:
        if self.generator is not None and state is not None:
            self.generator.set_state(state)

    def batch(self, index: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        from transferkit.data import imaging

        batch = self.images[index]
        batch = (imaging.augment(batch, self.size, self.generator, self.flip)
                 if self.generator is not None else imaging.center(batch, self.size))
        spec = self.backbone.spec
        x = imaging.normalize(batch.to(self.device), spec.mean, spec.std)
        x = x.contiguous(memory_format=torch.channels_last)
        if self.split == 0:
            return x
        with torch.no_grad():
            return self.backbone(x, 0, self.split)


@dataclass
class FitData:
    """What one :func:`~transferkit.training.loop.fit` trains on.

    ``labels`` lie on ``labelled.index_device``. ``monitor`` (with ``monitor_labels``) is the
    labelled split watched after each epoch, logged as ``{monitor_name}_accuracy`` and
    ``{monitor_name}_loss`` (never target-test data). ``eval_batch_size`` is the inference
    batch of that evaluation (None: the loop's default for the device).
    """

    labelled: Inputs
    labels: torch.Tensor
    target: Inputs | None = None
    monitor: Inputs | None = None
    monitor_labels: torch.Tensor | None = None
    monitor_name: str = "source_val"
    eval_batch_size: int | None = None


@torch.no_grad()
def prefix_outputs(backbone: Any, split: int, inputs: InMemory, batch_size: int = 256,
                   progress: bool = False, label: str = "") -> torch.Tensor:
    """``backbone.stages[:split]`` applied once to every image of ``inputs`` (in inference
    mode: frozen stages keep their BatchNorm statistics), kept on the CPU in float32."""
    was_training = backbone.training
    backbone.eval()
    chunks = []
    starts = range(0, len(inputs), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"frozen prefix {label}".strip(), unit="batch", leave=False)
    for start in starts:
        batch = inputs.slice(start, min(start + batch_size, len(inputs)))
        chunks.append(backbone(batch, 0, split).float().cpu())
    backbone.train(was_training)
    return torch.cat(chunks)


def prefix_bytes(backbone: Any, split: int, image: torch.Tensor, count: int) -> int:
    """Bytes that ``count`` images' prefix outputs take (from one ``image``, C×H×W float)."""
    with torch.no_grad():
        was_training = backbone.training
        one = backbone.eval()(image[None], 0, split)
        backbone.train(was_training)
    return one.numel() * 4 * count


PREFIX_CACHE_VERSION = 1


def prefix_key(backbone: Any, split: int, inputs: InMemory, device: torch.device) -> str:
    """What a split's prefix outputs depend on, hashed: the frozen stages' weights and
    statistics, the images' pixels, what the split's normalization makes of black and white, the
    device type and the torch version (a GPU's sums round differently from a CPU's)."""
    import hashlib

    from transferkit.data.imaging import identity
    from transferkit.training.checkpoint import content_digest

    digest = hashlib.sha256(f"prefix v{PREFIX_CACHE_VERSION} {backbone.spec.name} {split} "
                            f"{device.type} torch {torch.__version__}".encode())
    digest.update(repr(backbone.stages[:split]).encode())  # the layers' settings, not only weights
    content_digest([backbone.stages[i].state_dict() for i in range(split)], digest)
    shape = inputs.images.shape[1:]
    probe = torch.stack([torch.zeros(shape, dtype=torch.uint8), torch.full(shape, 255, dtype=torch.uint8)])
    content_digest(inputs.normalize(probe.to(inputs.device)).float().cpu(), digest)
    digest.update(identity(inputs.images.cpu()).encode())
    return digest.hexdigest()[:24]


def disk_prefix(backbone: Any, split: int, inputs: Any, device: torch.device,
                 progress: bool, label: str) -> torch.Tensor:
    """:func:`prefix_outputs`, kept on disk (``$TRANSFERKIT_CACHE/activations/prefix-KEY.npy``)
    so that another run on the same images and frozen stages — another method, another seed —
    reads them instead of running the stages again. A cache that cannot be read or written is
    skipped, never fatal."""
    import numpy as np

    from transferkit.data.root import cache_dir
    from transferkit.training.activations import save_atomic

    if not isinstance(inputs, InMemory) or isinstance(inputs, Streamed):
        return prefix_outputs(backbone, split, inputs, progress=progress, label=label)
    path = cache_dir() / "activations" / f"prefix-{prefix_key(backbone, split, inputs, device)}.npy"
    try:
        kept = torch.from_numpy(np.load(path))
        was_training = backbone.training
        with torch.no_grad():  # what one image must give
            one = backbone.eval()(inputs.slice(0, 1), 0, split)
        backbone.train(was_training)
        if kept.dtype == torch.float32 and kept.shape == (len(inputs), *one.shape[1:]):
            return kept
    except (OSError, ValueError, EOFError):
        pass
    outputs = prefix_outputs(backbone, split, inputs, progress=progress, label=label)
    with contextlib.suppress(OSError):
        save_atomic(path, outputs.numpy())
    return outputs


def with_cached_prefix(data: FitData, backbone: Any, split: int, device: torch.device,
                       progress: bool = False) -> FitData:
    """``data`` with every split replaced by its frozen prefix's outputs (computed once, and
    kept on disk for the next run on the same images: :func:`disk_prefix`): a network whose
    ``stages[:split]`` are frozen then runs only the rest at each step."""

    def cache(inputs: Any, label: str) -> CachedInputs | None:
        if inputs is None:
            return None
        return CachedInputs([disk_prefix(backbone, split, inputs, device, progress, label)], device)

    return FitData(cache(data.labelled, "labelled"), data.labels.cpu(), cache(data.target, "target"),
                   cache(data.monitor, "monitor"), data.monitor_labels, data.monitor_name,
                   data.eval_batch_size)
