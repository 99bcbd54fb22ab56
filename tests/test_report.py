"""``transferkit report``: a self-contained HTML page for adaptation and pretrained runs."""

from __future__ import annotations

import json
import re

from fakes import write_digit_pair, write_tiny_adapt_runs, write_two_class_data

from transferkit.cli import main


def _images(page: str) -> list[str]:
    return re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)


def test_report_of_an_adaptation_run_with_its_source_only_sibling(tmp_path, capsys):
    root = write_digit_pair(tmp_path / "data")
    runs = tmp_path / "runs" / "mnist-mnist_m"
    write_tiny_adapt_runs(root, runs, epochs=2)
    capsys.readouterr()
    reverse = {"score": 0.8125, "reverse_epochs": 2, "scored_on": "source test split"}
    (runs / "dann" / "seed0" / "reverse_validation.json").write_text(json.dumps(reverse))
    assert main(["report", str(runs / "dann" / "seed0"), "--samples", "30", "--data-root", str(root)]) == 0
    folder = runs / "dann" / "seed0" / "report"
    page = (folder / "report.html").read_text()
    assert len(_images(page)) == 5  # curves, class shares, confusion, samples, t-SNE — embedded
    assert "http://" not in page and "https://" not in page
    for name in ("curves.png", "confusion.png", "samples.png", "tsne.png"):
        assert (folder / name).stat().st_size > 1000
    summary = json.loads((folder / "summary.json").read_text())
    assert 0 <= summary["features_proxy_a_distance_before"] <= 2
    assert 0 <= summary["features_proxy_a_distance_after"] <= 2
    assert summary["features_before"] == "source_only (seed0)"
    assert summary["reverse_validation_score"] == 0.8125  # shown when reverse-validate ran
    assert "Reverse validation (label-free): 0.8125" in page


def test_report_of_an_sa_run_shows_sas_predictions_and_aligned_subspace(tmp_path, capsys):
    from transferkit import DomainAdapter

    root = write_digit_pair(tmp_path / "data")
    runs = write_tiny_adapt_runs(root, tmp_path / "runs" / "mnist-mnist_m")
    run = runs / "sa" / "seed0"
    DomainAdapter(method="sa", epochs=1, steps_per_epoch=2, device="cpu", run_dir=run,
                  data_root=root, progress=False,
                  init_from=runs / "source_only" / "seed0" / "model.safetensors").fit("mnist", "mnist_m")
    assert not (run / "metrics.jsonl").exists()  # SA trained nothing: no curves to draw
    capsys.readouterr()
    assert main(["report", str(run), "--samples", "30", "--data-root", str(root)]) == 0
    page = (run / "report" / "report.html").read_text()
    assert len(_images(page)) == 4  # class shares, confusion, samples, t-SNE
    assert "aligned" in page and "source_only/seed0/model.safetensors" in page
    assert "SA as read here" not in page  # its saved alignment predicts as the run recorded


def test_report_of_a_finetune_run(tmp_path, capsys):
    photos = write_two_class_data(tmp_path / "photos", {"train": 16, "val": 8, "test": 40})
    out = tmp_path / "run"
    assert (
        main(
            [
                "finetune",
                "--data",
                f"folder:{photos}",
                "--backbone",
                "small_convnet",
                "--weights",
                "random",
                "--image-size",
                "48",
                "--epochs",
                "2",
                "--finetune-epochs",
                "1",
                "--views",
                "1",
                "--unfreeze",
                "1",
                "--device",
                "cpu",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert main(["report", str(out), "--samples", "40"]) == 0
    page = (out / "report" / "report.html").read_text()
    assert len(_images(page)) == 4
    assert "test_accuracy" in page


def test_report_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a finished run folder" in capsys.readouterr().err


def test_report_of_an_adaptation_run_with_a_handful_of_test_images(tmp_path, capsys):
    from transferkit import DomainAdapter

    root = write_digit_pair(tmp_path / "data", n_train=20, n_test=3)
    run = tmp_path / "run"
    DomainAdapter(method="dann", epochs=1, steps_per_epoch=2, batch_size=8, device="cpu", run_dir=run,
                  data_root=root, progress=False).fit("mnist", "mnist_m")
    assert main(["report", str(run), "--samples", "10", "--data-root", str(root)]) == 0
    page = (run / "report" / "report.html").read_text()
    assert "Domain gap not measured: too few images" in page
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert summary["features_proxy_a_distance_after"] is None
