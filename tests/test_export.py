"""Issue 23, item 5: ``transferkit export`` writes a run's model as ONNX (or a torch.export
program) with its preprocessing beside it, and the exported model, fed images prepared by
following that description, agrees with ``transferkit predict`` on the same files: top-1
identical, every probability within 1e-4."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from fakes import encode, two_class_images, write_digit_pair, write_two_class_data
from PIL import Image

from transferkit import DomainAdapter
from transferkit.cli import main

ort = pytest.importorskip("onnxruntime")  # the export extra: pip install 'transferkit[export]'

TOLERANCE = 1e-4  # the bar for every probability


# ---------------------------------------------------------------- runs and images


@pytest.fixture(scope="module")
def digit_run(tmp_path_factory):
    """A DANN run on the paper's MNIST network (mnist → mnist_m: center crop / pad to 28)."""
    root = write_digit_pair(tmp_path_factory.mktemp("digits"), n_train=40, n_test=16)
    run = tmp_path_factory.mktemp("runs") / "digit"
    DomainAdapter(method="dann", epochs=1, steps_per_epoch=2, batch_size=8, device="cpu", run_dir=run,
                  data_root=root, progress=False).fit("mnist", "mnist_m")
    return run


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_two_class_data(tmp_path_factory.mktemp("photos"), {"train": 16, "val": 8, "test": 8})


