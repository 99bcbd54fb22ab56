"""On this CPU: 2 processes × 1 thread (torchrun, gloo) against 1 process × 2 threads, for DANN
on MNIST → MNIST-M with the same global batch (64 + 64): training images/s (median over
epochs, the global batch's rate) and target-test accuracy, alternated ``--repeats`` times.

    python benchmarks/experiments/processes_vs_threads.py --out benchmarks/results/processes_vs_threads
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(processes: int, threads: int, epochs: int, steps: int, out: Path) -> dict:
    batch = 64 // processes
    args = ["adapt", "--method", "dann", "--source", "mnist", "--target", "mnist_m", "--binarize-source",
            "--epochs", str(epochs), "--steps-per-epoch", str(steps), "--batch-size", str(batch),
            "--device", "cpu", "--quiet", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if processes == 1:
        command = [sys.executable, "-m", "transferkit", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                   str(processes), "-m", "transferkit", *args]
    subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "metrics.json").read_text())
    return {"images_per_second": statistics.median(line["images_per_second"] for line in lines),
            "target_test_accuracy": metrics["target_test_accuracy"], "wall_seconds": metrics["wall_seconds"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200, help="steps per epoch (default 200)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    import torch

    from transferkit.training.device import describe_machine

    ways = {"1 process × 2 threads": (1, 2), "2 processes × 1 thread": (2, 1)}
    results: dict[str, list[dict]] = {way: [] for way in ways}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for way, (processes, threads) in ways.items():
                out = Path(folder) / f"{processes}x{threads}-{repeat}"
                results[way].append(run(processes, threads, args.epochs, args.steps, out))
                print(way, results[way][-1], file=sys.stderr)
    summary = {"runs": results, "machine": describe_machine(torch.device("cpu")),
               "budget": f"{args.epochs} epochs × {args.steps} steps, global batch 64 + 64",
               "command": "python benchmarks/experiments/processes_vs_threads.py " + " ".join(sys.argv[1:])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = ["# DANN on MNIST → MNIST-M: processes or threads on this CPU", "",
             f"{summary['machine']}; {summary['budget']}; `{summary['command']}`", "",
             "| way | images/s (each repeat) | target-test accuracy (each repeat) |", "|---|---|---|"]
    for way, runs in results.items():
        rates = " / ".join(f"{r['images_per_second']:.0f}" for r in runs)
        accuracies = " / ".join(f"{r['target_test_accuracy']:.4f}" for r in runs)
        lines.append(f"| {way} | {rates} | {accuracies} |")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
