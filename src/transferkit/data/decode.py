"""Decode image bytes to uint8 arrays, in parallel threads (Pillow releases the GIL)."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar

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


def decode_image(
    data: bytes, name: str, mode: str = "RGB", size: tuple[int, int] | None = None
) -> np.ndarray:
    """Pixels of one encoded image as H×W×C uint8; ``size`` (W, H) resizes (bilinear).

    ``name`` is the file the bytes came from, used in the error for a truncated or
    non-image file.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes fully here: a truncated file fails now, not later
            converted = image.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(name, f"not a readable image ({exc})") from None
    if size is not None and converted.size != size:
        converted = converted.resize(size, Image.BILINEAR)
    array = np.asarray(converted, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


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
        for name, read in items:
            futures.append(pool.submit(decode_image, read(), name, mode, size))
        results = []
        for future in futures:
            results.append(future.result())
            bar.update()
    return results
