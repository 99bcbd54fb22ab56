"""Photos to network inputs: one resize per image, then crops and flips on uint8 tensors.

Every image is resized once (shorter side to ``round(size / crop_fraction)``) and center-cropped
to a square, so a split becomes one uint8 N×3×R×R tensor. Evaluation takes the center
``size``×``size`` crop (the usual 0.875 crop of ImageNet evaluation); training takes a random
resized crop (area 35–100 %, aspect 3/4–4/3) and a horizontal flip with probability ½.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator

import numpy as np
import torch
import torchvision
import torchvision.transforms.v2.functional as TF

from transferkit.data.images import ImageSet

CROP_FRACTION = 0.875
SCALE = (0.35, 1.0)
RATIO = (3 / 4, 4 / 3)
PREPARED_CACHE_VERSION = 1  # raise when _resized changes what it stores


def stored_size(size: int, crop_fraction: float = CROP_FRACTION) -> int:
    return int(round(size / crop_fraction))


def _resized(image_set: ImageSet, side: int, start: int, stop: int) -> torch.Tensor:
    out = torch.empty(stop - start, 3, side, side, dtype=torch.uint8)
    for i in range(start, stop):
        image = torch.from_numpy(np.array(image_set.images[i])).permute(2, 0, 1)
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        image = TF.resize(image, side, antialias=True)
        out[i - start] = TF.center_crop(image, [side, side])
    return out


def _chunks(image_set: ImageSet, side: int, progress: bool, rows: int) -> Iterator[torch.Tensor]:
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(image_set), desc=f"resize to {side}px", unit="img", leave=False)
    for start in range(0, len(image_set), rows):
        stop = min(start + rows, len(image_set))
        yield _resized(image_set, side, start, stop)
        if bar is not None:
            bar.update(stop - start)
    if bar is not None:
        bar.close()


def prepare(
    image_set: ImageSet, size: int, progress: bool = False, crop_fraction: float = CROP_FRACTION
) -> torch.Tensor:
    """uint8 N×3×R×R: each image's shorter side resized to R = size / crop_fraction, then
    center-cropped to a square (gray → RGB)."""
    side = stored_size(size, crop_fraction)
    out = torch.empty(len(image_set), 3, side, side, dtype=torch.uint8)
    start = 0
    for chunk in _chunks(image_set, side, progress, 256):
        out[start : start + len(chunk)] = chunk
        start += len(chunk)
    return out


def prepare_on_disk(
    image_set: ImageSet, size: int, progress: bool = False, crop_fraction: float = CROP_FRACTION
) -> torch.Tensor:
    """:func:`prepare`'s images memory-mapped from ``$TRANSFERKIT_CACHE/prepared/KEY.npy``, the
    file written a chunk of images at a time on the first use (keyed by the pixels, the stored
    side — size and crop — and the resize's version): a split that does not fit in memory,
    read from disk a batch at a time."""
    from transferkit.data.cache import disk_error, map_rows, rows_on_disk
    from transferkit.data.pairs import CHUNK_BYTES, pixels_identity
    from transferkit.data.root import cache_dir

    side = stored_size(size, crop_fraction)
    key = {"version": PREPARED_CACHE_VERSION, "torchvision": torchvision.__version__, "side": side,
           "count": len(image_set), "pixels": pixels_identity(image_set)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    path = cache_dir() / "prepared" / f"{side}px-{digest}.npy"
    shape = (len(image_set), 3, side, side)
    try:
        images = map_rows(path, shape, np.uint8)
    except OSError as exc:
        raise disk_error(path.parent, exc, "the resized images") from None
    if images is None:
        rows = max(1, CHUNK_BYTES // (3 * side * side))
        chunks = (chunk.numpy() for chunk in _chunks(image_set, side, progress, rows))
        images = rows_on_disk(path, len(image_set), chunks, "the resized images", empty=(shape[1:], np.uint8))
    return images


def identity(images: torch.Tensor) -> str:
    """A content hash of prepared images, so caches follow the pixels, not file names."""
    digest = hashlib.sha256()
    digest.update(str(tuple(images.shape)).encode())
    # a chunk at a time (the same digest as all at once): a memory-mapped split stays on disk
    step = max(1, (32 << 20) // max(1, images[0].numel() * images.element_size() if len(images) else 1))
    for start in range(0, len(images), step):
        digest.update(images[start : start + step].contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def standardize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Float N×C×H×W images with values in [0, 1] → (x − mean) / std per channel, as a new
    tensor (the input is left as it is: an exported graph's input must not be written to).
    ``mean`` and ``std``: sequences or tensors of C values. The one normalization of
    ``predict``, the recipes and ``export``."""
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 N×C×H×W pixels → :func:`standardize` of pixel / 255."""
    return standardize(images.float().div_(255), mean, std)


def center(images: torch.Tensor, size: int) -> torch.Tensor:
    return TF.center_crop(images, [size, size])


def augment(images: torch.Tensor, size: int, generator: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Random resized crop (+ horizontal flip unless ``flip`` is False: digits, text) of each
    uint8 image in a batch."""
    n, _, height, width = images.shape
    out = torch.empty(n, 3, size, size, dtype=torch.uint8, device=images.device)
    draws = torch.rand(n, 5, generator=generator).tolist()
    for i, (u_area, u_ratio, u_top, u_left, u_flip) in enumerate(draws):
        area = height * width * (SCALE[0] + (SCALE[1] - SCALE[0]) * u_area)
        log_ratio = math.log(RATIO[0]) + (math.log(RATIO[1]) - math.log(RATIO[0])) * u_ratio
        ratio = math.exp(log_ratio)
        w = min(width, int(round(math.sqrt(area * ratio))))
        h = min(height, int(round(math.sqrt(area / ratio))))
        top = int((height - h) * u_top)
        left = int((width - w) * u_left)
        crop = TF.resized_crop(images[i], top, left, h, w, [size, size], antialias=True)
        out[i] = TF.horizontal_flip(crop) if flip and u_flip < 0.5 else crop
    return out
