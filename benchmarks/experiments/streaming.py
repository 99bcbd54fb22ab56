"""The streaming path's data wait against the in-memory path's (issue 23): DANN on MNIST →
MNIST-M (the offline mirror), the same steps from the same seed four ways — in memory;
streamed from the memory-mapped common form with its file in the page cache (warm); streamed
with the files evicted from the page cache first (``posix_fadvise(DONTNEED)``, cold); and
streamed warm but read in the training process itself (no DataLoader workers, as inside the
benchmark's ``--jobs`` pool). Per run: the share of step time spent waiting for data
(``data_fraction``), ms per step and training images/s; medians over ``--repeats`` rounds, the
ways alternated within each round.

    OMP_NUM_THREADS=1 python benchmarks/experiments/streaming.py --steps 300 --repeats 3 \\
        --out benchmarks/results/streaming

Streaming is forced with ``TRANSFERKIT_MEMORY_BUDGET=0``; the common forms are kept under
``$TRANSFERKIT_CACHE/common/`` as any streamed run keeps them.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

WAYS = ("in memory", "streamed, warm page cache", "streamed, evicted from page cache",
        "streamed, warm, no workers")


def evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache (pages no process maps)."""
    for path in paths:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def read_seconds(paths: list[Path]) -> float:
    """Seconds to read the files through, 1 MiB at a time."""
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as handle:
            while handle.read(1 << 20):
                pass
    return time.perf_counter() - start


def train(steps: int, seed: int) -> tuple[dict, bool, list[Path]]:
    from transferkit import DomainAdapter

    cpu, wall = time.process_time(), time.perf_counter()
    adapter = DomainAdapter(method="dann", epochs=1, steps_per_epoch=steps, batch_size=64, seed=seed,
                            device="cpu", binarize_source=True, progress=False).fit("mnist", "mnist_m")
    record = adapter.history_[0]
    pair = adapter.pair_
    paths = [s.path for s in (pair.source_train, pair.target_train) if s.path is not None]
    result = {"data_fraction": record["data_fraction"], "ms_per_step": 1000 * record["seconds"] / steps,
              "images_per_second": record["images_per_second"], "seconds": record["seconds"],
              "class_loss": record["class_loss"],
              # of one core, the training process alone (workers not counted), load and epoch
              "process_cpu_share": (time.process_time() - cpu) / (time.perf_counter() - wall)}
    return result, pair.streamed, paths


