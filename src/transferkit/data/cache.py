"""Decode once, then memory-map: cached uint8 arrays keyed by the source files' identity.

The key is the data set, split, format and each source file's path, size and modification
time, so replacing or editing a file invalidates its cache. Entries are written to a
temporary folder and renamed into place, so an interrupted decode never leaves a half cache.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import torch

from transferkit.data.images import ImageSet, RaggedImages
from transferkit.errors import TransferkitError

CACHE_VERSION = 1


@contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file beside ``path`` to write, renamed onto ``path`` when the block ends
    without an error and removed when it fails (or is interrupted): readers see the old file
    or the new one whole, never half of one. The one atomic write of the caches (decoded
    common forms, frozen-prefix activations)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_rows(path: Path, count: int, chunks: Iterable[np.ndarray],
               empty: tuple[tuple[int, ...], object] | None = None) -> int:
    """``count`` rows arriving a chunk at a time, written to ``path`` as one ``.npy`` file whole
    or not at all (:func:`atomic_path`), without holding more than a chunk in memory. ``empty``
    (a row's shape, the type) writes a file of no rows when none come. Returns the file's size
    in bytes. Plain writes, not a writable memory map, so a full disk is an ``OSError``
    (ENOSPC), not the SIGBUS a map's page fault would give."""
    with atomic_path(path, suffix=".tmp.npy") as tmp, open(tmp, "wb") as f:
        row, start = None, 0

        def header(shape: tuple[int, ...], dtype: object) -> None:
            np.lib.format.write_array_header_1_0(f, {
                "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                "fortran_order": False, "shape": (count, *shape)})

        if count == 0 and empty is not None:
            row = (tuple(empty[0]), np.dtype(empty[1]))
            header(*row)
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk)
            if row is None:
                row = (chunk.shape[1:], chunk.dtype)
                header(*row)
            elif (chunk.shape[1:], chunk.dtype) != row:
                raise ValueError(f"{path}: a chunk of rows {chunk.shape[1:]} {chunk.dtype} after rows "
                                 f"{row[0]} {row[1]}")
            f.write(memoryview(chunk).cast("B"))
            start += len(chunk)
        if row is None or start != count:
            raise ValueError(f"{path}: {start} rows arrived, {count} expected")
        f.flush()
        return f.tell()


def map_rows(path: Path, shape: tuple[int, ...] | None = None, dtype: object = None) -> torch.Tensor | None:
    """The ``.npy`` file at ``path`` memory-mapped read-only, as a tensor (nothing writes to
    it: batches are copied out of it; a read-only shared map, unlike a copy-on-write one, is not
    charged against memory, so a file larger than memory maps); None when it is missing,
    truncated, or not of ``shape``/``dtype`` where they are given. Other errors (permissions,
    I/O) are raised."""
    try:
        array = np.load(path, mmap_mode="r")
    except (FileNotFoundError, ValueError, EOFError):
        return None
    if ((shape is not None and tuple(array.shape) != tuple(shape))
            or (dtype is not None and array.dtype != dtype) or not array.flags.c_contiguous):
        return None
    with warnings.catch_warnings():  # read-only by design; torch warns that it is not writable
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def disk_error(folder: Path, exc: OSError, what: str) -> TransferkitError:
    """The one-line error for ``what`` that could not be written to (or read from) ``folder``
    of the cache: images that do not fit in memory are kept there."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "free some space, or point TRANSFERKIT_CACHE at a disk that has it"
    else:
        hint = "point TRANSFERKIT_CACHE at a folder this user can write"
    return TransferkitError(f"{folder}: could not keep {what} there ({exc.strerror or exc}); they do "
                            f"not fit in memory, so they are read from disk: {hint}")


def rows_on_disk(path: Path, count: int, chunks: Iterable[np.ndarray], what: str,
                 empty: tuple[tuple[int, ...], object] | None = None, keep: bool = True) -> torch.Tensor:
    """:func:`write_rows` then :func:`map_rows`: rows that do not fit in memory, read back from
    ``path`` a batch at a time. ``keep=False`` unlinks the file once mapped (the map holds it
    until freed). A disk that refuses ``what`` is one line (:func:`disk_error`)."""
    try:
        write_rows(path, count, chunks, empty)
        mapped = map_rows(path)
    except OSError as exc:
        raise disk_error(path.parent, exc, what) from None
    if not keep:
        with suppress(OSError):  # where a mapped file cannot be unlinked, it stays
            path.unlink()
    if mapped is None:
        raise TransferkitError(f"{path}: written but not readable back")
    return mapped


def cache_key(parts: dict[str, object], files: list[Path]) -> str:
    identity = dict(parts, version=CACHE_VERSION, files=[])
    for path in files:
        stat = path.stat()
        identity["files"].append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    blob = json.dumps(identity, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _save(directory: Path, image_set: ImageSet) -> None:
    images = image_set.images
    if isinstance(images, RaggedImages):
        np.save(directory / "pixels.npy", images.pixels)
        np.save(directory / "offsets.npy", images.offsets)
        np.save(directory / "shapes.npy", images.shapes)
    else:
        np.save(directory / "images.npy", images)
    np.save(directory / "labels.npy", image_set.labels)
    (directory / "classes.json").write_text(json.dumps(list(image_set.classes)))


def _load(directory: Path) -> ImageSet:
    def array(name: str) -> np.ndarray:
        return np.load(directory / name, mmap_mode="r")

    if (directory / "images.npy").exists():
        images: np.ndarray | RaggedImages = array("images.npy")
    else:
        images = RaggedImages(array("pixels.npy"), array("offsets.npy"), array("shapes.npy"))
    classes = tuple(json.loads((directory / "classes.json").read_text()))
    return ImageSet(images, np.asarray(array("labels.npy")), classes)


def cached(
    root: Path, name: str, key: str, build: Callable[[], ImageSet]
) -> tuple[ImageSet, bool]:
    """The cached set under ``root/name-key``, building and storing it on a miss.

    Returns the set and whether it came from the cache. A cache that cannot be written
    (read-only home, full disk) is not an error: the decoded set is returned uncached. A
    write that fails in any way removes its staging folder.
    """
    directory = root / f"{name}-{key}"
    if (directory / "classes.json").exists():
        return _load(directory), True
    image_set = build()
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    except OSError:
        return image_set, False
    try:
        _save(staging, image_set)
        os.replace(staging, directory)
    except BaseException as exc:  # also an interrupt: never leave a half-written folder behind
        shutil.rmtree(staging, ignore_errors=True)
        if not isinstance(exc, OSError):
            raise
        if not (directory / "classes.json").exists():
            return image_set, False
        # else another process won the race to rename; its copy is as good as ours
    return _load(directory), False
