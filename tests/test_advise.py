"""Transferability scores, domain gap, and the advise command (issue 5)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fakes import write_two_class_data

from transferkit.advise.advisor import CandidateScore, recommend
from transferkit.advise.scores import (
    direct_log_evidence,
    evidence_for_target,
    h_score,
    leep,
    logme,
    proxy_a_distance,
)
from transferkit.cli import main


def _problem(n: int, d: int, informative: bool = True, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    features = rng.normal(size=(n, d))
    if informative:
        features[:, :3] += 3 * np.eye(3)[labels]
    return features, labels


@pytest.mark.parametrize(("n", "d"), [(60, 8), (25, 40)])  # more samples than features, and fewer
def test_logme_matches_a_direct_evidence_computation(n, d):
    features, labels = _problem(n, d)
    u, s, _ = np.linalg.svd(features, full_matrices=False)
    sigma = np.concatenate([s**2, np.zeros(max(0, d - len(s)))])
    per_class = []
    for c in range(3):
        y = (labels == c).astype(float)
        z = np.concatenate([u.T @ y, np.zeros(max(0, d - len(s)))])
        found = evidence_for_target(sigma, z, y, n, d)
        direct = direct_log_evidence(features, y, found.alpha, found.beta)
        assert found.log_evidence == pytest.approx(direct, abs=1e-8)
        # α and β maximize the evidence: moving either away lowers the direct computation.
        for a, b in ((0.7, 1), (1.4, 1), (1, 0.7), (1, 1.4)):
            assert direct_log_evidence(features, y, found.alpha * a, found.beta * b) < direct
        per_class.append(found.log_evidence)
    assert logme(features, labels) == pytest.approx(np.mean(per_class))


def test_scores_prefer_features_that_carry_the_labels():
    good, labels = _problem(200, 16, informative=True)
    noise, _ = _problem(200, 16, informative=False)
    assert logme(good, labels) > logme(noise, labels) + 0.1
    assert h_score(good, labels) > h_score(noise, labels) + 0.5


def test_leep_limits():
    labels = np.array([0, 1, 2, 0, 1, 2])
    perfect = np.eye(3)[[2, 0, 1, 2, 0, 1]]  # a source model whose classes map one-to-one
    assert leep(perfect, labels) == pytest.approx(0.0, abs=1e-12)
    uniform = np.full((6, 5), 0.2)  # says nothing: LEEP is the log of the class prior
    assert leep(uniform, labels) == pytest.approx(np.log(1 / 3))


def test_proxy_a_distance_separates_domains():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(600, 20)), rng.normal(size=(600, 20))
    assert proxy_a_distance(a, b, samples=600).proxy_a_distance < 0.4
    assert proxy_a_distance(a, b + 3.0, samples=600).proxy_a_distance > 1.8


def _score(name, value):
    return CandidateScore(name, name.split("@")[0], "x", 8, value, 1.0, None, 0.0)


def test_recommendation_rules():
    scores = [_score("net", 0.5), _score("net@random", -0.4)]
    assert "extract features" in recommend(scores, 40, None, "net@random")
    assert "fine-tune" in recommend(scores, 1000, None, "net@random")
    flipped = [_score("net", -0.6), _score("net@random", -0.4)]
    assert "train from scratch" in recommend(flipped, 1000, None, "net@random")
    far = {"pixels": {"proxy_a_distance": 1.7}}
    near = {"pixels": {"proxy_a_distance": 0.1}}
    assert "adapt without labels" in recommend(scores, None, far, None)
    assert "apply the model to the target as it is" in recommend(scores, None, near, None)


def test_advise_command_end_to_end(tmp_path, capsys):
    from safetensors.torch import save_file

    from transferkit.models.backbones import build_backbone

    target = write_two_class_data(tmp_path / "target", {"train": 24, "test": 8})
    source = write_two_class_data(tmp_path / "source", {"train": 24, "test": 8}, side=24)
    weights = tmp_path / "w.safetensors"
    state = build_backbone("small_convnet", "random").state_dict()
    save_file({k.replace("stages.", "", 1): v.contiguous() for k, v in state.items()}, str(weights))
    out = tmp_path / "advice"
    code = main(
        [
            "advise",
            "--target",
            f"folder:{target}",
            "--source",
            f"folder:{source}",
            "--backbones",
            f"small_convnet@{weights}",
            "--samples",
            "20",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    result = json.loads((out / "advise.json").read_text())
    assert [c["candidate"] for c in result["candidates"]].count("small_convnet@random") == 1
    assert all(np.isfinite(c["logme"]) for c in result["candidates"])
    assert 0.0 <= result["domain_gap"]["pixels"]["proxy_a_distance"] <= 2.0
    assert "features" in result["domain_gap"]
    assert "Recommendation" in printed and result["recommendation"]


def test_advise_bad_target_is_a_clear_error(tmp_path, capsys):
    code = main(["advise", "--target", f"folder:{tmp_path}/none", "--quiet"])
    assert code == 2
    assert "none" in capsys.readouterr().err


def test_advise_benchmark_on_small_generated_digits(tmp_path):
    """The whole measurement on fakes: the runs of a tiny ganin2016 benchmark as candidates."""
    from fakes import write_digit_pair, write_tiny_adapt_runs

    from transferkit.advise.benchmark import render, run_benchmark

    root = write_digit_pair(tmp_path / "data", n_train=160, n_test=40)
    runs = tmp_path / "ganin"
    write_tiny_adapt_runs(root, runs / "mnist-mnist_m", epochs=1)
    results = run_benchmark(
        tmp_path / "out",
        runs,
        seeds=1,
        samples=30,
        device="cpu",
        data_root=str(root),
        progress=False,
        labelled=20,
    )
    pixels = {row["pair"]: row for row in results["pixel_gaps"]}
    assert "missing" in pixels["mnist → gtsrb"]  # no GTSRB in the fake root: said, not dropped
    assert 0 <= pixels["mnist → mnist_m"]["mean"] <= 2
    assert [row["space"] for row in results["feature_gaps"]] == [
        "features of the source-only network",
        "features of the DANN network",
    ]
    rows = results["transferability"]["rows"]
    assert len(rows) == 5 and all(0 <= r["finetune"]["mean"] <= 1 for r in rows)
    assert set(results["transferability"]["rank_correlation"]) == {"logme", "h_score", "leep"}
    table = render(results)
    assert "data missing" in table and "Spearman" in table
