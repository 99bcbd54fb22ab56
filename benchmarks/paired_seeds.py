"""Compare two methods seed by seed, where a seed gives both the same start.

A transferkit seed fixes the initial weights and the batch order, so the runs ``A/seedK`` and
``B/seedK`` of two methods differ only by the method: their difference is a paired
comparison, less noisy than comparing the two means. Reads each run's ``metrics.json``
(the final, target-test numbers; nothing here selects anything).

    python benchmarks/paired_seeds.py runs/ganin2016d/mnist-mnist_m/dann \\
        runs/ganin2016d/mnist-mnist_m/dann_mcc

Either side may instead be a row of a committed benchmark report, ``REPORT.json#SOURCE:TARGET:
METHOD`` (its ``accuracies`` and ``seeds``; target-test accuracy only), for runs whose folders
are no longer at hand:

    python benchmarks/paired_seeds.py 'benchmarks/results/ganin2016.json#mnist:mnist_m:dann' \\
        runs/ganin2016v/mnist-mnist_m/vada
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from scipy import stats


def report_row(spec: str, key: str) -> dict[int, float]:
    """Seed → accuracy of the row ``REPORT.json#SOURCE:TARGET:METHOD`` of a benchmark report."""
    path, _, row = spec.partition("#")
    try:
        source, target, method = row.split(":")
    except ValueError:
        raise SystemExit(f"{spec}: expected REPORT.json#SOURCE:TARGET:METHOD") from None
    if key != "target_test_accuracy":
        raise SystemExit(f"{spec}: a report row holds target-test accuracies only, not {key}")
    rows = [r for r in json.loads(Path(path).read_text())["rows"]
            if (r["source"], r["target"], r["method"]) == (source, target, method)]
    if not rows or "accuracies" not in rows[0]:
        raise SystemExit(f"{path}: no measured row {source} → {target}, {method}")
    return dict(zip(rows[0]["seeds"], rows[0]["accuracies"], strict=True))


def accuracies(folder: Path, key: str) -> dict[int, float]:
    if "#" in str(folder):
        return report_row(str(folder), key)
    found = {}
    for metrics in sorted(folder.glob("seed*/metrics.json")):
        seed = int(metrics.parent.name.removeprefix("seed"))
        found[seed] = json.loads(metrics.read_text())[key]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="method folder holding seedK/metrics.json, or "
                        "REPORT.json#SOURCE:TARGET:METHOD (baseline)")
    parser.add_argument("b", type=Path, help="the other method's folder")
    parser.add_argument("--key", default="target_test_accuracy",
                        help="metrics.json number to compare (default %(default)s)")
    args = parser.parse_args(argv)
    a, b = accuracies(args.a, args.key), accuracies(args.b, args.key)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        print(f"no seed finished in both {args.a} and {args.b}", file=sys.stderr)
        return 1
    name_a, name_b = (str(p).rsplit(":", 1)[-1] if "#" in str(p) else p.name
                      for p in (args.a, args.b))
    print(f"| seed | {name_a} | {name_b} | difference |\n|---|---|---|---|")
    differences = []
    for seed in seeds:
        differences.append(b[seed] - a[seed])
        print(f"| {seed} | {a[seed]:.4f} | {b[seed]:.4f} | {differences[-1]:+.4f} |")
    mean_a = statistics.mean(a[s] for s in seeds)
    mean_b = statistics.mean(b[s] for s in seeds)
    line = f"\n{len(seeds)} seeds: {name_a} {mean_a:.4f}, {name_b} {mean_b:.4f}"
    if len(seeds) > 1:
        spread = statistics.stdev(differences)
        test = stats.ttest_rel([b[s] for s in seeds], [a[s] for s in seeds])
        line += (f"; difference {statistics.mean(differences):+.4f} ± {spread:.4f} (std), "
                 f"{sum(d > 0 for d in differences)}/{len(seeds)} seeds higher; "
                 f"paired t = {test.statistic:.2f}, p = {test.pvalue:.3f}")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
