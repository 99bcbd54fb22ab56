"""Atomic checkpoints that load with ``weights_only=True`` (no unpickling of code)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".part")
    torch.save(state, partial)
    os.replace(partial, path)  # a crash mid-write leaves the previous checkpoint intact


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
