"""How a finished run's model predicts the target test set — an analysis with the target
labels, after the fact (it chooses nothing).

    python benchmarks/target_predictions.py RUN [RUN ...]

Per run: target-test accuracy; mean top class probability and the share of images above 0.9;
the class predicted most often, its share of the predictions against its share of the labels,
the share of each other class's images sent to it (min–max), and the accuracy on the images
not predicted as it; how far the prediction shares are from the target-test label shares
(total variation), beside how far the source label shares are from them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from transferkit.api import DomainAdapter
from transferkit.training.loop import run_batches


def describe(run: Path, data_root: str | None) -> str:
    adapter = DomainAdapter.load(run, data_root=data_root, progress=False)
    if adapter.alignment_ is not None:
        raise SystemExit(f"{run}: an SA run has no class probabilities to describe")
    pair, test = adapter.pair_, adapter.pair_.target_test
    probabilities = torch.softmax(run_batches(adapter.model_, test.images, pair), dim=1)
    top, predicted = probabilities.max(dim=1)
    labels = test.labels
    count = len(pair.classes)
    biggest = int(torch.bincount(predicted, minlength=count).argmax())
    sent = [float((predicted[labels == c] == biggest).float().mean())
            for c in range(count) if c != biggest and (labels == c).any()]
    rest = predicted != biggest
    shares, truth = shares_of(predicted, count), shares_of(labels, count)
    source = shares_of(pair.source_train.labels, count)
    return (f"{run}: accuracy {float((predicted == labels).float().mean()):.4f}; mean top "
            f"probability {float(top.mean()):.3f}, {float((top > 0.9).float().mean()):.1%} "
            f"above 0.9; most predicted class {pair.classes[biggest]}: "
            f"{float((predicted == biggest).float().mean()):.1%} of predictions, "
            f"{float((labels == biggest).float().mean()):.1%} of labels, takes "
            f"{min(sent):.1%}–{max(sent):.1%} of each other class; accuracy on the "
            f"{int(rest.sum())} images predicted otherwise "
            f"{float((predicted[rest] == labels[rest]).float().mean()):.1%}; total variation "
            f"of the prediction shares from the target-test label shares {distance(shares, truth):.3f}"
            f" (the source label shares are {distance(source, truth):.3f} from them)")


def shares_of(labels: torch.Tensor, count: int) -> torch.Tensor:
    counts = torch.bincount(labels.cpu(), minlength=count).double()
    return counts / counts.sum()


def distance(first: torch.Tensor, second: torch.Tensor) -> float:
    """Total variation between two class distributions."""
    return float((first - second).abs().sum() / 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished adapt run folders")
    parser.add_argument("--data-root", help="the data the runs were made from")
    args = parser.parse_args(argv)
    for run in args.runs:
        print(describe(run, args.data_root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
