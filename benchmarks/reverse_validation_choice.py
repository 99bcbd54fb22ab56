"""Choose between candidate run sets of one pair by reverse validation, as pre-registered.

Each candidate is a folder of seed runs (``CANDIDATE/seedK``) that ``transferkit
reverse-validate`` has scored. The candidate with the highest mean score over the seeds wins
(a tie keeps the first listed). The target-test accuracies are printed *after* the choice,
beside it, for the report — they do not enter it.

    python benchmarks/reverse_validation_choice.py \
        20=runs/ganin2016d/mnist-mnist_m/dann 30=runs/ganin2016e/mnist-mnist_m/dann \
        --json benchmarks/results/dann_design_choices/reverse_validation_budget.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def _read(folder: Path) -> list[dict]:
    rows = []
    for seed_dir in sorted(folder.glob("seed*")):
        score_file = seed_dir / "reverse_validation.json"
        metrics_file = seed_dir / "metrics.json"
        if not score_file.is_file() or not metrics_file.is_file():
            raise SystemExit(f"{seed_dir}: not scored yet (run transferkit reverse-validate)")
        score, metrics = json.loads(score_file.read_text()), json.loads(metrics_file.read_text())
        rows.append({"seed": metrics["seed"], "epochs": metrics["epochs"],
                     "reverse_validation": score["score"],
                     "reverse_epochs": score["reverse_epochs"],
                     "source_test_accuracy": metrics["source_test_accuracy"],
                     "target_test_accuracy": metrics["target_test_accuracy"]})
    if not rows:
        raise SystemExit(f"{folder}: no seedK run folders")
    return rows


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("candidates", nargs="+", metavar="NAME=FOLDER",
                        help="a candidate's name and its folder of seedK runs")
    parser.add_argument("--json", type=Path, help="also write the comparison here")
    args = parser.parse_args(argv)
    candidates = {}
    for item in args.candidates:
        name, sep, folder = item.partition("=")
        if not sep or not Path(folder).is_dir():
            parser.error(f"{item}: expected NAME=FOLDER with an existing folder")
        candidates[name] = _read(Path(folder))
    seeds = {name: [r["seed"] for r in rows] for name, rows in candidates.items()}
    if len({tuple(s) for s in seeds.values()}) > 1:
        parser.error(f"candidates cover different seeds: {seeds}")
    means = {name: statistics.mean(r["reverse_validation"] for r in rows)
             for name, rows in candidates.items()}
    chosen = max(means, key=lambda name: means[name])  # first listed wins a tie
    print("| candidate | seeds | reverse validation (per seed) | mean ± std | "
          "source test | target test (not used to choose) |")
    print("|---|---|---|---|---|---|")
    for name, rows in candidates.items():
        rv = [r["reverse_validation"] for r in rows]
        target = [r["target_test_accuracy"] for r in rows]
        mark = " **chosen**" if name == chosen else ""
        print(f"| {name}{mark} | {', '.join(str(r['seed']) for r in rows)} | "
              f"{', '.join(f'{v:.4f}' for v in rv)} | {_mean_std(rv)} | "
              f"{_mean_std([r['source_test_accuracy'] for r in rows])} | "
              f"{_mean_std(target)} ({', '.join(f'{v:.4f}' for v in target)}) |")
    print(f"\nchosen by the highest mean reverse-validation score: {chosen}")
    if args.json:
        args.json.write_text(json.dumps({"chosen": chosen, "mean_reverse_validation": means,
                                         "candidates": candidates,
                                         "command": " ".join(sys.argv)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
