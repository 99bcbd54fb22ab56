"""Forward + backward time of the MNIST network's two convolutions, one thread, 128 images.

    python benchmarks/experiments/conv_layer_times.py

Prints milliseconds per 128-image step for conv1 (3→32, 5×5, 28×28 input; no input gradient)
and conv2 (32→48, 5×5, 12×12 input), channels-last and NCHW — the floor under a DANN step.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn


def milliseconds(fn, repeats: int = 30) -> float:
    for _ in range(5):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def measure(layout: torch.memory_format) -> None:
    conv1 = nn.Conv2d(3, 32, 5).to(memory_format=layout)
    conv2 = nn.Conv2d(32, 48, 5).to(memory_format=layout)
    images = torch.randn(128, 3, 28, 28).contiguous(memory_format=layout)
    hidden = torch.randn(128, 32, 12, 12).contiguous(memory_format=layout).requires_grad_()

    def first() -> None:
        out = conv1(images)
        out.backward(torch.ones_like(out))

    def first_pooled() -> None:
        out = F.max_pool2d(conv1(images), 2)
        out.backward(torch.ones_like(out))

    def second() -> None:
        out = conv2(hidden)
        out.backward(torch.ones_like(out))

    name = "channels_last" if layout is torch.channels_last else "nchw"
    print(f"{name}: conv1 f+b {milliseconds(first):.2f} ms, conv1+pool f+b "
          f"{milliseconds(first_pooled):.2f} ms, conv2 f+b {milliseconds(second):.2f} ms")


def main() -> None:
    torch.set_num_threads(1)
    for layout in (torch.channels_last, torch.contiguous_format):
        measure(layout)


if __name__ == "__main__":
    main()
