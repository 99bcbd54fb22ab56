"""Domain pairs for unsupervised domain adaptation: a labelled source, an unlabelled target.

Both domains get one preprocessing, as in Ganin et al. 2016 (§5.2): gray images repeated to
three channels, both resized to a common size, and the per-channel mean of the training
images of both domains subtracted. Resizing is done once, here, on uint8 arrays; the mean is
subtracted per batch by :meth:`DomainPair.normalize`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from transferkit.data.images import ImageSet
from transferkit.data.loading import load_split
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
    images: torch.Tensor  # uint8 N×C×H×W
    labels: torch.Tensor  # int64 N

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


def _pixel_mean(*splits: torch.Tensor) -> torch.Tensor:
    total = torch.zeros(splits[0].shape[1], dtype=torch.float64)
    count = 0
    for images in splits:
        for start in range(0, len(images), 8192):
            chunk = images[start : start + 8192]
            total += chunk.double().sum(dim=(0, 2, 3))
            count += chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
    return (total / count / 255.0).float()


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
    if binarize_source:
        for key in [k for k in parts if k[0] == "source"]:
            parts[key] = binarize(parts[key])
    check_same_classes(source, parts[("source", "train")].classes, target,
                       parts[("target", "train")].classes)
    if size is None:
        shapes = [p.image_shape for p in parts.values()]
        if any(s is None for s in shapes):
            raise TransferkitError("images differ in size within a split: give --image-size "
                                   "(size=) to bring them all to")
        size = max(max(s[0], s[1]) for s in shapes if s is not None)
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
