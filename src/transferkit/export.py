"""``transferkit export``: a run's trained model as one file that runs without transferkit, with
the preprocessing it expects written beside it.

The model is loaded exactly as ``transferkit predict`` loads it
(:func:`transferkit.predict.load_predictor`), and the graph written is the very
module ``predict`` runs (:class:`~transferkit.predict.ProbabilityModel`):

- input ``images``: float32 N×3×S×S, RGB, channels first, values in [0, 1] (pixel / 255), S the
  run's input size, N free (a dynamic batch axis);
- inside: the run's normalization, (x − mean) / std per channel, then its network;
- output ``probabilities``: float32 N×K, the softmax over the K classes, in the order of
  ``classes`` in the description. Probabilities, not logits: what ``predict`` prints, and what
  a caller compares with it; the logits are their logarithm up to a constant per image.

Decoding, resizing and cropping stay outside the graph (they depend on the file, not on
tensors of one shape); ``FILE.json`` beside the model says how, step by step (``steps``), and
carries the run's own preprocessing record (``image_size``, ``geometry``, ``mean``, ``std``,
``classes``; for an adapt run, its ``preprocessing.json`` as it is).

Formats: ``onnx`` (checked with onnxruntime before it is written: the probabilities of a few
random images must agree with the PyTorch model's within :data:`TOLERANCE`) and ``pt2``
(torch.export's ExportedProgram, for PyTorch without transferkit: ``torch.export.load(FILE)
.module()``; read back and checked the same way). TorchScript is not offered: torch 2.14
deprecates ``torch.jit.trace``, ``torch.jit.save`` and ``torch.jit.load`` (each warns that it
will go; "switch to torch.compile or torch.export"), and torch.export is its replacement.
"""

from __future__ import annotations

import hashlib
import importlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferkit import __version__
from transferkit.errors import TransferkitError
from transferkit.predict import Predictor, ProbabilityModel, load_predictor
from transferkit.training.runfolder import replace_file, write_error, write_json

FORMATS = {"onnx": "model.onnx", "pt2": "model.pt2"}
EXPORT_EXTRA = "pip install 'transferkit[export]'"
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")  # onnxscript: the dynamo exporter's translator
# The largest difference of any probability between the exported graph and the PyTorch model
# on the check's random images (the bar; measured differences are 1e-8 to 2e-6).
TOLERANCE = 1e-4
CHECK_BATCHES = (4, 1)  # random images per check batch: several, and one (the free batch axis)
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"


def description_path(model_path: str | Path) -> Path:
    """Where the description of an exported model lies: ``FILE.json`` beside ``FILE``."""
    path = Path(model_path)
    return path.with_name(path.name + ".json")


def format_problem(format: str) -> str | None:
    """What is wrong with ``format``, or None for one of :data:`FORMATS`."""
    if format in FORMATS:
        return None
    if format == "torchscript":
        return ("torch 2.14 deprecates TorchScript (torch.jit.trace, save and load warn that they will "
                "go); use pt2, torch.export's program that replaces it, or onnx")
    return f"expected one of {', '.join(FORMATS)}, got {format!r}"


def check_format(format: str) -> str:
    problem = format_problem(format)
    if problem is not None:
        raise TransferkitError(f"--format {format}: {problem}")
    return format


def require_onnx() -> dict[str, str]:
    """The versions of the ONNX packages, or one line saying how to install those missing."""
    versions, missing = {}, []
    for name in ONNX_PACKAGES:
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", "?")
        except ImportError:
            missing.append(name)
    if missing:
        raise TransferkitError(f"--format onnx needs the package(s) {', '.join(missing)}, not installed: "
                               f"{EXPORT_EXTRA}")
    return versions


def export_run(run_dir: str | Path, format: str = "onnx", out: str | Path | None = None) -> Path:
    """Write the trained model of ``run_dir`` (any adapt, extract, finetune or scratch run) as
    ``format`` to ``out`` (default ``RUN_DIR/model.onnx`` or ``RUN_DIR/model.pt2``) and its
    description to ``out.json`` (:func:`description_path`); returns the model's path. Each file
    is written whole (a part file, then renamed); nothing is written when the check fails."""
    check_format(format)
    versions = require_onnx() if format == "onnx" else {}
    run = Path(run_dir)
    path = Path(out) if out is not None else run / FORMATS[format]
    _check_out(run, path, format)
    predictor = load_predictor(run)
    model = predictor.model.cpu().eval()
    for parameter in model.parameters():  # a graph for inference: no gradients recorded
        parameter.requires_grad_(False)
    channels, size = int(model.mean.shape[1]), predictor.size
    example = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0))
    if format == "onnx":
        data, details = _onnx(model, example, run)
        details["runtime"] = f"onnxruntime {versions['onnxruntime']}"
    else:
        data, details = _pt2(model, example, run)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc) from None
    replace_file(path, lambda handle: handle.write(data))
    write_json(description_path(path), _description(predictor, model, run, path, data, format, details))
    return path


def _check_out(run: Path, path: Path, format: str) -> None:
    """``--out`` must name a file, and neither it nor its description may replace a file of the
    run (``--out RUN/model`` would put the description over a recipe run's ``model.json``)."""
    if path.is_dir():
        raise TransferkitError(f"--out {path} is a folder: expected a file name, such as "
                               f"{path / FORMATS[format]}")
    for target in (path, description_path(path)):
        ours = target.name.endswith((".onnx", ".pt2", ".onnx.json", ".pt2.json"))  # an earlier export
        if target.is_file() and not ours and run.is_dir() and target.resolve().parent == run.resolve():
            raise TransferkitError(f"--out {path}: would replace {target}, a file of the run; choose "
                                   f"another name, such as {run / FORMATS[format]}")


