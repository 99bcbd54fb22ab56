"""How well do the label-free numbers a run records rank runs by their target-test accuracy?

    python benchmarks/label_free_signals.py RUN [RUN ...]

Each RUN is a finished `transferkit adapt` folder (metrics.json and metrics.jsonl). Prints
each run's target-test accuracy beside the label-free signals of its last epoch (source
validation of the model, the domain classifier's loss and accuracy averaged over the last
five epochs), then Spearman's ρ of each signal with the target accuracy over the runs.
An analysis after the fact, with the target labels: it chooses nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scipy.stats import spearmanr

SIGNALS = {
    "source val (model)": lambda h: h[-1].get("average_val_accuracy",
                                              h[-1]["source_val_accuracy"]),
    "domain loss, last 5 epochs": lambda h: sum(e["domain_loss"] for e in h[-5:]) / len(h[-5:]),
    "domain accuracy, last 5 epochs": lambda h: (sum(e["domain_accuracy"] for e in h[-5:])
                                                 / len(h[-5:])),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished adapt run folders")
    args = parser.parse_args(argv)
    if len(args.runs) < 3:
        parser.error("give at least three runs to rank")
    table = []
    for run in args.runs:
        try:
            target = json.loads((run / "metrics.json").read_text())["target_test_accuracy"]
            history = [json.loads(line) for line in (run / "metrics.jsonl").open()]
            table.append((run, target, [signal(history) for signal in SIGNALS.values()]))
        except (OSError, KeyError, ValueError) as exc:
            print(f"{run}: not a finished DANN run with metrics.json and metrics.jsonl ({exc})",
                  file=sys.stderr)
            return 2
    print("target test | " + " | ".join(SIGNALS) + " | run")
    for run, target, values in table:
        print(f"{target:.4f} | " + " | ".join(f"{v:.4f}" for v in values) + f" | {run}")
    for i, name in enumerate(SIGNALS):
        rho = spearmanr([row[2][i] for row in table], [row[1] for row in table]).statistic
        print(f"Spearman ρ, {name} vs target test: {rho:+.2f} ({len(table)} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
