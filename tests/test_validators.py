"""Label-free validators, and the per-epoch models they choose among (--keep-epochs)."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from fakes import write_digit_pair
from safetensors.torch import load_file

from transferkit import DomainAdapter
from transferkit.validators import (
    class_share_agreement,
    information_maximization,
    label_free_scores,
    negative_entropy,
    sample_indices,
    soft_neighborhood_density,
)

CLASSES = 10


def _confident(labels: torch.Tensor, certainty: float = 0.95) -> torch.Tensor:
    rest = (1.0 - certainty) / (CLASSES - 1)
    probabilities = torch.full((len(labels), CLASSES), rest)
    probabilities[torch.arange(len(labels)), labels] = certainty
    return probabilities


def test_information_maximization_rewards_confident_and_spread_predictions():
    balanced = torch.arange(200) % CLASSES
    assert information_maximization(_confident(balanced, 1.0)) == pytest.approx(math.log(CLASSES))
    collapsed = torch.zeros(200, dtype=torch.long)  # confident, all one class
    assert information_maximization(_confident(collapsed, 1.0)) == pytest.approx(0.0, abs=1e-9)
    uniform = torch.full((200, CLASSES), 1.0 / CLASSES)
    assert information_maximization(uniform) == pytest.approx(0.0, abs=1e-9)


def test_negative_entropy_is_zero_when_certain_and_minus_log_c_when_uniform():
    assert negative_entropy(_confident(torch.arange(50) % CLASSES, 1.0)) == pytest.approx(0.0, abs=1e-9)
    uniform = torch.full((50, CLASSES), 1.0 / CLASSES)
    assert negative_entropy(uniform) == pytest.approx(-math.log(CLASSES))


def test_class_share_agreement_is_one_minus_the_total_variation():
    source = torch.arange(100) % CLASSES  # balanced source labels
    assert class_share_agreement(_confident(torch.arange(300) % CLASSES), source) == pytest.approx(1.0)
    collapsed = _confident(torch.zeros(300, dtype=torch.long))
    assert class_share_agreement(collapsed, source) == pytest.approx(0.1)  # 1 − 0.9


def test_snd_is_the_entropy_of_each_images_neighborhood():
    labels = torch.arange(200) % CLASSES
    # each image of 10 tight clusters of 20 has 19 equally near neighbors: entropy near log 19
    assert soft_neighborhood_density(_confident(labels)) == pytest.approx(math.log(19), abs=0.05)
    # fewer, larger clusters are denser still: SND cannot see a collapse into few classes,
    # one reason the validators are compared by measurement
    two = _confident(torch.arange(200) % 2)
    assert soft_neighborhood_density(two) == pytest.approx(math.log(99), abs=0.05)
    # three images by hand: cosine similarities, softmax over the other two at τ, entropy
    probabilities = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]], dtype=torch.float64)
    unit = probabilities / probabilities.norm(dim=1, keepdim=True)
    expected = []
    for i in range(3):
        others = [j for j in range(3) if j != i]
        weights = torch.softmax(torch.stack([unit[i] @ unit[j] for j in others]) / 0.05, dim=0)
        expected.append(float(-(weights * weights.log()).sum()))
    assert soft_neighborhood_density(probabilities) == pytest.approx(sum(expected) / 3, rel=1e-9)
    with pytest.raises(ValueError, match="N × C"):
        soft_neighborhood_density(probabilities[:1])


def test_label_free_scores_names_every_validator_and_refuses_unknown_ones():
    probabilities = _confident(torch.arange(40) % CLASSES)
    scores = label_free_scores(probabilities, torch.arange(40) % CLASSES)
    assert set(scores) == {"snd", "im", "entropy", "class_shares"}
    with pytest.raises(ValueError, match="unknown validator"):
        label_free_scores(probabilities, torch.arange(40) % CLASSES, ("accuracy",))


def test_sample_indices_are_the_same_for_every_candidate_and_within_range():
    first, again = sample_indices(10_000, 500, seed=1), sample_indices(10_000, 500, seed=1)
    assert torch.equal(first, again) and len(first) == 500 and len(first.unique()) == 500
    assert int(first.max()) < 10_000
    assert torch.equal(sample_indices(30, 500), torch.arange(30))


def test_keep_epochs_writes_each_epochs_model_and_the_study_scores_them(tmp_path, monkeypatch):
    root = write_digit_pair(tmp_path / "data")
    run = tmp_path / "run"
    adapter = DomainAdapter(method="dann", network="mnist", image_size=28, epochs=3,
                            steps_per_epoch=2, batch_size=8, device="cpu", data_root=root,
                            progress=False, run_dir=run, keep_epochs=True).fit("mnist", "mnist_m")
    kept = sorted((run / "epochs").glob("epoch-*.safetensors"))
    assert [p.name for p in kept] == ["epoch-1.safetensors", "epoch-2.safetensors",
                                      "epoch-3.safetensors"]
    final = load_file(str(run / "model.safetensors"))
    last = load_file(str(run / "epochs" / "epoch-3.safetensors"))
    assert set(last) == set(final) and all(torch.equal(last[k], final[k]) for k in final)
    first = load_file(str(kept[0]))
    assert any(not torch.equal(first[k], final[k]) for k in final)  # training moved the weights
    del adapter

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    try:
        import validator_study
    finally:
        sys.path.pop(0)
    monkeypatch.setenv("TRANSFERKIT_DATA", str(root))  # the run's data, found again
    assert validator_study.main([str(run), "--out", str(tmp_path / "study"), "--sample", "50"]) == 0
    table = (tmp_path / "study" / "validators.md").read_text()
    for name in ("snd", "im", "entropy", "class_shares", "source_accuracy"):
        assert f"| {name} |" in table
    assert table.count("| run | epoch-") == 3


def test_select_keeps_the_epoch_a_label_free_validator_scores_highest(tmp_path):
    from transferkit.errors import TransferkitError
    from transferkit.names import SELECTOR_NAMES
    from transferkit.validators import SELECTORS, VALIDATORS

    assert set(SELECTOR_NAMES) == set(VALIDATORS) | {"source_accuracy"} == set(SELECTORS)
    root = write_digit_pair(tmp_path / "data")
    run = tmp_path / "run"
    settings = dict(method="dann", network="mnist", image_size=28, epochs=3, steps_per_epoch=2,
                    batch_size=8, device="cpu", data_root=root, progress=False)
    DomainAdapter(**settings, run_dir=run, select="class_shares").fit("mnist", "mnist_m")
    metrics = json.loads((run / "metrics.json").read_text())
    scores = {int(k): v for k, v in metrics["epoch_scores"].items()}
    assert sorted(scores) == [1, 2, 3]
    chosen = metrics["selected_epoch"]
    assert scores[chosen] == max(scores.values())
    assert metrics["selected_by"].startswith("class_shares (label-free)")
    assert f"epoch {chosen} of 3" in metrics["selected_by"]
    assert json.loads((run / "config.json").read_text())["select"] == "class_shares"
    saved = load_file(str(run / "model.safetensors"))
    picked = load_file(str(run / "epochs" / f"epoch-{chosen}.safetensors"))
    assert all(torch.equal(saved[k], picked[k]) for k in saved)  # the model is the chosen epoch
    loaded = DomainAdapter.load(run, data_root=root, progress=False)
    assert loaded.score() == pytest.approx(metrics["target_test_accuracy"], abs=1e-9)
    with pytest.raises(TransferkitError, match="--select"):
        DomainAdapter(**settings, run_dir=run, select="accuracy")
    with pytest.raises(TransferkitError, match="folder"):
        DomainAdapter(**settings, select="im")
    with pytest.raises(TransferkitError, match="SA"):
        DomainAdapter(**{**settings, "method": "sa"}, run_dir=run, select="im")


def test_model_scores_leave_out_source_accuracy_where_the_source_has_no_test_split(tmp_path):
    """SYN SIGNS has no test split: the validators still score, source accuracy is left out."""
    from transferkit.validators import VALIDATORS, model_scores

    root = write_digit_pair(tmp_path / "data")
    adapter = DomainAdapter(method="dann", network="mnist", image_size=28, epochs=1,
                            steps_per_epoch=2, batch_size=8, device="cpu", data_root=root,
                            progress=False).fit("mnist", "mnist_m")
    pair, model = adapter.pair_, adapter.model_
    images = pair.target_train.images[:40]
    names = (*VALIDATORS, "source_accuracy")
    assert set(model_scores(model, pair, images, names)) == set(names)
    scores = model_scores(model, dataclasses.replace(pair, source_test=None), images, names)
    assert set(scores) == set(VALIDATORS) and all(math.isfinite(v) for v in scores.values())