@pytest.fixture(scope="module")
def new_images(tmp_path_factory):
    """Images a caller might send: RGB and gray, PNG and JPEG, square and not, smaller and
    larger than the networks' inputs, one exactly 28×28 (the digit network's size)."""
    folder = tmp_path_factory.mktemp("new")
    rng = np.random.default_rng(5)
    photos, _ = two_class_images(4, 36, seed=7)
    shapes = [(28, 28, 3, "PNG"), (20, 26, 3, "PNG"), (45, 37, 1, "PNG"), (33, 50, 3, "JPEG")]
    for index, (height, width, channels, fmt) in enumerate(shapes):
        pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
        pixels[height // 4 : height // 2, width // 3 : width // 2] = 255  # something to see
        (folder / f"digit{index}.{fmt.lower()}").write_bytes(encode(pixels, fmt))
    for index, photo in enumerate(photos):
        (folder / f"photo{index}.jpg").write_bytes(encode(photo, "JPEG"))
    return folder


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _predicted(capsys, run: Path, images: Path, classes: list[str]) -> dict[str, np.ndarray]:
    """``transferkit predict --json``: every class's probability for each file, in class order."""
    code, out, err = _cli(capsys, "predict", run, images, "--top", len(classes), "--json")
    assert code == 0, err
    rows = {}
    for line in out.splitlines():
        row = json.loads(line)
        by_class = {entry["class"]: entry["probability"] for entry in row["top"]}
        rows[Path(row["file"]).name] = np.array([by_class[name] for name in classes])
    return rows


# ---------------------------------------------------------------- a caller without transferkit


def _center_crop_or_pad(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The description's words for ``center_crop_or_pad``, in numpy (H×W×C)."""
    for axis, want in enumerate(size):
        have = image.shape[axis]
        if have > want:
            start = (have - want) // 2
            image = np.take(image, range(start, start + want), axis=axis)
        elif have < want:
            widths = [(0, 0)] * image.ndim
            widths[axis] = ((want - have) // 2, want - have - (want - have) // 2)
            image = np.pad(image, widths)
    return image


def _prepare(path: Path, steps: list[dict]) -> np.ndarray:
    """One file made into the graph's input by following the description's steps, written from
    the description alone (PIL, numpy and torchvision's functions, none of transferkit's)."""
    image: np.ndarray | torch.Tensor | None = None
    for step in steps:
        op = step["op"]
        if op == "decode":
            assert step["mode"] == "RGB"
            image = np.array(Image.open(path).convert("RGB"))
        elif op == "center_crop_or_pad":
            image = _center_crop_or_pad(image, tuple(step["size"]))
        elif op == "resize":
            if image.shape[:2] != tuple(step["size"]):
                float_pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float()
                resized = torch.nn.functional.interpolate(float_pixels, size=tuple(step["size"]),
                                                          mode="bilinear", antialias=True,
                                                          align_corners=False)
                image = resized.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
        elif op == "resize_shorter_side":
            image = TF.resize(torch.from_numpy(image).permute(2, 0, 1), step["size"], antialias=True)
            image = image.permute(1, 2, 0).numpy()
        elif op == "center_crop":
            image = TF.center_crop(torch.from_numpy(image).permute(2, 0, 1), step["size"])
            image = image.permute(1, 2, 0).numpy()
        elif op == "to_float":
            image = (image.astype(np.float32) / np.float32(step["divide_by"])).transpose(2, 0, 1)
        else:
            raise AssertionError(f"the description names a step this caller does not know: {op}")
    return np.ascontiguousarray(image, dtype=np.float32)


def _batch(folder: Path, steps: list[dict]) -> tuple[list[str], np.ndarray]:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    return [p.name for p in files], np.stack([_prepare(p, steps) for p in files])


def _assert_agrees(expected: dict[str, np.ndarray], names: list[str], got: np.ndarray) -> float:
    """Every probability within 1e-4 of predict's, and the same top-1 class for each image
    whose two most likely classes are further apart than twice that (a nearer pair may swap
    within the tolerance: allowed for at most one image, which the fixtures do not produce)."""
    want = np.stack([expected[name] for name in names])
    assert got.shape == want.shape
    difference = float(np.abs(got - want).max())
    assert difference <= TOLERANCE, difference
    ordered = np.sort(want, axis=1)
    clear = ordered[:, -1] - ordered[:, -2] > 2 * TOLERANCE
    assert clear.sum() >= len(names) - 1, ordered[:, -2:]
    assert (got.argmax(1)[clear] == want.argmax(1)[clear]).all()
    return difference


def _description(model: Path) -> dict:
    description = json.loads(Path(f"{model}.json").read_text())
    assert description["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    return description


# ---------------------------------------------------------------- the checks


def test_an_exported_digit_network_agrees_with_predict_under_onnxruntime(digit_run, new_images, capsys):
    code, out, err = _cli(capsys, "export", digit_run)
    assert code == 0, err
    model = digit_run / "model.onnx"
    assert f"onnx model: {model}" in out and f"{model}.json" in out
    description = _description(model)
    record = json.loads((digit_run / "preprocessing.json").read_text())
    assert {key: description[key] for key in record} == record  # the run's own record, as it is
    assert description["geometry"] == "center" and description["image_size"] == 28
    assert description["input"]["shape"] == ["batch", 3, 28, 28]
    assert [s["op"] for s in description["steps"]] == ["decode", "center_crop_or_pad", "to_float"]

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (graph_input,), (graph_output,) = session.get_inputs(), session.get_outputs()
    assert (graph_input.name, graph_input.shape[1:]) == ("images", [3, 28, 28])
    assert isinstance(graph_input.shape[0], str)  # a free batch axis
    assert graph_output.name == "probabilities"
    expected = _predicted(capsys, digit_run, new_images, description["classes"])
    names, batch = _batch(new_images, description["steps"])
    got = session.run(None, {"images": batch})[0]
    _assert_agrees(expected, names, got)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)  # probabilities, not logits
    single = session.run(None, {"images": batch[2:3]})[0]  # one image: the same numbers
    np.testing.assert_allclose(single, got[2:3], atol=1e-6)

    # the comparison can fail: the other geometry (resize instead of crop/pad) is told apart
    wrong = [{**s, "op": "resize"} if s["op"] == "center_crop_or_pad" else s for s in description["steps"]]
    _, resized = _batch(new_images, wrong)
    assert float(np.abs(session.run(None, {"images": resized})[0] - got).max()) > 1e-3


def test_a_pretrained_backbone_adapt_run_exported_to_onnx_agrees_with_predict(photos, new_images, tmp_path,
                                                                               capsys):
    """A torchvision ResNet-18 (random weights: no download) adapted from labelled photos to
    unlabelled ones: images resized to 32×32, the backbone's ImageNet normalization in the
    graph, BatchNorm layers in inference mode."""
    target = tmp_path / "target"
    target.mkdir()
    for index, image in enumerate(two_class_images(8, 40, seed=3)[0]):
        (target / f"{index}.png").write_bytes(encode((image * 0.6).astype(np.uint8), "PNG"))
    run = tmp_path / "run"
    code, _, err = _cli(capsys, "adapt", "--method", "dann", "--source", f"folder:{photos}",
                        "--target", f"unlabelled:{target}", "--backbone", "resnet18", "--weights",
                        "random", "--image-size", "32", "--epochs", "1", "--batch-size", "8",
                        "--device", "cpu", "--quiet", "--out", run)
    assert code == 0, err
    code, out, err = _cli(capsys, "export", run, "--format", "onnx")
    assert code == 0, err
    description = _description(run / "model.onnx")
    assert description["geometry"] == "resize" and description["image_size"] == 32
    assert description["in_graph"]["mean"] == pytest.approx([0.485, 0.456, 0.406])  # ImageNet's
    expected = _predicted(capsys, run, new_images, description["classes"])
    names, batch = _batch(new_images, description["steps"])
    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    _assert_agrees(expected, names, session.run(None, {"images": batch})[0])


def test_a_finetune_run_exported_to_onnx_and_to_torch_export_agrees_with_predict(photos, new_images,
                                                                                  tmp_path, capsys):
    """A recipe run (fine-tuning Chollet's convnet at 48 px: images resized to 55 on their
    shorter side, then center-cropped) exported to --out elsewhere, the description beside that
    file; then as torch.export's program (TorchScript's replacement), loaded with torch alone."""
    run = tmp_path / "finetune"
    code, _, err = _cli(capsys, "finetune", "--data", f"folder:{photos}", "--backbone", "small_convnet",
                        "--weights", "random", "--image-size", "48", "--epochs", "2", "--finetune-epochs",
                        "1", "--views", "1", "--unfreeze", "block4", "--device", "cpu", "--quiet",
                        "--out", run)
    assert code == 0, err
    out_file = tmp_path / "shipped" / "cats_vs_dogs.onnx"
    code, out, err = _cli(capsys, "export", run, "--out", out_file)
    assert code == 0, err
    assert not (run / "model.onnx").exists()
    description = _description(out_file)
    assert description["run_kind"] == "finetune" and description["classes"] == ["cats", "dogs"]
    assert [(s["op"], s["size"]) for s in description["steps"][1:4]] == [
        ("resize_shorter_side", 55), ("center_crop", [55, 55]), ("center_crop", [48, 48])]
    expected = _predicted(capsys, run, new_images, description["classes"])
    names, batch = _batch(new_images, description["steps"])
    session = ort.InferenceSession(str(out_file), providers=["CPUExecutionProvider"])
    _assert_agrees(expected, names, session.run(None, {"images": batch})[0])

    code, out, err = _cli(capsys, "export", run, "--format", "pt2")
    assert code == 0, err
    assert f"pt2 model: {run / 'model.pt2'}" in out
    pt2 = _description(run / "model.pt2")
    assert pt2["steps"] == description["steps"] and pt2["load"] == "torch.export.load(FILE).module()"
    program = torch.export.load(str(run / "model.pt2")).module()
    with torch.no_grad():
        got = program(torch.from_numpy(batch)).numpy()
    _assert_agrees(expected, names, got)


# ---------------------------------------------------------------- refusals, one line each


@pytest.mark.parametrize("what", ["empty folder", "missing", "a file", "data folder"])
def test_a_folder_that_is_not_a_run_is_refused_in_one_line_naming_it(what, photos, tmp_path, capsys):
    target = {"empty folder": tmp_path / "empty", "missing": tmp_path / "nowhere",
              "a file": tmp_path / "notes.txt", "data folder": photos / "train"}[what]
    if what == "empty folder":
        target.mkdir()
    if what == "a file":
        target.write_text("hello")
    code, out, err = _cli(capsys, "export", target)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert str(target) in err and "expected the folder of a transferkit adapt, extract, finetune" in err
    assert not list(tmp_path.glob("**/model.onnx*"))


def test_format_and_missing_packages_are_one_line_each(digit_run, tmp_path, capsys, monkeypatch):
    for given, message in (("torchscript", "use pt2, torch.export's program"), ("tflite", "onnx, pt2")):
        with pytest.raises(SystemExit) as exit_code:  # refused by the parser, before any loading
            main(["export", str(digit_run), "--format", given])
        err = capsys.readouterr().err
        assert exit_code.value.code == 2 and "argument --format: " in err and message in err
    code, _, err = _cli(capsys, "export", digit_run, "--out", digit_run / "config")  # config.json
    assert code == 2 and "would replace" in err and str(digit_run / "config.json") in err
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # as if not installed
    code, _, err = _cli(capsys, "export", digit_run, "--out", tmp_path / "m.onnx")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "onnxruntime" in err and "pip install 'transferkit[export]'" in err
    assert not (tmp_path / "m.onnx").exists()


def test_an_export_that_onnxruntime_does_not_reproduce_is_refused_and_not_written(
        digit_run, tmp_path, capsys, monkeypatch):
    """The check after exporting: onnxruntime's probabilities 1e-3 off (an exporter bug, say)
    are refused in one line, and neither the model nor its description is written."""
    real = ort.InferenceSession.run
    monkeypatch.setattr(ort.InferenceSession, "run",
                        lambda self, *args, **kwargs: [o + 1e-3 for o in real(self, *args, **kwargs)])
    out_file = tmp_path / "model.onnx"
    code, out, err = _cli(capsys, "export", digit_run, "--out", out_file)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert str(digit_run) in err and "disagrees with the PyTorch model" in err and "0.001" in err
    assert list(tmp_path.iterdir()) == []
