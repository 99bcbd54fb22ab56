"""Class and probability for image files, with the model of any run folder (``adapt``,
``extract``, ``finetune``, ``scratch``).

One path from a file to probabilities, shared with ``transferkit export``
(:mod:`transferkit.export`): :func:`load_predictor` loads a run's model the one way each kind
of run is loaded and returns a :class:`Predictor`: ``read`` brings an image file to the
network's input (uint8 RGB at the run's size and geometry, ``steps`` says how in words), and
``model`` (:class:`ProbabilityModel`) takes those pixels / 255 to class probabilities, the
run's normalization inside.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transferkit.data import imaging
from transferkit.data.decode import IMAGE_SUFFIXES, image_files
from transferkit.errors import DataError, TransferkitError


@dataclass
class Prediction:
    path: Path
    label: str | None
    probability: float | None
    top: list[tuple[str, float]]
    error: str | None = None


def expand(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders searched recursively for image files (sorted)."""
    files: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found = image_files(path)
            if not found:
                raise TransferkitError(
                    f"{path}: folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise TransferkitError(f"{path}: no such file or folder")
    return files


def _read(path: Path, side: int) -> torch.Tensor:
    """One image as the training data was decoded (every mode, 16-bit ones scaled to 8 bits),
    resized and center-cropped to ``side``; a file that cannot be used raises the problem."""
    from transferkit.data.decode import read_image_file

    try:
        pixels = read_image_file(path, "RGB")
    except DataError as exc:  # the caller names the file
        raise TransferkitError(exc.problem) from None
    import torchvision.transforms.v2.functional as TF

    tensor = torch.from_numpy(np.array(pixels)).permute(2, 0, 1)
    return TF.center_crop(TF.resize(tensor, side, antialias=True), [side, side])


class ProbabilityModel(nn.Module):
    """A run's network with its input normalization and a softmax: float32 N×C×S×S images,
    pixel / 255 (values in [0, 1]), → N×K class probabilities in the order of ``classes``.
    What ``predict`` runs, and the graph ``export`` writes."""

    def __init__(self, network: nn.Module, mean, std, classes: tuple[str, ...]) -> None:
        super().__init__()
        self.network, self.classes = network, tuple(classes)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1).clone())
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1).clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(imaging.standardize(images, self.mean, self.std)).float().softmax(1)


# How every run's images are decoded (transferkit.data.decode.read_image_file), in words.
DECODE_STEP = {"op": "decode", "mode": "RGB",
               "does": "Pillow: Image.open(file).convert('RGB'), 8 bits per channel (gray and palette "
                       "images become RGB; 16-bit and float images are scaled to 8 bits first); no "
                       "EXIF rotation"}
SCALE_STEP = {"op": "to_float", "divide_by": 255.0,
              "does": "float32 pixel / 255, values in [0, 1], stacked as N x 3 x H x W (channels first, RGB)"}


@dataclass
class Predictor:
    """A run's model as ``predict`` uses it: ``read`` (file → uint8 3×S×S, raises
    :class:`TransferkitError` for a file it cannot use), ``model`` (pixels / 255 →
    probabilities), ``steps`` (from file to the model's input, in words), ``kind`` (``adapt`` or
    the recipe) and ``record`` (the run's own preprocessing record, where it has one)."""

    model: ProbabilityModel
    read: Callable[[Path], torch.Tensor]
    size: int
    steps: list[dict[str, Any]]
    kind: str
    record: dict[str, Any] | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        return self.model.classes


