"""MNIST-M-like data sets, made the way Ganin et al. made MNIST-M, from any folder of photos.

Ganin et al. 2016 (JMLR, §5.2.1) built MNIST-M by blending each MNIST digit over a patch cut at
random from a color photo (theirs: BSDS500), I_out = |I_digit − I_patch| per pixel and
channel. Their released images are 32 × 32: the 28 × 28 digit with a 2-pixel border. This
module does the same with photos of the user's choosing:

1. every digit is binarized (a pixel > 0 becomes 255) and padded to 32 × 32 with zeros;
2. a photo is drawn at random, then a 32 × 32 patch at a random position of it;
3. the image is |digit − patch| in each of the three channels.

Everything random comes from one ``numpy`` generator seeded by ``seed``, drawn before any photo
is decoded (the patch position as a fraction of the room the photo leaves), and the zips are
written with fixed member dates: the same digits, photos and seed give the same bytes.

The output is a ``zip:`` data set (``train.zip`` and ``test.zip``: lossless WebP images and
``labels.csv``; ``classes.txt``; ``make.json`` with the settings and each zip's SHA-256), so
``--target zip:OUT`` reads it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from transferkit.data.decode import IMAGE_SUFFIXES, image_files, read_image_file
from transferkit.errors import DataError, TransferkitError

SIZE = 32  # MNIST-M's image side
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip can hold: no clock in the bytes


@dataclass(frozen=True)
class BlendPlan:
    """Where each output image's patch comes from: photo index and the patch position as a
    fraction of the room the photo leaves (top, left in [0, 1))."""

    photo: np.ndarray
    top: np.ndarray
    left: np.ndarray

    @classmethod
    def draw(cls, count: int, photos: int, generator: np.random.Generator) -> BlendPlan:
        return cls(generator.integers(0, photos, count), generator.random(count), generator.random(count))


def find_photos(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), in sorted order of their relative paths."""
    if not folder.is_dir():
        raise TransferkitError(f"--photos {folder}: not a folder (expected a folder of photos)")
    photos = image_files(folder)
    if not photos:
        raise TransferkitError(f"--photos {folder}: holds no photos "
                               f"(expected files ending in {', '.join(IMAGE_SUFFIXES)})")
    return photos


def _open_photo(path: Path) -> np.ndarray:
    rgb = read_image_file(path)  # any PIL mode to 8-bit RGB; errors name the file
    if rgb.shape[0] < SIZE or rgb.shape[1] < SIZE:
        raise DataError(path, f"photo of {rgb.shape[1]}×{rgb.shape[0]} pixels is smaller than the "
                              f"{SIZE}×{SIZE} patches cut from it")
    return rgb


def binarized_digits(digits: np.ndarray) -> np.ndarray:
    """N × 32 × 32 uint8: each 28 × 28 gray digit binarized (> 0 → 255), centered with a
    2-pixel border of zeros (MNIST-M's layout)."""
    if digits.ndim == 4:
        digits = digits[..., 0]
    height, width = digits.shape[1:3]
    if height > SIZE or width > SIZE:
        raise TransferkitError(f"digits of {width}×{height} pixels do not fit {SIZE}×{SIZE}")
    out = np.zeros((len(digits), SIZE, SIZE), dtype=np.uint8)
    top, left = (SIZE - height) // 2, (SIZE - width) // 2
    out[:, top : top + height, left : left + width] = np.where(digits > 0, 255, 0)
    return out


def blend(digits: np.ndarray, photos: list[Path], plan: BlendPlan,
          progress: Callable[[int], None] | None = None) -> np.ndarray:
    """N × 32 × 32 × 3 uint8: |digit − patch| per channel, the patches cut as ``plan`` says.
    Each photo is decoded once, and only one at a time is held in memory."""
    padded = binarized_digits(digits).astype(np.int16)[..., None]
    out = np.empty((len(padded), SIZE, SIZE, 3), dtype=np.uint8)
    order = np.argsort(plan.photo, kind="stable")
    boundaries = np.flatnonzero(np.diff(plan.photo[order])) + 1
    for group in np.split(order, boundaries):
        if len(group) == 0:
            continue
        photo = _open_photo(photos[int(plan.photo[group[0]])])
        room_top, room_left = photo.shape[0] - SIZE + 1, photo.shape[1] - SIZE + 1
        tops = (plan.top[group] * room_top).astype(np.int64)
        lefts = (plan.left[group] * room_left).astype(np.int64)
        for index, top, left in zip(group, tops, lefts, strict=True):
            patch = photo[top : top + SIZE, left : left + SIZE].astype(np.int16)
            out[index] = np.abs(padded[index] - patch).astype(np.uint8)
        if progress is not None:
            progress(len(group))
    return out


def _webp(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="WEBP", lossless=True, quality=100, method=4)
    return buffer.getvalue()


def write_zip(path: Path, images: np.ndarray, labels: np.ndarray,
              progress: Callable[[int], None] | None = None) -> str:
    """``images`` as lossless WebP members ``NNNNNNNN.webp`` plus ``labels.csv``, written to a
    temporary file then moved into place; returns the zip's SHA-256."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as archive:
            rows = ["file,label"]
            for index, (image, label) in enumerate(zip(images, labels, strict=True)):
                name = f"{index:08d}.webp"
                archive.writestr(zipfile.ZipInfo(name, ZIP_DATE), _webp(image))
                rows.append(f"{name},{int(label)}")
                if progress is not None and index % 500 == 499:
                    progress(500)
            archive.writestr(zipfile.ZipInfo("labels.csv", ZIP_DATE), "\n".join(rows) + "\n")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_blended(out: Path, photos_folder: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                 classes: list[str], seed: int = 0, describe: dict | None = None,
                 progress: bool = True) -> dict:
    """Write a blended data set to ``out``: for each split (name → (digits, labels)), its
    images blended over patches of ``photos_folder``'s photos. Returns what ``make.json``
    records."""
    from tqdm import tqdm

    photos = find_photos(photos_folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TransferkitError(f"--out {out}: cannot make the folder ({exc.strerror or exc})") from None
    generator = np.random.default_rng(seed)
    plans = {split: BlendPlan.draw(len(digits), len(photos), generator)
             for split, (digits, _) in splits.items()}  # all draws before any decoding
    from PIL import features

    record = {"made_by": "transferkit data make (Ganin et al. 2016, §5.2.1: |digit − patch|)",
              "seed": seed, "photos": str(photos_folder), "photo_count": len(photos),
              # the WebP bytes are those of this encoder: the same seed and versions give the
              # same files
              "pillow": Image.__version__, "libwebp": features.version("webp"),
              "image_size": SIZE, **(describe or {}), "splits": {}}
    for split, (digits, labels) in splits.items():
        with tqdm(total=2 * len(digits), desc=f"{split}: blend, encode", unit="img",
                  disable=not progress, leave=False) as bar:
            images = blend(digits, photos, plans[split], bar.update)
            try:
                digest = write_zip(out / f"{split}.zip", images, labels, bar.update)
            except OSError as exc:
                raise TransferkitError(f"{out / f'{split}.zip'}: could not write it "
                                       f"({exc.strerror or exc}); choose an --out with room") from None
        record["splits"][split] = {"count": len(images), "sha256": digest}
    try:
        (out / "classes.txt").write_text("\n".join(classes) + "\n")
        (out / "make.json").write_text(json.dumps(record, indent=2) + "\n")
    except OSError as exc:
        raise TransferkitError(f"--out {out}: could not write it ({exc.strerror or exc})") from None
    return record
