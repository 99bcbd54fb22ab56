"""First (decode) and later (cached) load time of MNIST-M train; run with the mirror present.

    python benchmarks/experiments/cache_timing.py [--fresh]

``--fresh`` points the cache at a new temporary folder so the first load really decodes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="start from an empty cache")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.fresh:
        os.environ["TRANSFERKIT_CACHE"] = tempfile.mkdtemp(prefix="transferkit-cache-")
    from transferkit.data import load_split

    start = time.perf_counter()
    first = np.array(load_split("mnist_m", "train").images)
    print(f"first load: {time.perf_counter() - start:.3f} s  {first.shape}")
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        np.array(load_split("mnist_m", "train").images)
        times.append(time.perf_counter() - start)
    print(f"cached load + copy into memory: median {statistics.median(times):.3f} s "
          f"over {args.repeats}")


if __name__ == "__main__":
    main()