def load_predictor(run_dir: str | Path) -> Predictor:
    """The trained model of any run folder, loaded by that kind of run's own loader: an adapt
    run's by :class:`transferkit.api.AdaptedModel`, a recipe run's by
    :func:`transferkit.recipes.load_model`; a folder that is neither is one line."""
    run = Path(run_dir)
    expected = "expected the folder of a transferkit adapt, extract, finetune or scratch run"
    if not run.is_dir():
        what = "no such folder" if not run.exists() else "a file, not a folder"
        raise TransferkitError(f"{run}: not a saved model ({what}); {expected}")
    config = run / "config.json"
    if not any((run / name).is_file() for name in ("config.json", "model.json", "preprocessing.json")):
        raise TransferkitError(f"{run}: not a saved model (no config.json or model.json); {expected}")
    if (run / "preprocessing.json").is_file() or (
            config.is_file() and '"method"' in config.read_text(errors="replace")):
        from transferkit.api import AdaptedModel

        adapted = AdaptedModel(run)  # a transferkit adapt run
        network = ProbabilityModel(adapted.method, adapted.mean.flatten(), adapted.std.flatten(),
                                   adapted.classes).eval()
        return Predictor(network, adapted.read, adapted.image_size,
                         [DECODE_STEP, *adapted.read_steps(), SCALE_STEP], "adapt", adapted.record)
    from transferkit.recipes import load_model

    model = load_model(run)
    spec = model.backbone.spec
    size, side = spec.input_size, imaging.stored_size(spec.input_size, spec.crop_fraction)
    steps = [DECODE_STEP,
             {"op": "resize_shorter_side", "size": side, "interpolation": "bilinear", "antialias": True,
              "does": "resize so that the shorter side is this long and the longer one "
                      "int(size * longer / shorter) (torchvision transforms.v2.functional.resize on "
                      "the uint8 3xHxW tensor, bilinear, antialias=True)"},
             {"op": "center_crop", "size": [side, side],
              "does": "torchvision center_crop: offset round((side - size) / 2), Python's round"},
             {"op": "center_crop", "size": [size, size],
              "does": f"the central {size}×{size} (crop fraction {spec.crop_fraction}); torchvision "
                      "center_crop as above"},
             SCALE_STEP]
    kind = "recipe"
    with suppress(OSError, ValueError, AttributeError):  # unreadable: only the recipe's name is lost
        kind = str(json.loads((run / "model.json").read_text()).get("recipe", kind))
    network = ProbabilityModel(model, spec.mean, spec.std, model.classes).eval()
    return Predictor(network, lambda path: imaging.center(_read(path, side), size), size, steps, kind)


@torch.inference_mode()
def predict_files(
    predictor: Predictor,
    files: list[Path],
    batch_size: int = 32,
    top: int = 1,
    device: torch.device | None = None,
) -> list[Prediction]:
    """Each file read by ``predictor.read`` and classified by ``predictor.model``, batched;
    a file that cannot be used is a :class:`Prediction` with its ``error``, the others go on."""
    device = device or torch.device("cpu")
    model = predictor.model.to(device).eval()
    results: list[Prediction] = []
    for start in range(0, len(files), batch_size):
        tensors, ok = [], []
        for path in files[start : start + batch_size]:
            try:
                tensors.append(predictor.read(path))
                ok.append(path)
            except DataError as exc:  # the caller names the file
                results.append(Prediction(path, None, None, [], exc.problem))
            except TransferkitError as exc:
                results.append(Prediction(path, None, None, [], str(exc)))
        if not tensors:
            continue
        batch = torch.stack(tensors).to(device).contiguous(memory_format=torch.channels_last)
        probs = model(batch.float().div_(255)).cpu()
        results += _ranked(ok, probs, predictor.classes, top)
    order = {path: i for i, path in enumerate(files)}
    return sorted(results, key=lambda r: order[r.path])


def _ranked(paths: list[Path], probabilities: torch.Tensor, classes: tuple[str, ...],
            top: int) -> list[Prediction]:
    """Each image's ``top`` classes, most likely first."""
    predictions = []
    for path, p in zip(paths, probabilities, strict=True):
        values, index = p.topk(min(top, len(classes)))
        ranked = [(classes[i], float(v)) for v, i in zip(values, index, strict=True)]
        predictions.append(Prediction(path, ranked[0][0], ranked[0][1], ranked))
    return predictions
