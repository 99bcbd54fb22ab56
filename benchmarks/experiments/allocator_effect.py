"""What keeping freed memory (glibc ``mallopt``) buys a CPU training step: an experiment.

    python benchmarks/experiments/allocator_effect.py [--steps 150] [--repeats 5] [--threads 2]
    python benchmarks/experiments/allocator_effect.py --real-data --steps 300 --repeats 6

Each measurement is a fresh process, alternately with ``TRANSFERKIT_KEEP_FREED_MEMORY=0``
(glibc's defaults) and with the settings on: the MNIST network's first convolution, forward
and backward on 128 images (milliseconds), and transferkit's DANN step (``DANN.losses``,
backward, SGD with momentum; 64 + 64 random channels-last images) in source+target images/s,
with the process's peak resident memory. Medians over ``--repeats`` processes per setting.
``--real-data``: instead, :func:`transferkit.training.fit` (DANN) on MNIST → MNIST-M from the
data root, as ``step_throughput.py`` measures it (images/s of the whole epoch loop).

The settings: blocks under 32 MB from the heap instead of ``mmap``, and no trimming of the
heap, so buffers freed by one step are reused by the next instead of coming back from the
kernel as fresh zeroed pages. They make the isolated convolution and step faster but not
transferkit's ``fit`` on real data (README, "Speed"), so transferkit does not apply them;
``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483647`` in the environment
applies them to any run.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import resource
import statistics
import subprocess
import sys

# mallopt's parameter numbers, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks under 32 MB; True when applied (False off glibc, or
    when ``TRANSFERKIT_KEEP_FREED_MEMORY=0``)."""
    if os.environ.get("TRANSFERKIT_KEEP_FREED_MEMORY", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return False
    if libc is None or not hasattr(libc, "gnu_get_libc_version"):  # glibc only
        return False
    return (libc.mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1
            and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1)


def child_real_data(steps: int) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from step_throughput import transferkit_rate

    from transferkit.data import load_pair

    applied = keep_freed_memory()  # before the data is loaded, as at a run's start
    pair = load_pair("mnist", "mnist_m", size=28, binarize_source=True)
    rate = transferkit_rate(pair, steps)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"applied": applied, "conv1_ms": 0.0, "images_per_second": rate,
                      "peak_mb": peak_mb}))


def child(steps: int) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch
    from conv_layer_times import milliseconds
    from step_throughput import images_per_second
    from torch import nn

    from transferkit.methods import DANN
    from transferkit.models import DigitNetwork

    applied = keep_freed_memory()
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 32, 5)
    images = torch.randn(128, 3, 28, 28)

    def convolution() -> None:
        out = conv(images)
        out.backward(torch.ones_like(out))

    conv_ms = milliseconds(convolution)  # 5 warm-up calls, then the mean of 30

    method = DANN(DigitNetwork("mnist", 10, 28)).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
    source = torch.randn(64, 3, 28, 28).contiguous(memory_format=torch.channels_last)
    target = torch.randn(64, 3, 28, 28).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (64,))
    method.train()

    def step() -> None:
        values = method.losses(source, labels, target, 0.5)
        optimizer.zero_grad(set_to_none=True)
        values["loss"].backward()
        optimizer.step()

    rate = images_per_second(step, steps)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"applied": applied, "conv1_ms": conv_ms, "images_per_second": rate,
                      "peak_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--real-data", action="store_true",
                        help="time transferkit's fit on MNIST -> MNIST-M instead")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        (child_real_data if args.real_data else child)(args.steps)
        return
    results: dict[str, list[dict]] = {"glibc defaults": [], "keep freed memory": []}
    for _ in range(args.repeats):
        for name, flag in (("glibc defaults", "0"), ("keep freed memory", "1")):
            env = dict(os.environ, TRANSFERKIT_KEEP_FREED_MEMORY=flag,
                       OMP_NUM_THREADS=str(args.threads))
            out = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps),
                                  *(["--real-data"] if args.real_data else [])],
                                 env=env, check=True, capture_output=True, text=True).stdout
            results[name].append(json.loads(out.strip().splitlines()[-1]))
    from transferkit.training.device import describe_machine

    print(describe_machine(threads=f"{args.threads} threads"))
    for name, runs in results.items():
        applied = {run["applied"] for run in runs}
        conv = [run["conv1_ms"] for run in runs]
        rate = [run["images_per_second"] for run in runs]
        peak = [run["peak_mb"] for run in runs]
        conv_text = "" if args.real_data else (
            f"conv1 f+b median {statistics.median(conv):.1f} ms "
            f"({', '.join(f'{v:.1f}' for v in conv)}); ")
        print(f"{name} (applied: {sorted(applied)}): {conv_text}"
              f"{'fit' if args.real_data else 'DANN step'} median "
              f"{statistics.median(rate):.0f} images/s ({', '.join(f'{v:.0f}' for v in rate)}); "
              f"peak RSS median {statistics.median(peak):.0f} MB")


if __name__ == "__main__":
    main()
