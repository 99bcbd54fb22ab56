"""The label-free check of where a model sends the target's images (transferkit.checks)."""

from __future__ import annotations

import pytest
import torch

from transferkit.checks import PredictionShares, prediction_shares

CLASSES = [str(i) for i in range(4)]


def test_shares_agreeing_with_the_source_are_not_flagged():
    source = torch.tensor([0, 1, 2, 3] * 25)
    predicted = torch.tensor([0] * 30 + [1] * 20 + [2] * 25 + [3] * 25)  # 1.2× and 0.8×
    shares = prediction_shares(predicted, source, CLASSES)
    assert shares.source == [0.25] * 4
    assert shares.target == [0.30, 0.20, 0.25, 0.25]
    assert shares.total_variation == pytest.approx(0.05)
    assert shares.flagged == [] and shares.message() is None


def test_a_class_that_swallows_the_target_is_flagged_and_named():
    source = torch.tensor([0, 1, 2, 3] * 25)
    predicted = torch.tensor([0] * 55 + [1] * 15 + [2] * 20 + [3] * 10)  # 2.2×, 0.6×, 0.8×, 0.4×
    shares = prediction_shares(predicted, source, CLASSES)
    assert shares.flagged == [0, 3]
    message = shares.message()
    assert "class 0 gets 55.0% of the target images (25.0% of the source labels)" in message
    assert "class 3 gets 10.0%" in message and "class 1" not in message
    assert shares.total_variation == pytest.approx(0.30)
    again = PredictionShares.from_dict(shares.as_dict())  # as metrics.json keeps it
    assert again == shares and again.as_dict()["flagged_classes"] == ["0", "3"]


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="class index 5 for 4 classes"):
        prediction_shares(torch.tensor([5]), torch.tensor([0]), CLASSES)
    with pytest.raises(ValueError, match="needs target predictions"):
        prediction_shares(torch.tensor([], dtype=torch.long), torch.tensor([0]), CLASSES)


def test_the_benchmark_table_lists_flagged_runs():
    from transferkit.benchmarks.protocols import PROTOCOLS
    from transferkit.benchmarks.table import render_table

    protocol = PROTOCOLS["ganin2016"]
    pair = protocol.pairs[0]
    flagged = prediction_shares(torch.tensor([0] * 55 + [1] * 45), torch.tensor([0, 1, 2, 3] * 25),
                                CLASSES)
    row = {"source": pair.source, "target": pair.target, "method": "dann_mcc",
           "status": "measured", "accuracies": [0.7, 0.8], "mean": 0.75, "std": 0.07,
           "epochs": 1, "selected_by": "last_epoch", "wall_seconds": [1.0, 1.0],
           "peak_memory_mb": 1.0, "device": "cpu",
           "label_free_check": [{"seed": 0, "total_variation": 0.1, "flagged": None},
                                {"seed": 1, "total_variation": flagged.total_variation,
                                 "flagged": flagged.message()}]}
    table = render_table(protocol, [pair], ["dann_mcc"],
                         {"rows": [row], "seeds": 2, "machine": "test"})
    assert "1 of the 2 runs that recorded it flagged" in table and "computes it for them):" in table
    assert "DANN + MCC (Jin et al. 2020; not in the paper), seed 1: class 0 gets 55.0%" in table
    row["label_free_check"][1]["flagged"] = None
    assert "no class of the 2 runs that recorded it gets" in render_table(
        protocol, [pair], ["dann_mcc"], {"rows": [row], "seeds": 2, "machine": "test"})
