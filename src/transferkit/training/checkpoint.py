"""Atomic checkpoints that load with ``weights_only=True`` (no unpickling of code)."""

from __future__ import annotations

import hashlib
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


DIGEST = "sha256"


def content_digest(value: Any, digest: Any = None) -> str:
    """SHA-256 of a checkpoint's contents: every tensor's dtype, shape and bytes, every other
    value's repr, in key order. torch's zip reader checks no CRC, so a flipped bit in a tensor
    would load silently without it."""
    digest = hashlib.sha256() if digest is None else digest
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode())
            content_digest(value[key], digest)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__}{len(value)}".encode())
        for item in value:
            content_digest(item, digest)
    else:
        digest.update(repr(value).encode())
    return digest.hexdigest()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``state`` as ``path``, whole or not at all: a crash or a full disk mid-write leaves the
    previous checkpoint intact (and a full disk is one line naming the file). The state carries
    the SHA-256 of its contents (:func:`content_digest`), checked on loading.

    The state is serialized in memory first: torch's zip writer, handed a file that fails,
    replaces the ``OSError`` with an unspecific ``RuntimeError`` as it closes.
    """
    buffer = io.BytesIO()
    torch.save({**state, DIGEST: content_digest(state)}, buffer)
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
    saved = state.pop(DIGEST, None)  # checkpoints written before the digest have none
    if saved is not None and saved != content_digest(state):
        raise corrupt_checkpoint(path, "its contents do not match the SHA-256 saved with them: "
                                       "the file was damaged after it was written")
    return state
