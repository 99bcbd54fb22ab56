"""Pick the device: ``auto`` is CUDA when available, else the CPU."""

from __future__ import annotations

import torch

from transferkit.errors import TransferkitError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise TransferkitError(f"--device {name}: expected auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TransferkitError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)
