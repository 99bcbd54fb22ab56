"""The benchmark's accuracies as a picture: every seed of every method, its mean, the paper."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transferkit.benchmarks.protocols import PairProtocol, Protocol
from transferkit.report.figures import pyplot, save_figure


def plot_accuracies(protocol: Protocol, pairs: list[PairProtocol], methods: list[str],
                    report: dict[str, Any], path: Path) -> Path | None:
    """One panel per pair with measured rows: a dot per seed, a bar at our mean, a cross (just
    right of them) at the paper's number. No picture (None) while no pair has a measured row."""
    rows = {(r["source"], r["target"], r["method"]): r for r in report["rows"]
            if r["status"] == "measured"}
    shown = [p for p in pairs if any((p.source, p.target, m) in rows for m in methods)]
    if not shown:
        path.unlink(missing_ok=True)  # no picture of an earlier report stays beside this one
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.6), squeeze=False)
    for ax, pair in zip(axes[0], shown, strict=True):
        for x, method in enumerate(methods):
            row = rows.get((pair.source, pair.target, method))
            if row is not None:
                seeds = row["accuracies"]
                offsets = [(i - (len(seeds) - 1) / 2) * 0.06 for i in range(len(seeds))]
                ax.scatter([x + o for o in offsets], seeds, s=14, color="tab:blue", zorder=3,
                           label="ours, one dot per seed" if x == 0 else None)
                ax.hlines(row["mean"], x - 0.25, x + 0.25, color="tab:blue", lw=2,
                          label="ours, mean" if x == 0 else None)
            paper = pair.paper.get(method)
            if paper is not None:
                ax.scatter([x + 0.3], [paper], marker="x", s=50, color="tab:red", zorder=4,
                           label="paper" if x == 0 else None)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels([protocol.method_titles.get(m, m).split(" (")[0] for m in methods],
                           rotation=20, fontsize=8)
        ax.set_title(f"{pair.source} → {pair.target}", fontsize=10)
        ax.set_ylabel("target-test accuracy", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)
