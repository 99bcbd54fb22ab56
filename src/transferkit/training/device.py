"""Pick the device: ``auto`` is CUDA when available, else the CPU; and name the machine."""

from __future__ import annotations

import platform
from pathlib import Path

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


def processor_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: torch.device | None = None, threads: str = "") -> str:
    """What a measurement ran on: the processor, ``threads`` (a phrase such as "2 threads",
    if given), torch's version, and the GPU's name when ``device`` is CUDA (or, with no device
    given, when one is present)."""
    parts = [processor_name(), *([threads] if threads else []), f"torch {torch.__version__}"]
    on_gpu = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if on_gpu:
        parts.append(f"GPU {torch.cuda.get_device_name(device)}")
    return ", ".join(parts)
