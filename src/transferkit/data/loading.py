"""Find a split on disk (or download it), decode it once, and serve it from the cache."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from transferkit.data.cache import cache_key, cached
from transferkit.data.decode import reason
from transferkit.data.download import download
from transferkit.data.formats import present
from transferkit.data.images import ImageSet
from transferkit.data.root import cache_dir, resolve_data_root
from transferkit.data.sources import DatasetSource, Layout, get_source
from transferkit.errors import DataMissingError, TransferkitError


def downloads_allowed() -> bool:
    """Downloads are on unless ``TRANSFERKIT_OFFLINE`` is set (tests set it)."""
    return os.environ.get("TRANSFERKIT_OFFLINE", "") in ("", "0")


def check_split(source: DatasetSource, split: str) -> None:
    if split not in source.splits:
        known = ", ".join(source.splits)
        raise TransferkitError(f"{source.name} has no split {split!r}: expected one of {known}")


def find_layout(source: DatasetSource, split: str, data_root: Path) -> Layout | None:
    """The first layout of ``split`` whose files are all on disk."""
    base = source.base(data_root)
    return next((lay for lay in source.splits[split] if present(lay.format, base)), None)


def locate(source: DatasetSource, split: str, data_root: Path, allow_download: bool) -> Layout:
    """The layout to read ``split`` from, downloading the official files if need be."""
    check_split(source, split)
    layout = find_layout(source, split, data_root)
    if layout is not None:
        return layout
    base = source.base(data_root)
    note = ""
    for candidate in source.splits[split]:
        if not candidate.downloadable:
            continue
        if not allow_download:
            note = " Downloads are off (TRANSFERKIT_OFFLINE is set)."
            break
        try:
            for name in candidate.format.files:
                remote = candidate.remote[name]
                download(remote.url, base / name, md5=remote.md5, sha256=remote.sha256)
            return candidate
        except OSError as exc:
            note = f" Download failed ({reason(exc)})."
            break
    wanted = [n for n in source.splits[split][0].format.files if not (base / n).exists()]
    raise DataMissingError(source.name, base, wanted, source.obtain + "." + note)


def _cache_name(source: DatasetSource, split: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{source.name}-{split}")[-80:]


def load_split(
    name: str, split: str, data_root: str | os.PathLike[str] | None = None,
    allow_download: bool | None = None,
) -> ImageSet:
    """Decoded uint8 images and labels of one split, e.g. ``load_split("mnist_m", "train")``.

    The first call decodes and caches; later calls memory-map the cache.
    """
    source = get_source(name)
    root = resolve_data_root(data_root)
    allow = downloads_allowed() if allow_download is None else allow_download
    layout = locate(source, split, root, allow)
    return read_layout(source, split, root, layout)


def read_layout(source: DatasetSource, split: str, data_root: Path, layout: Layout) -> ImageSet:
    base = source.base(data_root)
    classes = source.classes
    key = cache_key(
        {"source": source.name, "split": split, "format": repr(layout.format)},
        layout.format.members(base),
    )

    def build() -> ImageSet:
        images, labels = layout.format.read(base, len(classes) if classes else None)
        names = classes or tuple(str(i) for i in range(int(labels.max(initial=-1)) + 1))
        return ImageSet(images, np.asarray(labels, dtype=np.int64), names)

    image_set, _ = cached(cache_dir(), _cache_name(source, split), key, build)
    if source.directory is not None and split in TRAINING_SPLITS:  # user data: classes from files
        check_classes(source, split, image_set)
    return image_set


TRAINING_SPLITS = ("train", "all")


def check_classes(source: DatasetSource, split: str, image_set: ImageSet) -> None:
    """A split to train on must hold images of two classes at least: with one, every
    prediction is right and a run reports accuracy 1.0 having learnt nothing."""
    classes = image_set.classes
    if len(classes) < 2:
        raise TransferkitError(
            f"{source.name}: {split} has one class only ({', '.join(classes) or 'none'}); a "
            f"classifier needs at least two"
        )
    present = np.unique(np.asarray(image_set.labels))
    if len(present) == 1:
        label = int(present[0])
        name = f" ({classes[label]})" if classes[label] != str(label) else ""
        raise TransferkitError(
            f"{source.name}: {split} has {len(classes)} classes but every image is labelled "
            f"{label}{name}; a classifier needs images of at least two"
        )
