"""Domain pairs for unsupervised domain adaptation: a labelled source, an unlabelled target.

Both domains get one preprocessing, as in Ganin et al. 2016 (§5.2): gray images repeated to
three channels, both resized to a common size, and the per-channel mean of the training
images of both domains subtracted. Resizing is done once, here, on uint8 arrays; the mean is
subtracted per batch by :meth:`DomainPair.normalize`.

A pair whose images, in that common form, do not fit in memory (:func:`memory_budget`) is
*streamed*: each split's common form is written once to ``$TRANSFERKIT_CACHE/common/`` (a
chunk at a time, so nothing holds a whole split) and memory-mapped from there; training then
reads its batches from the file in DataLoader workers
(:class:`transferkit.training.batches.Streamed`), with the same sampling and the same pixels
as in memory.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from transferkit.data.cache import atomic_path, disk_error, map_rows, write_rows
from transferkit.data.images import ImageSet, RaggedImages
from transferkit.data.loading import load_split
from transferkit.data.root import cache_dir
from transferkit.errors import TransferkitError
from transferkit.names import GEOMETRIES


def center_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """Center-crop (larger sides) or zero-pad (smaller sides) N×C×H×W images to size×size,
    keeping the pixel scale."""
    height, width = images.shape[-2:]
    pad_height, pad_width = max(0, size - height), max(0, size - width)
    if pad_height or pad_width:
        images = F.pad(images, [pad_width // 2, pad_width - pad_width // 2,
                                pad_height // 2, pad_height - pad_height // 2])
        height, width = images.shape[-2:]
    top, left = (height - size) // 2, (width - size) // 2
    return images[..., top : top + size, left : left + size].contiguous()


def to_common_form(image_set: ImageSet, size: int, channels: int = 3,
                   geometry: str = "resize") -> torch.Tensor:
    """uint8 N×C×size×size: gray repeated to RGB, then brought to ``size``: ``resize``
    (bilinear, antialiased) or ``center`` (center crop / zero pad, see :func:`center_to`)."""
    if geometry not in GEOMETRIES:
        raise TransferkitError(f"geometry {geometry!r}: expected one of {', '.join(GEOMETRIES)}")
    if not isinstance(image_set.images, np.ndarray):  # photos of many sizes: one at a time
        out = torch.empty((len(image_set), channels, size, size), dtype=torch.uint8)
        for index, pixels in enumerate(image_set.images):
            single = ImageSet(np.ascontiguousarray(pixels)[None], image_set.labels[index : index + 1],
                              image_set.classes)
            out[index] = to_common_form(single, size, channels, geometry)[0]
        return out
    images, _ = image_set.to_tensors()
    if images.shape[1] == 1 and channels == 3:
        images = images.expand(-1, 3, -1, -1)
    elif images.shape[1] != channels:
        raise TransferkitError(f"cannot turn {images.shape[1]}-channel images into {channels}")
    if images.shape[-2:] == (size, size):
        return images.contiguous()
    if geometry == "center":
        return center_to(images, size)
    out = torch.empty((len(images), channels, size, size), dtype=torch.uint8)
    for start in range(0, len(images), 4096):  # bounded memory for the float copy
        chunk = images[start : start + 4096].float()
        resized = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True,
                                align_corners=False)
        out[start : start + 4096] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


@dataclass(frozen=True)
class DomainSplit:
    images: torch.Tensor  # uint8 N×C×H×W (memory-mapped from ``path`` when streamed)
    labels: torch.Tensor  # int64 N
    path: Path | None = None  # the common form's file on disk, for a streamed split

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class DomainPair:
    """``source_train`` and ``source_test`` are labelled; ``target_train`` is for adaptation
    without its labels (``target_train.labels`` exist only for the train-on-target oracle);
    ``target_test`` gives the final number only."""

    source: str
    target: str
    classes: tuple[str, ...]
    source_train: DomainSplit
    source_test: DomainSplit | None
    target_train: DomainSplit
    target_test: DomainSplit | None  # None: an unlabelled target (``unlabelled:PATH``)
    mean: torch.Tensor  # per-channel mean of source and target training pixels, in [0, 1]
    std: torch.Tensor | None = None  # per-channel divisor after the mean (None: 1)
    _means: dict[torch.device, torch.Tensor] = field(default_factory=dict, init=False,
                                                     repr=False, compare=False)
    _stds: dict[torch.device, torch.Tensor] = field(default_factory=dict, init=False,
                                                    repr=False, compare=False)

    @property
    def image_size(self) -> int:
        return int(self.source_train.images.shape[-1])

    @property
    def streamed(self) -> bool:
        """Whether the images are memory-mapped from disk rather than held in memory."""
        return self.source_train.path is not None

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N×C×H×W → float in [0, 1] minus the pair's mean (divided by ``std`` where the
        pair has one), on the images' device."""
        mean = self._means.get(images.device)
        if mean is None:  # one copy per device: a per-batch host → GPU copy would block
            mean = self._means[images.device] = self.mean.to(images.device).view(1, -1, 1, 1)
        normalized = images.float().div_(255.0).sub_(mean)
        if self.std is None:
            return normalized
        std = self._stds.get(images.device)
        if std is None:
            std = self._stds[images.device] = self.std.to(images.device).view(1, -1, 1, 1)
        return normalized.div_(std)

    def with_normalization(self, mean: tuple[float, ...], std: tuple[float, ...]) -> DomainPair:
        """The same images normalized with a backbone's constants ((x − mean) / std, x in
        [0, 1]) instead of the pair's own mean."""
        return replace(self, mean=torch.tensor(mean, dtype=torch.float32),
                       std=torch.tensor(std, dtype=torch.float32))