def report(args, runs, rounds, load_before, started, size, cold_read, warm_read, default_workers) -> None:
    """Write OUT.json and OUT.md from the rounds finished so far."""
    import torch

    from transferkit.training.device import describe_machine

    load_after = os.getloadavg()

    def median(way: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[way])

    losses = {way: sorted({round(r["class_loss"], 12) for r in rs}) for way, rs in runs.items()}
    summary = {
        "question": "the streaming path's data wait against the in-memory path's (issue 23)",
        "command": "OMP_NUM_THREADS=1 python benchmarks/experiments/streaming.py " + " ".join(sys.argv[1:]),
        "machine": describe_machine(torch.device("cpu"), f"{torch.get_num_threads()} thread(s)"),
        "cpu_cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "load_average_before": load_before, "load_average_after": load_after,
        "niceness": os.nice(0),
        "lowest_cpu_share": min(r["process_cpu_share"] for rs in runs.values() for r in rs),
        "budget": f"DANN, MNIST (binarized) → MNIST-M, 1 epoch of {args.steps} steps of 64 + 64 images, "
                  f"seed 0, {default_workers} DataLoader workers where streamed",
        "training_files_mb": size / 1e6,
        "read_seconds_after_eviction": cold_read, "read_seconds_warm": warm_read,
        "runs": runs,
        "medians": {way: {key: median(way, key) for key in ("data_fraction", "ms_per_step",
                                                              "images_per_second")} for way in WAYS},
        "class_loss_per_way": losses,
        "wall_seconds": time.perf_counter() - started,
    }
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [
        "# Streaming against in memory: data wait (issue 23)", "",
        f"{summary['budget']}; medians over {rounds} of {args.repeats} rounds, the four ways "
        "alternated in each round. Data wait: the share of the epoch's time the loop spent "
        "getting its batches.", "",
        f"Machine: {summary['machine']}, {os.cpu_count()} cores, niceness {summary['niceness']}. "
        + ("**The CPU was shared**: the training process got as little as "
           f"{summary['lowest_cpu_share']:.0%} of a core in some run. "
           if summary["lowest_cpu_share"] < 0.9 else
           f"The training process had its core (at least {summary['lowest_cpu_share']:.0%} of it in "
           "every run). ")
        + f"Load average {load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f} "
        f"(1 / 5 / 15 min) before, {load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f} "
        "after.", "",
        f"`{summary['command']}`", "",
        "| inputs | data wait (share of step time) | ms/step | images/s | each round's images/s | "
        "CPU share the training process got |",
        "|---|---|---|---|---|---|",
    ]
    for way in WAYS:
        m = summary["medians"][way]
        each = " / ".join(f"{r['images_per_second']:.0f}" for r in runs[way])
        share = statistics.median(r["process_cpu_share"] for r in runs[way])
        lines.append(f"| {way} | {m['data_fraction']:.3f} | {m['ms_per_step']:.1f} | "
                     f"{m['images_per_second']:.0f} | {each} | {share:.0%} |")
    same = len({tuple(v) for v in losses.values()}) == 1 and all(len(v) == 1 for v in losses.values())
    lines += [
        "",
        f"The training splits' two files take {size / 1e6:.0f} MB; reading them through took "
        f"{cold_read:.2f} s after `posix_fadvise(DONTNEED)` and {warm_read:.2f} s warm "
        f"({size / 1e6 / cold_read:.0f} against {size / 1e6 / warm_read:.0f} MB/s): the eviction "
        "took effect, but this machine's (virtual) disk is fast, so \"evicted\" is a mild cold "
        "start; a network file system or a spinning disk would wait longer.",
        "",
        "Every run trained on the same batches: the epoch's mean class loss was "
        + ("identical in all runs of all four ways." if same else f"{losses} (differs: see the JSON)."),
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps per run (default 300)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    from transferkit.training import batches

    load_before = os.getloadavg()
    started = time.perf_counter()
    os.environ["TRANSFERKIT_MEMORY_BUDGET"] = "0"  # build the common forms once, untimed
    _, streamed, paths = train(2, 0)
    assert streamed and paths
    evict(paths)
    cold_read = read_seconds(paths)
    warm_read = read_seconds(paths)
    size = sum(p.stat().st_size for p in paths)
    print(f"reading the training splits' files ({size / 1e6:.0f} MB): {cold_read:.2f} s after eviction, "
          f"{warm_read:.2f} s warm", file=sys.stderr)

    runs: dict[str, list[dict]] = {way: [] for way in WAYS}
    default_workers = batches.STREAM_WORKERS
    for repeat in range(args.repeats):
        for way in WAYS:
            batches.STREAM_WORKERS = 0 if way.endswith("no workers") else default_workers
            if way == "in memory":
                os.environ.pop("TRANSFERKIT_MEMORY_BUDGET", None)
            else:
                os.environ["TRANSFERKIT_MEMORY_BUDGET"] = "0"
                if "evicted" in way:
                    evict(paths)
                else:
                    read_seconds(paths)  # warm
            gc.collect()
            result, streamed, _ = train(args.steps, 0)
            assert streamed == (way != "in memory"), way
            result["load_average_1min"] = os.getloadavg()[0]
            runs[way].append(result)
            print(f"round {repeat + 1} {way}: {result}", file=sys.stderr)
        report(args, runs, repeat + 1, load_before, started, size, cold_read, warm_read, default_workers)
    batches.STREAM_WORKERS = default_workers
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
