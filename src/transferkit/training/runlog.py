"""Watching a run as it trains: ``--log tensorboard``.

The run folder already keeps every epoch's metrics (``metrics.jsonl``); a log adds what
practitioners watch live in TensorBoard: the step losses (every :data:`STEP_EVERY` steps, and
the domain classifier's accuracy where a method has one), the learning rate, and each epoch's
metrics. Off by default; TensorBoard is an optional dependency (``pip install
'transferkit[tensorboard]'``). Events go to ``RUN_DIR/tensorboard/``: ``tensorboard --logdir
RUN_DIR/tensorboard`` (or a folder of run folders) shows them.

Reading a step's losses waits for the device, so a logged step costs one synchronization; the
loop reads them only every :data:`STEP_EVERY` steps, when its progress bar does too. A resumed
run appends to the same folder from where its checkpoint left off; steps logged after that
checkpoint by the interrupted run are written again (TensorBoard shows the later values).
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Protocol

from transferkit.errors import TransferkitError

LOGS = ("none", "tensorboard")
STEP_EVERY = 20
FOLDER = "tensorboard"
INSTALL = "pip install 'transferkit[tensorboard]'"


class RunLog(Protocol):
    def step(self, step: int, values: dict[str, float]) -> None: ...

    def epoch(self, step: int, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class TensorBoardLog:
    """Scalars under ``train/`` (per logged step) and ``epoch/`` (per epoch), with ``prefix``
    (a recipe's stage) before each name."""

    def __init__(self, folder: Path, prefix: str = "") -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TransferkitError(f"--log tensorboard needs the tensorboard package, not installed: "
                                   f"{INSTALL}") from None
        self.writer = SummaryWriter(log_dir=str(folder))
        self.prefix = f"{prefix}/" if prefix else ""

    def step(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"{self.prefix}train/{key}", value, step)

    def epoch(self, step: int, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, numbers.Real) and not isinstance(value, bool):
                self.writer.add_scalar(f"{self.prefix}epoch/{key}", float(value), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def check_log(kind: str | None) -> str | None:
    """``kind`` if it is one of :data:`LOGS` (``none`` → None), else one line."""
    if kind is None or kind == "none":
        return None
    if kind not in LOGS:
        raise TransferkitError(f"--log {kind}: expected one of {', '.join(LOGS)}")
    if kind == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise TransferkitError(f"--log tensorboard needs the tensorboard package, not installed: "
                                   f"{INSTALL}") from None
    return kind


def open_log(kind: str | None, run_dir: Path | None, prefix: str = "") -> RunLog | None:
    """The log ``kind`` of a run in ``run_dir`` (None: no log, or no run folder to keep it)."""
    from transferkit.training import distributed

    if check_log(kind) is None or run_dir is None or not distributed.is_writer():
        return None  # under torchrun rank 0 alone logs
    return TensorBoardLog(run_dir / FOLDER, prefix)