def held_out_tenth(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held) indices of ``count`` items: a seeded tenth (at least one) held out — the
    source validation data of a pair without a source test split."""
    order = np.random.default_rng(seed).permutation(count)
    cut = max(1, count // 10)
    return order[cut:], order[:cut]


def check_same_classes(source: str, source_classes: tuple[str, ...], target: str,
                       target_classes: tuple[str, ...]) -> None:
    if tuple(source_classes) != tuple(target_classes):
        only_source = sorted(set(source_classes) - set(target_classes))
        only_target = sorted(set(target_classes) - set(source_classes))
        detail = (
            f"only in {source}: {only_source or 'none'}; only in {target}: {only_target or 'none'}"
            if only_source or only_target else "same names in a different order"
        )
        raise TransferkitError(
            f"{source} → {target}: label spaces differ ({len(source_classes)} vs "
            f"{len(target_classes)} classes; {detail})"
        )


# Bytes of uint8 images a chunked pass over a split holds at a time (as float64: 8 times it)
CHUNK_BYTES = 32 << 20


def _chunk_images(images: torch.Tensor) -> int:
    return max(1, CHUNK_BYTES // max(1, images[0].numel() if len(images) else 1))


def _pixel_sums(images: torch.Tensor) -> list[int]:
    """Per-channel sums of uint8 N×C×H×W pixels, exact (integers), a bounded chunk at a time."""
    total = torch.zeros(images.shape[1], dtype=torch.int64)
    step = _chunk_images(images)
    for start in range(0, len(images), step):
        total += images[start : start + step].sum(dim=(0, 2, 3), dtype=torch.int64)
    return [int(v) for v in total]


def _mean_of_sums(sums: list[list[int]], pixels: int) -> torch.Tensor:
    """The per-channel mean in [0, 1] of splits with these exact per-channel sums."""
    total = torch.tensor([sum(column) for column in zip(*sums, strict=True)], dtype=torch.float64)
    return (total / pixels / 255.0).float()


def _pixel_mean(*splits: torch.Tensor) -> torch.Tensor:
    pixels = sum(images.shape[0] * images.shape[2] * images.shape[3] for images in splits)
    return _mean_of_sums([_pixel_sums(images) for images in splits], pixels)


# -- streaming: data larger than memory -------------------------------------------------------

MEMORY_BUDGET_ENV = "TRANSFERKIT_MEMORY_BUDGET"
COMMON_CACHE_VERSION = 1


def _memory_available() -> int | None:
    """Bytes of memory available to new allocations without swapping: ``MemAvailable`` in
    /proc/meminfo (Linux), else the free physical pages (other POSIX systems), else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_budget() -> int | None:
    """Bytes a pair's images may take in memory: ``$TRANSFERKIT_MEMORY_BUDGET`` (0 streams
    every pair), else half the memory available now; None where that cannot be known (no
    limit: in memory, as before)."""
    value = os.environ.get(MEMORY_BUDGET_ENV, "").strip()
    if value:
        try:
            budget = int(value)
        except ValueError:
            budget = -1
        if budget < 0:
            raise TransferkitError(f"{MEMORY_BUDGET_ENV}={value}: expected a whole number of bytes "
                                   "(0 streams every data set from disk)")
        return budget
    available = _memory_available()
    return available // 2 if available is not None else None


