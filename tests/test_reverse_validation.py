"""Reverse validation: label-free scoring of an adapted model (transferkit.selection)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from fakes import write_digit_pair

from transferkit import DomainAdapter
from transferkit.cli import main
from transferkit.data.pairs import load_pair
from transferkit.errors import TransferkitError
from transferkit.selection import reverse_pair, reverse_validation


@pytest.fixture
def digit_root(tmp_path):
    return write_digit_pair(tmp_path / "data")


def _same_rows(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a, b))


def test_reverse_pair_trains_on_pseudo_labels_and_scores_on_source_never_target_test(digit_root):
    pair = load_pair("mnist", "mnist_m", size=28, data_root=digit_root, geometry="center")
    pseudo = torch.randint(0, 10, (len(pair.target_train),))
    backwards = reverse_pair(pair, pseudo)
    assert _same_rows(backwards.source_train.images, pair.target_train.images)
    assert torch.equal(backwards.source_train.labels, pseudo)  # not the target's own labels
    assert _same_rows(backwards.target_train.images, pair.source_train.images)
    assert _same_rows(backwards.target_test.images, pair.source_test.images)
    assert backwards.source_test is None and backwards.target == "mnist"
    # Without a source test split, a held-out tenth of source train is scored, unseen in training.
    no_test = dataclasses.replace(pair, source_test=None)
    held = reverse_pair(no_test, pseudo, seed=3)
    assert len(held.target_test) == len(pair.source_train) // 10
    assert len(held.target_train) + len(held.target_test) == len(pair.source_train)
    trained = {bytes(image.numpy()) for image in held.target_train.images}
    assert not any(bytes(image.numpy()) in trained for image in held.target_test.images)
    with pytest.raises(ValueError, match="pseudo-labels"):
        reverse_pair(pair, pseudo[:-1])


def test_wrong_pseudo_labels_score_low_right_ones_high(digit_root):
    """The score is the reverse model's source accuracy: labels permuted class by class make a
    model that names every source digit wrongly, right labels one that names them well."""
    adapter = DomainAdapter(method="source_only", epochs=4, steps_per_epoch=15, device="cpu",
                            data_root=digit_root, progress=False).fit("mnist", "mnist_m")
    truth = adapter.pair_.target_train.labels
    scores = {}
    for name, labels in (("right", truth), ("permuted", (truth + 1) % 10)):
        adapter.predict = lambda images, labels=labels: labels  # the forward model's "opinion"
        scores[name] = reverse_validation(adapter, progress=False)["score"]
    assert scores["right"] >= 0.8
    assert scores["permuted"] <= 0.2


def test_reverse_validate_command_writes_its_record_resumes_and_refuses_new_labels(
        digit_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["adapt", "--method", "dann", "--source", "mnist", "--target", "mnist_m",
                 "--epochs", "1", "--steps-per-epoch", "3", "--device", "cpu", "--quiet",
                 "--ema-decay", "0.9", "--out", str(run), "--data-root", str(digit_root)]) == 0
    args = ["reverse-validate", str(run), "--epochs", "2", "--device", "cpu", "--quiet",
            "--data-root", str(digit_root)]
    assert main(args) == 0
    assert "reverse validation of" in capsys.readouterr().out
    record = json.loads((run / "reverse_validation.json").read_text())
    assert 0.0 <= record["score"] <= 1.0 and record["reverse_epochs"] == 2
    assert record["scored_on"] == "source test split" and record["scored_images"] == 32
    assert sum(record["pseudo_label_counts"].values()) == 96
    reverse_config = json.loads((run / "reverse_validation" / "config.json").read_text())
    assert reverse_config["method"] == "dann" and reverse_config["ema_decay"] == 0.9
    assert reverse_config["source"] == "mnist_m (pseudo-labelled)"
    # A second call finds the finished reverse run and gives the same score without training.
    lines = (run / "reverse_validation" / "metrics.jsonl").read_text()
    assert main(args) == 0
    assert json.loads((run / "reverse_validation.json").read_text())["score"] == record["score"]
    assert (run / "reverse_validation" / "metrics.jsonl").read_text() == lines
    # Another model in the folder (other pseudo-labels) must not continue that reverse run.
    (run / "reverse_validation" / "pseudo_labels.sha256").write_text("0" * 64 + "\n")
    assert main(args) == 2
    assert "other pseudo-labels" in capsys.readouterr().err


def test_reverse_validation_refuses_the_oracle_and_a_folder_without_a_run(digit_root, tmp_path,
                                                                          capsys):
    oracle = DomainAdapter(method="target_only", epochs=1, steps_per_epoch=2, device="cpu",
                           data_root=digit_root, progress=False).fit("mnist", "mnist_m")
    with pytest.raises(TransferkitError, match="target_only"):
        reverse_validation(oracle)
    assert main(["reverse-validate", str(tmp_path), "--quiet"]) == 2
    assert "no config.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # refused by the argument parser
        main(["reverse-validate", str(tmp_path), "--epochs", "0"])
    assert refused.value.code == 2
    (tmp_path / "config.json").write_text('{"method": "dann"}')
    assert main(["reverse-validate", str(tmp_path), "--quiet"]) == 2
    assert "missing source, target" in capsys.readouterr().err


def test_several_runs_of_one_pair_are_ranked_and_of_two_pairs_refused(digit_root, tmp_path,
                                                                       capsys):
    runs = []
    for method in ("source_only", "dann"):
        runs.append(str(tmp_path / method))
        assert main(["adapt", "--method", method, "--source", "mnist", "--target", "mnist_m",
                     "--epochs", "1", "--steps-per-epoch", "3", "--device", "cpu", "--quiet",
                     "--out", runs[-1], "--data-root", str(digit_root)]) == 0
    capsys.readouterr()
    assert main(["reverse-validate", *runs, "--epochs", "1", "--device", "cpu", "--quiet",
                 "--data-root", str(digit_root)]) == 0
    out = capsys.readouterr().out
    scores = {run: json.loads((tmp_path / run / "reverse_validation.json").read_text())["score"]
              for run in runs}
    best = max(runs, key=lambda run: scores[run])
    assert f"highest reverse-validation score: {best} ({scores[best]:.4f})" in out
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((tmp_path / "dann" / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "source": "svhn", "target": "mnist"}))
    assert main(["reverse-validate", runs[0], str(other), "--quiet"]) == 2
    assert "one domain pair" in capsys.readouterr().err


def test_a_loaded_run_predicts_as_the_fitted_one(digit_root, tmp_path):
    fitted = DomainAdapter(method="dann", epochs=1, steps_per_epoch=3, device="cpu",
                           run_dir=tmp_path / "run", data_root=digit_root,
                           ema_decay=0.9, progress=False).fit("mnist", "mnist_m")
    loaded = DomainAdapter.load(tmp_path / "run", data_root=digit_root, progress=False)
    images = fitted.pair_.target_test.images
    assert torch.equal(loaded.predict(images), fitted.predict(images))
    assert loaded.score() == fitted.score()
