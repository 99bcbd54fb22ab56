"""Atomic checkpoints that load with ``weights_only=True`` (no unpickling of code)."""

from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from transferkit.errors import TransferkitError
from transferkit.training.runfolder import replace_file

RESTART_ADVICE = ("rerun with --restart to discard it (and the run's metrics) and train this run "
                  "from the start, or remove the folder")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``state`` as ``path``, whole or not at all: a crash or a full disk mid-write leaves the
    previous checkpoint intact (and a full disk is one line naming the file).

    The state is serialised in memory first: torch's zip writer, handed a file that fails,
    replaces the ``OSError`` with an unspecific ``RuntimeError`` as it closes.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    replace_file(path, lambda handle: handle.write(buffer.getbuffer()))


def corrupt_checkpoint(path: Path, detail: str) -> TransferkitError:
    return TransferkitError(f"{path}: corrupt or truncated checkpoint ({detail}); {RESTART_ADVICE}")


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (``None`` if there is none), or one line naming the file when
    it is unreadable: truncated, corrupt, or not a checkpoint."""
    if not path.is_file():
        return None
    try:
        with warnings.catch_warnings():  # a damaged file can draw warnings before the error
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError, KeyError,
            IndexError, TypeError, AttributeError, zipfile.BadZipFile) as exc:
        detail = str(exc).splitlines()[0].split(". ")[0][:100] if str(exc).strip() else ""
        raise corrupt_checkpoint(path, f"{type(exc).__name__}{': ' + detail if detail else ''}") \
            from None
    expected = ("model", "optimizer", "generator", "history")
    if not isinstance(state, dict) or any(key not in state for key in expected):
        raise corrupt_checkpoint(path, f"not a transferkit checkpoint: expected the keys "
                                       f"{', '.join(expected)}")
    return state