def _gigabytes(count: int) -> str:
    return f"{count / 1e9:.3g} GB"


def streaming_notice(what: str, needed: int, size: int, budget: int, kept: str,
                     folders: tuple[str, ...]) -> None:
    """Say (on stderr) that ``what`` is read from disk because it does not fit in memory."""
    where = " and ".join(str(cache_dir() / f) for f in folders)
    print(f"transferkit: streaming {what} from disk: its images take {_gigabytes(needed)} in "
          f"memory at {size} px, over the memory budget of {_gigabytes(budget)} "
          f"({MEMORY_BUDGET_ENV}, else half the memory available); their {kept} in {where}",
          file=sys.stderr)


def _chunk(image_set: ImageSet, start: int, stop: int) -> ImageSet:
    """Images ``start:stop`` of ``image_set`` as a set of their own, without copying pixels."""
    images = image_set.images
    if isinstance(images, RaggedImages):  # offsets are absolute: a slice of them still points right
        part: np.ndarray | RaggedImages = RaggedImages(images.pixels, images.offsets[start : stop + 1],
                                                       images.shapes[start:stop])
    else:
        part = images[start:stop]
    return ImageSet(part, image_set.labels[start:stop], image_set.classes)


def pixels_identity(image_set: ImageSet) -> dict[str, object]:
    """What a split's pixels are: the decode cache's files (path, size, modification time) where
    they are memory-mapped from it, else a hash of the pixels, read a chunk at a time."""
    images = image_set.images
    arrays = ([images.pixels, images.offsets, images.shapes] if isinstance(images, RaggedImages)
              else [images])
    files = []
    for array in arrays:
        name = getattr(array, "filename", None)
        if not isinstance(array, np.memmap) or name is None or not isinstance(array.base, mmap.mmap):
            break  # not a whole file mapped (a slice of one, a copy, an array in memory)
        stat = os.stat(name)
        files.append([str(name), stat.st_size, stat.st_mtime_ns, list(array.shape)])
    else:
        return {"files": files}
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{array.dtype} {array.shape}".encode())
        step = max(1, CHUNK_BYTES // max(1, int(np.prod(array.shape[1:], dtype=np.int64))))
        for start in range(0, len(array), step):
            digest.update(np.ascontiguousarray(array[start : start + step]).tobytes())
    return {"pixels": digest.hexdigest()}


def common_form_path(name: str, image_set: ImageSet, size: int, channels: int, geometry: str,
                     binarized: bool) -> Path:
    """``$TRANSFERKIT_CACHE/common/NAME-KEY.npy``: where a split's common form is kept, keyed by
    its pixels and everything that turns them into the common form."""
    key = {"version": COMMON_CACHE_VERSION, "count": len(image_set), "size": size,
           "channels": channels, "geometry": geometry, "binarize": binarized,
           "pixels": pixels_identity(image_set)}
    blob = json.dumps(key, sort_keys=True).encode()
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[-60:]
    return cache_dir() / "common" / f"{safe}-{hashlib.sha256(blob).hexdigest()[:24]}.npy"


def _open_common(path: Path, shape: tuple[int, ...]) -> tuple[torch.Tensor, list[int]] | None:
    """The common form at ``path``, memory-mapped, and its per-channel sums; None when the file
    or its record is missing, truncated, of another shape or type, or unreadable."""
    try:
        images = map_rows(path, shape, np.uint8)
        record = json.loads(path.with_suffix(".json").read_text())
        sums = [int(v) for v in record["sums"]]
        if (images is None or record["shape"] != list(shape) or path.stat().st_size != record["bytes"]
                or len(sums) != shape[1]):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return images, sums


def common_form_on_disk(
    name: str, image_set: ImageSet, size: int, channels: int = 3, geometry: str = "resize",
    binarized: bool = False,
) -> tuple[DomainSplit, list[int]]:
    """A split in the common form (:func:`to_common_form`; through :func:`binarize` first when
    ``binarized``), memory-mapped from its file under ``$TRANSFERKIT_CACHE/common/``, with its
    per-channel pixel sums. The file is built on the first use, a chunk of images at a time,
    and written whole (a temporary file, renamed; its record, ``.json`` beside it, after it); a
    file that is truncated, of another shape or without its record is built again."""
    path = common_form_path(name, image_set, size, channels, geometry, binarized)
    shape = (len(image_set), channels, size, size)
    labels = torch.from_numpy(np.array(image_set.labels, dtype=np.int64))
    opened = _open_common(path, shape)
    if opened is None:
        sums = np.zeros(channels, dtype=np.int64)
        step = max(1, min(4096, CHUNK_BYTES // (channels * size * size)))

        def chunks() -> Iterator[np.ndarray]:
            for start in range(0, len(image_set), step):
                part = _chunk(image_set, start, min(start + step, len(image_set)))
                common = to_common_form(binarize(part) if binarized else part, size, channels, geometry)
                sums[:] += common.sum(dim=(0, 2, 3), dtype=torch.int64).numpy()
                yield common.numpy()

        try:
            written = write_rows(path, len(image_set), chunks(), empty=(shape[1:], np.uint8))
            record = {"shape": list(shape), "bytes": written, "sums": [int(v) for v in sums]}
            with atomic_path(path.with_suffix(".json")) as tmp:
                tmp.write_text(json.dumps(record))
        except OSError as exc:
            raise disk_error(path.parent, exc, f"the common form of {name}") from None
        opened = _open_common(path, shape)
        if opened is None:
            raise TransferkitError(f"{path}: written but not readable back")
    images, split_sums = opened
    return DomainSplit(images, labels, path), split_sums


def binarize(image_set: ImageSet) -> ImageSet:
    """Every non-zero pixel to 255: MNIST digits as MNIST-M was drawn from them (its digits
    are binarized before being difference-blended over photo patches)."""
    if not isinstance(image_set.images, np.ndarray):
        raise TransferkitError("binarize needs images of one size")
    images = np.where(np.asarray(image_set.images) > 0, 255, 0).astype(np.uint8)
    return ImageSet(images, image_set.labels, image_set.classes)


UNLABELLED = "unlabelled:"


def read_unlabelled(spec: str, classes: tuple[str, ...]) -> ImageSet:
    """``unlabelled:PATH``: every image file under PATH (recursively, sorted), without labels
    (each label −1): a target domain as a practitioner has it."""
    from transferkit.data.decode import IMAGE_SUFFIXES, decode_many, image_files
    from transferkit.data.images import stack_images

    folder = Path(spec.removeprefix(UNLABELLED)).expanduser()
    if not folder.is_dir():
        raise TransferkitError(f"{spec}: {folder} is not a folder (expected a folder of images)")
    files = image_files(folder)
    if not files:
        raise TransferkitError(f"{spec}: {folder} holds no images (expected files ending in "
                               f"{', '.join(IMAGE_SUFFIXES)})")
    images = decode_many([(str(p), p.read_bytes) for p in files], "RGB", desc=folder.name)
    return ImageSet(stack_images(images), np.full(len(files), -1, dtype=np.int64), classes)


def load_pair(
    source: str, target: str, size: int | None = None,
    data_root: str | os.PathLike[str] | None = None, binarize_source: bool = False,
    geometry: str = "resize",
) -> DomainPair:
    """Load ``source`` (train, and test if it has one) and ``target`` (train, test) as one pair;
    a target ``unlabelled:PATH`` is every image under PATH, as unlabelled training images, with
    no target-test split (so no target accuracy).

    ``size`` defaults to the larger image side of the two domains. ``binarize_source`` maps
    every non-zero source pixel to 255 (see :func:`binarize`). ``geometry`` says how images
    of another size reach ``size``: ``resize`` them, or ``center`` them (crop or pad, pixel
    scale kept) — right when one domain is the other one padded, as MNIST-M's 32×32 images
    are MNIST's 28×28 digits with a 2-pixel border.
    """
    parts = {("source", "train"): load_split(source, "train", data_root)}
    if target.startswith(UNLABELLED):
        parts[("target", "train")] = read_unlabelled(target, parts[("source", "train")].classes)
    else:
        parts[("target", "train")] = load_split(target, "train", data_root)
        parts[("target", "test")] = load_split(target, "test", data_root)
    try:
        parts[("source", "test")] = load_split(source, "test", data_root)
    except TransferkitError as exc:
        if "has no split" not in str(exc):
            raise
    check_same_classes(source, parts[("source", "train")].classes, target,
                       parts[("target", "train")].classes)
    if size is None:
        shapes = [p.image_shape for p in parts.values()]
        if any(s is None for s in shapes):
            raise TransferkitError("images differ in size within a split: give --image-size "
                                   "(size=) to bring them all to")
        size = max(max(s[0], s[1]) for s in shapes if s is not None)
    train = [("source", "train"), ("target", "train")]
    # the common form of every split, and training's channels-last copy of the training splits
    needed = sum(len(part) * 3 * size * size for part in parts.values()) + \
        sum(len(parts[key]) * 3 * size * size for key in train)
    budget = memory_budget()
    if budget is not None and needed > budget:
        streaming_notice(f"{source} → {target}", needed, size, budget, "common form is kept", ("common",))
        splits, sums = {}, {}
        for key, part in parts.items():
            name = f"{source if key[0] == 'source' else target}-{key[1]}"
            splits[key], sums[key] = common_form_on_disk(
                name, part, size, geometry=geometry, binarized=binarize_source and key[0] == "source")
        mean = _mean_of_sums([sums[key] for key in train],
                             sum(len(parts[key]) for key in train) * size * size)
    else:
        if binarize_source:
            for key in [k for k in parts if k[0] == "source"]:
                parts[key] = binarize(parts[key])
        splits = {
            key: DomainSplit(to_common_form(part, size, geometry=geometry),
                             torch.from_numpy(np.array(part.labels)))
            for key, part in parts.items()
        }
        mean = _pixel_mean(splits[("source", "train")].images, splits[("target", "train")].images)
    return DomainPair(
        source=source, target=target, classes=parts[("source", "train")].classes,
        source_train=splits[("source", "train")], source_test=splits.get(("source", "test")),
        target_train=splits[("target", "train")], target_test=splits.get(("target", "test")),
        mean=mean,
    )


def pair_of_run(config: dict, data_root: str | os.PathLike[str] | None = None) -> DomainPair:
    """The domain pair a ``transferkit adapt`` run was trained on, from its ``config.json``
    (with its backbone's normalization, where the run recorded one)."""
    pair = load_pair(config["source"], config["target"], size=config["image_size"], data_root=data_root,
                     binarize_source=config.get("binarize_source", False),
                     geometry=config.get("geometry", "resize"))
    normalization = config.get("normalization")
    if normalization:
        pair = pair.with_normalization(tuple(normalization["mean"]), tuple(normalization["std"]))
    return pair
