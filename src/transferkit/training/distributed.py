"""Several processes, one run: ``torchrun … -m transferkit adapt|finetune|scratch|extract``.

torchrun starts the processes and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous; :func:`setup` joins them into PyTorch's process group (NCCL between GPUs, gloo
between CPUs) and :func:`transferkit.training.loop.fit` then trains under
``DistributedDataParallel``:

- ``--batch-size`` is each process's batch; the global batch is ``WORLD_SIZE`` times it. Every
  process draws the same global sample order from the run's seed and takes its own contiguous
  share of each global batch (source and target alike), so N processes of batch b see the
  batches one process of batch N·b sees, and average their gradients over them;
- BatchNorm layers become ``SyncBatchNorm`` (their statistics over the global batch, as in the
  one-process run of that batch); DDP broadcasts rank 0's initial weights, so every process
  starts, steps and keeps its weight average identically;
- only rank 0 writes the run folder (config, checkpoints, metrics, logs, the model) and holds
  its lock; the other ranks read the same checkpoint to resume, so a crashed run of any rank
  resumes by running the same torchrun command again.

One process (no torchrun, or ``WORLD_SIZE`` 1) changes nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

from transferkit.errors import TransferkitError


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_writer() -> bool:
    """Whether this process writes the run folder: the only one, or rank 0."""
    return rank() == 0


def setup(device: str) -> str:
    """Join torchrun's process group (once) when launched by it; returns the device this
    process trains on (``cuda`` becomes ``cuda:LOCAL_RANK``)."""
    if not launched():
        return device
    if not dist.is_available():
        raise TransferkitError("torchrun: this build of PyTorch has no torch.distributed")
    wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if wants_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise TransferkitError(f"torchrun: LOCAL_RANK {local} but {torch.cuda.device_count()} GPU(s) "
                                   "here; start at most one process per GPU (--nproc_per_node)")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if wants_cuda else "gloo")
        atexit.register(_leave)
    return device


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


@contextlib.contextmanager
def writer_only(context: contextlib.AbstractContextManager) -> Iterator[None]:
    """``context`` (a run folder's lock) on the writing rank; nothing on the others."""
    if is_writer():
        with context:
            yield
    else:
        yield


def broadcast_object(value: object) -> object:
    """Rank 0's ``value`` (any picklable object, such as a checkpoint it alone read) on every
    rank: the ranks decide from the same state even without a shared folder."""
    if not active():
        return value
    holder = [value if rank() == 0 else None]
    dist.broadcast_object_list(holder, 0)
    return holder[0]
