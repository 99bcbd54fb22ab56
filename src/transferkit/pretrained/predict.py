"""Class and probability for image files, with a model saved by ``extract`` or ``finetune``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transferkit.data.decode import IMAGE_SUFFIXES, image_files
from transferkit.errors import DataError, TransferkitError
from transferkit.pretrained import imaging
from transferkit.pretrained.classifier import Classifier


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
    resized and centre-cropped to ``side``; a file that cannot be used raises the problem."""
    from transferkit.data.decode import read_image_file

    try:
        pixels = read_image_file(path, "RGB")
    except DataError as exc:  # the caller names the file
        raise TransferkitError(exc.problem) from None
    import torchvision.transforms.v2.functional as TF

    tensor = torch.from_numpy(np.array(pixels)).permute(2, 0, 1)
    return TF.center_crop(TF.resize(tensor, side, antialias=True), [side, side])


@torch.inference_mode()
def predict_files(
    model: Classifier,
    files: list[Path],
    batch_size: int = 32,
    top: int = 1,
    device: torch.device | None = None,
) -> list[Prediction]:
    device = device or torch.device("cpu")
    model = model.to(device).eval()
    if hasattr(model, "read"):  # an adapt run (transferkit.api.AdaptedModel)
        return _predict_adapted(model, files, batch_size, top, device)
    spec = model.backbone.spec
    size, side = spec.input_size, imaging.stored_size(spec.input_size, spec.crop_fraction)
    results: list[Prediction] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        tensors, ok = [], []
        for path in chunk:
            try:
                tensors.append(_read(path, side))
                ok.append(path)
            except TransferkitError as exc:
                results.append(Prediction(path, None, None, [], str(exc)))
        if not tensors:
            continue
        x = imaging.normalise(imaging.centre(torch.stack(tensors), size).to(device), spec.mean, spec.std)
        probs = model(x.contiguous(memory_format=torch.channels_last)).float().softmax(1).cpu()
        results += _ranked(ok, probs, model.classes, top)
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


def _predict_adapted(model, files: list[Path], batch_size: int, top: int,
                     device: torch.device) -> list[Prediction]:
    """:func:`predict_files` for an adapt run: each image brought to the run's size and
    geometry, normalised as its training images were."""
    results: list[Prediction] = []
    for start in range(0, len(files), batch_size):
        tensors, ok = [], []
        for path in files[start : start + batch_size]:
            try:
                tensors.append(model.read(path))
                ok.append(path)
            except DataError as exc:  # the caller names the file
                results.append(Prediction(path, None, None, [], exc.problem))
        if not tensors:
            continue
        batch = torch.stack(tensors).to(device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            probs = model(batch).float().softmax(1).cpu()
        results += _ranked(ok, probs, model.classes, top)
    order = {path: i for i, path in enumerate(files)}
    return sorted(results, key=lambda r: order[r.path])