def _check(run_once, model: ProbabilityModel, size: int, what: str, run: Path) -> dict[str, Any]:
    """``run_once(images) -> probabilities`` (the exported graph) against ``model`` on random
    images in [0, 1]; refused as one line past :data:`TOLERANCE`."""
    generator = torch.Generator().manual_seed(1)
    channels, worst, count = int(model.mean.shape[1]), 0.0, 0
    for batch in CHECK_BATCHES:
        images = torch.rand(batch, channels, size, size, generator=generator)
        with torch.no_grad():
            expected = model(images).numpy()
        got = np.asarray(run_once(images))
        if got.shape != expected.shape or not np.isfinite(got).all():
            raise TransferkitError(f"{run}: the exported {what} gave {got.shape} values (finite: "
                                   f"{bool(np.isfinite(got).all())}) for {expected.shape} probabilities; "
                                   "nothing was written")
        worst, count = max(worst, float(np.abs(got - expected).max())), count + batch
    if worst > TOLERANCE:
        raise TransferkitError(f"{run}: the exported {what} disagrees with the PyTorch model: its "
                               f"probabilities differ by up to {worst:.2g} on {count} random images "
                               f"(more than {TOLERANCE:g}); nothing was written")
    return {"against": "the PyTorch model (what transferkit predict runs)",
            "random_images": count, "max_abs_difference": worst, "tolerance": TOLERANCE}


def _onnx(model: ProbabilityModel, example: torch.Tensor, run: Path) -> tuple[bytes, dict[str, Any]]:
    """The ONNX graph of ``model``, checked with onnxruntime.

    The exporter is torch.onnx's ``dynamo=True`` one (torch.export's graph, translated by
    onnxscript): torch 2.14's default and maintained path. The TorchScript-based exporter
    (``dynamo=False``) is faster (0.2–3 s a network against 1–11 s on a 2-core CPU) but warns
    that it will be removed. Checked here on every family transferkit builds: the digit networks,
    small_convnet, torchvision ResNets, timm's MobileNetV2 and EfficientNet-Lite0, each within
    2e-6 of PyTorch under onnxruntime."""
    import onnxruntime

    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes={"images": {0: batch}},
                                    verbose=False)
        data = program.model_proto.SerializeToString()
    except Exception as exc:  # the exporter raises many kinds; the user needs one line
        raise TransferkitError(f"{run}: torch.onnx could not export this network ({type(exc).__name__}: "
                               f"{_first_line(exc)}); try --format pt2") from exc
    opset = next((o.version for o in program.model_proto.opset_import if o.domain in ("", "ai.onnx")), None)
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    verified = _check(lambda images: session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0],
                      model, example.shape[-1], "ONNX graph (under onnxruntime)", run)
    return data, {"exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
                  "opset": opset, "verified": verified}


def _pt2(model: ProbabilityModel, example: torch.Tensor, run: Path) -> tuple[bytes, dict[str, Any]]:
    """torch.export's program of ``model``, saved, read back and checked."""
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.export.export(model, (example,), dynamic_shapes={"images": {0: batch}})
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        data = buffer.getvalue()
        loaded = torch.export.load(io.BytesIO(data)).module()
    except Exception as exc:  # as above: one line, the cause under --debug
        raise TransferkitError(f"{run}: torch.export could not export this network ({type(exc).__name__}: "
                               f"{_first_line(exc)})") from exc

    def run_once(images: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return loaded(images).numpy()

    verified = _check(run_once, model, example.shape[-1], "program (read back with torch.export.load)", run)
    return data, {"exporter": f"torch.export.export, torch {torch.__version__}",
                  "load": "torch.export.load(FILE).module()", "verified": verified}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no message"


def _description(predictor: Predictor, model: ProbabilityModel, run: Path, path: Path, data: bytes,
                 format: str, details: dict[str, Any]) -> dict[str, Any]:
    """What a caller needs besides the graph: the run's preprocessing record (its fields
    first), the steps from a file to the input, the input and output, and the check."""
    channels, size, classes = int(model.mean.shape[1]), predictor.size, list(predictor.classes)
    mean, std = model.mean.flatten().tolist(), model.std.flatten().tolist()
    if predictor.record is not None:  # an adapt run's preprocessing.json, as it is
        record = dict(predictor.record)
    else:  # a recipe run's, in the same fields
        record = {"image_size": size, "geometry": "resize_shorter_side_and_center_crop", "mean": mean,
                  "std": std, "classes": classes}
    return {
        **record,
        "model": path.name,
        "format": format,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": ["batch", channels, size, size],
                  "layout": "NCHW", "channels": "RGB", "range": [0.0, 1.0]},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", len(classes)],
                   "values": "softmax probabilities, one column per class in the order of classes"},
        "steps": predictor.steps,
        "in_graph": {"normalization": "(x - mean) / std per channel", "mean": mean, "std": std,
                     "then": "the network, then softmax over the classes"},
        **details,
        "run": str(run.resolve()),
        "run_kind": predictor.kind,
        "transferkit": __version__,
    }
