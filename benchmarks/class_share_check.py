"""The label-free class-share check (transferkit.checks) of finished runs, beside their
target-test accuracy.

    python benchmarks/class_share_check.py RUN [RUN ...]

For each finished `transferkit adapt` folder: the check as its metrics.json recorded it, or,
for runs made before runs recorded it, computed from the saved model (the unlabelled target
training images and the source labels; no target label). The target-test accuracy is printed
beside it to judge the check after the fact; it chooses nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from transferkit.api import DomainAdapter
from transferkit.checks import PredictionShares
from transferkit.errors import TransferkitError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished adapt run folders")
    parser.add_argument("--data-root", help="the data the runs were made from")
    args = parser.parse_args(argv)
    print("| run | target test | total variation | largest target share (source share) | flagged |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        try:
            metrics = json.loads((run / "metrics.json").read_text())
            if "label_free_check" in metrics:
                shares = PredictionShares.from_dict(metrics["label_free_check"])
            else:
                shares = DomainAdapter.load(run, data_root=args.data_root,
                                            progress=False).prediction_shares()
        except (OSError, KeyError, ValueError, TransferkitError) as exc:
            print(f"{run}: not a finished adapt run ({exc})", file=sys.stderr)
            return 2
        top = max(range(len(shares.target)), key=lambda i: shares.target[i])
        flagged = ", ".join(shares.classes[i] for i in shares.flagged) or "—"
        print(f"| {run} | {metrics['target_test_accuracy']:.4f} | {shares.total_variation:.3f} | "
              f"{shares.classes[top]}: {shares.target[top]:.3f} ({shares.source[top]:.3f}) | "
              f"{flagged} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
