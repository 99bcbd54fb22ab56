"""Decode image bytes to uint8 arrays, in parallel threads (Pillow releases the GIL)."""

from __future__ import annotations

import codecs
import io
import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from transferkit.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".ppm", ".bmp", ".pgm", ".tif", ".tiff")

# Decoding sits many calls below the command that asked for it; ``--quiet`` reaches it here.
_SHOW_PROGRESS: ContextVar[bool] = ContextVar("transferkit_decode_progress", default=True)


@contextmanager
def decode_progress(enabled: bool) -> Iterator[None]:
    """Show (or hide) the decoding progress bars inside the ``with`` block."""
    token = _SHOW_PROGRESS.set(enabled)
    try:
        yield
    finally:
        _SHOW_PROGRESS.reset(token)


_OBJECT_REPR = re.compile(r"\s*<[^<>]*\bat 0x[0-9a-fA-F]+>")
_BOMB = re.compile(r"\((\d+) pixels\) exceeds limit of (\d+) pixels")
# Modes of more than 8 bits per sample; everything else Pillow converts to RGB/L correctly.
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "I;16S", "I;16BS", "I;16LS", "F")


def reason(exc: BaseException) -> str:
    """An exception's text for a message to a user: without object reprs such as
    ``<_io.BytesIO object at 0x7f…>`` (which name nothing the user has), never empty."""
    text = " ".join(_OBJECT_REPR.sub("", str(exc)).split())
    return text or exc.__class__.__name__


def decode_text(data: bytes, where: Path | str) -> str:
    """``data`` as UTF-8 text (a leading UTF-8 byte-order mark, as Excel writes, is dropped);
    other encodings are refused, naming ``where`` and the first byte that is not UTF-8."""
    for marks, encoding in (((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE), "UTF-32"),
                            ((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE), "UTF-16")):
        if data.startswith(marks):
            raise DataError(where, f"starts with a {encoding} byte-order mark; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            where, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}); save it as UTF-8"
        ) from None


def read_text_file(path: Path) -> str:
    """A small text file (labels, class names, checksums) as UTF-8, see :func:`decode_text`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(path, f"cannot be read ({reason(exc)})") from None
    return decode_text(data, path)


def _eight_bit(image: Image.Image) -> Image.Image:
    """An image of more than 8 bits per sample as 8-bit gray (mode L).

    16-bit samples (I;16…, and I, as which Pillow opens 16-bit PGMs) keep their high byte, as
    Pillow itself reduces 16-bit RGB PNGs; floats (F) in [0, 1] are scaled by 255, floats up to
    255 kept, larger ones taken as 16-bit samples. Pillow's own conversion clips all of these at
    255: a 16-bit photo became white.
    """
    values = np.asarray(image)
    if image.mode == "F":
        values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=65535.0, neginf=0.0)
        top = float(values.max(initial=0.0))
        if top <= 1.0:
            values = np.rint(values * 255.0)
        elif top <= 255.0:
            values = np.rint(values)
        else:
            values = np.floor(np.clip(values, 0.0, 65535.0) / 256.0)
        pixels = np.clip(values, 0, 255).astype(np.uint8)
    else:
        pixels = (np.clip(values, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
    return Image.fromarray(pixels)


def _bomb_problem(exc: Image.DecompressionBombError) -> str:
    match = _BOMB.search(str(exc))
    if match is None:
        return f"refused as a possible decompression bomb ({reason(exc)})"
    pixels, limit = (int(n) for n in match.groups())
    return (
        f"image of {pixels:,} pixels, over the {limit:,} that Pillow opens (a decompression "
        f"bomb?); shrink it if it is a real photo"
    )


def decode_image(
    data: bytes, name: str, mode: str = "RGB", size: tuple[int, int] | None = None
) -> np.ndarray:
    """Pixels of one encoded image as H×W×C uint8; ``size`` (W, H) resizes (bilinear).

    Every mode Pillow opens becomes ``mode`` (RGB or L) at 8 bits per sample, 16-bit and
    floating-point images scaled down (:func:`_eight_bit`). ``name`` is the file the bytes
    came from, used in the error for a truncated, non-image or oversized file.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes fully here: a truncated file fails now, not later
            converted = (_eight_bit(image) if image.mode in _WIDE_MODES else image).convert(mode)
    except Image.DecompressionBombError as exc:
        raise DataError(name, _bomb_problem(exc)) from None
    except UnidentifiedImageError:
        raise DataError(name, "not a readable image (not a format Pillow recognizes)") from None
    except MemoryError:
        raise
    except Exception as exc:  # Pillow raises many types for a malformed file
        raise DataError(name, f"not a readable image ({reason(exc)})") from None
    if size is not None and converted.size != size:
        converted = converted.resize(size, Image.BILINEAR)
    array = np.asarray(converted, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder``, recursively, in sorted order of their paths below it;
    hidden files (``.name``, such as macOS's ``._photo.jpg``) left out."""
    return sorted((p for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")),
                  key=lambda p: p.relative_to(folder).parts)


def read_image_file(path: Path, mode: str = "RGB") -> np.ndarray:
    """One image file as H×W×C uint8 (see :func:`decode_image`); errors name ``path``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(path, f"cannot be read ({reason(exc)})") from None
    return decode_image(data, str(path), mode)


def decode_many(
    items: Sequence[tuple[str, Callable[[], bytes]]],
    mode: str = "RGB",
    size: tuple[int, int] | None = None,
    desc: str = "decoding",
) -> list[np.ndarray]:
    """Decode (name, read_bytes) pairs in order, with a progress bar on stderr.

    Reading stays on the calling thread (zip files are not thread-safe); decoding runs on
    a thread pool.
    """
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool, tqdm(
        total=len(items), desc=desc, unit="img", leave=False,
        disable=len(items) < 2000 or not _SHOW_PROGRESS.get(),
    ) as bar:
        futures = []
        results = []
        try:
            for name, read in items:
                futures.append(pool.submit(decode_image, read(), name, mode, size))
            for future in futures:
                results.append(future.result())
                bar.update()
        except BaseException:
            for future in futures:  # the first error is the answer: decode no further
                future.cancel()
            raise
    return results
