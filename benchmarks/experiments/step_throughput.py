"""DANN training throughput on MNIST → MNIST-M: a plain PyTorch step versus transferkit's loop.

    python benchmarks/experiments/step_throughput.py [--steps 300] [--repeats 3] [--device cpu|cuda]
                                                     [--data-root DIR]

"plain" is the textbook step: NCHW float tensors, source and target through the network in
two forward passes, ReLU before max-pooling. "transferkit" is :func:`transferkit.training.fit`
with the DANN method on the real data (uint8 batches normalized on the fly); "transferkit +
EMA" the same with the weight average (``--ema-decay 0.999``) updated after every step. All
use the paper's MNIST network and 64 + 64 images a step; the median of ``--repeats`` is
printed. On a GPU the clock is read after the device has finished (``synchronize``), and the
data already lives on the device, as in training.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn


def plain_network() -> nn.ModuleDict:
    return nn.ModuleDict({
        "features": nn.Sequential(nn.Conv2d(3, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(32, 48, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()),
        "labels": nn.Sequential(nn.Linear(768, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(),
                                nn.Linear(100, 10)),
        "domain": nn.Sequential(nn.Linear(768, 100), nn.ReLU(), nn.Linear(100, 1)),
    })


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def images_per_second(step, steps: int, device: str = "cpu", warmup: int = 10,
                      images_per_step: int = 128) -> float:
    """Source+target images/s of ``steps`` calls of ``step`` after ``warmup`` calls (on a GPU
    the clock is read after the device has finished)."""
    for _ in range(warmup):
        step()
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronize(device)
    return steps * images_per_step / (time.perf_counter() - start)


def plain_rate(steps: int, device: str = "cpu") -> float:
    torch.manual_seed(0)
    net = plain_network().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    source = torch.randn(64, 3, 28, 28, device=device)
    target = torch.randn(64, 3, 28, 28, device=device)
    labels = torch.randint(0, 10, (64,), device=device)
    truth = torch.cat([torch.zeros(64, 1, device=device), torch.ones(64, 1, device=device)])

    def step() -> None:
        fs, ft = net["features"](source), net["features"](target)
        loss = F.cross_entropy(net["labels"](fs), labels)
        domain = torch.cat([net["domain"](_Reverse.apply(fs)), net["domain"](_Reverse.apply(ft))])
        loss = loss + F.binary_cross_entropy_with_logits(domain, truth)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return images_per_second(step, steps, device)


def transferkit_rate(pair, steps: int, ema_decay: float | None = None,
                     device: str = "cpu") -> float:
    from transferkit.methods import DANN
    from transferkit.models import DigitNetwork
    from transferkit.training import TrainConfig, fit
    from transferkit.training.loop import weight_average

    torch.manual_seed(0)
    method = DANN(DigitNetwork("mnist", 10, 28))
    config = TrainConfig(epochs=1, steps_per_epoch=steps, device=device)
    average = weight_average(method, ema_decay) if ema_decay is not None else None
    history = fit(method, pair, config, progress=False, average=average)
    return history[0]["images_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--data-root", default=None,
                        help="folder holding mnist/ and mnist_m/ (default: the data root)")
    args = parser.parse_args()
    from transferkit.data import load_pair
    from transferkit.training.device import describe_machine

    pair = load_pair("mnist", "mnist_m", size=28, binarize_source=True, data_root=args.data_root)
    print(describe_machine(torch.device(args.device),
                           threads=f"{torch.get_num_threads()} CPU threads"))
    for name, measure in (("plain PyTorch step", lambda: plain_rate(args.steps, args.device)),
                          ("transferkit fit (DANN)",
                           lambda: transferkit_rate(pair, args.steps, device=args.device)),
                          ("transferkit fit (DANN) + EMA",
                           lambda: transferkit_rate(pair, args.steps, ema_decay=0.999,
                                                    device=args.device))):
        rates = [measure() for _ in range(args.repeats)]
        print(f"{name}: median {statistics.median(rates):.0f} source+target images/s "
              f"(runs: {', '.join(f'{r:.0f}' for r in rates)})")


if __name__ == "__main__":
    main()
