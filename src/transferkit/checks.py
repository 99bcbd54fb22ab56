"""A label-free check of an adapted model: where does it send the target's images?

Unsupervised adaptation has no target labels to say a model went wrong, but it has the
unlabelled target training images and the labelled source. If the model assigns a class to
a far larger (or smaller) share of the target images than that class has among the source
labels, one of two things is true: the target's classes really are distributed differently
(label shift), or the model dumps the target images it cannot place into a few classes.
Only someone who knows the target can tell which — the check says where to look.

It was added after DANN + MCC on MNIST → MNIST-M sent 34 % of the target images to class 8
(9.8 % of the source labels; `benchmarks/results/dann_mcc.md`): a failure this check sees
without a single target label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

RATIO = 2.0  # a class's target share at least this many times its source share, or at most 1/RATIO


@dataclass(frozen=True)
class PredictionShares:
    classes: list[str]
    target: list[float]  # share of the target training images predicted as each class
    source: list[float]  # share of each class among the source training labels

    @property
    def total_variation(self) -> float:
        """½ Σ |target − source|: 0 when the shares agree, 1 when they share nothing."""
        return 0.5 * sum(abs(t - s) for t, s in zip(self.target, self.source, strict=True))

    @property
    def flagged(self) -> list[int]:
        """Classes whose target share is ≥ RATIO × or ≤ 1/RATIO × their source share."""
        return [i for i, (t, s) in enumerate(zip(self.target, self.source, strict=True))
                if s > 0 and (t >= RATIO * s or t <= s / RATIO)]

    def message(self) -> str | None:
        """One sentence for the user when a class is flagged, else None."""
        if not self.flagged:
            return None
        parts = [f"class {self.classes[i]} gets {self.target[i]:.1%} of the target images "
                 f"({self.source[i]:.1%} of the source labels)" for i in self.flagged]
        return ("label-free check: " + "; ".join(parts) + " — either the target's classes are "
                "distributed differently, or the model collapses target images it cannot "
                "place into these classes; look at some of them before trusting it.")

    def as_dict(self) -> dict[str, object]:
        """What ``metrics.json`` records as ``label_free_check``."""
        return {"classes": self.classes, "target_train_prediction_shares": self.target,
                "source_class_shares": self.source,
                "total_variation": self.total_variation,
                "flagged_classes": [self.classes[i] for i in self.flagged]}

    @classmethod
    def from_dict(cls, record: dict) -> PredictionShares:
        return cls(list(record["classes"]), list(record["target_train_prediction_shares"]),
                   list(record["source_class_shares"]))


def prediction_shares(predicted: torch.Tensor, source_labels: torch.Tensor,
                      classes: Sequence[object]) -> PredictionShares:
    """Shares of ``predicted`` (class indices of the unlabelled target training images) and
    of ``source_labels``, over ``classes`` (named by their ``str``)."""
    count = len(classes)
    if len(predicted) == 0 or len(source_labels) == 0:
        raise ValueError("prediction_shares needs target predictions and source labels")

    def shares(values: torch.Tensor) -> list[float]:
        counts = torch.bincount(torch.as_tensor(values).long().flatten(), minlength=count)
        if len(counts) > count:
            raise ValueError(f"class index {len(counts) - 1} for {count} classes")
        return (counts.double() / counts.sum()).tolist()

    return PredictionShares([str(c) for c in classes], shares(predicted), shares(source_labels))
