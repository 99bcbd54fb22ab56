"""What the trainable part of a network sees: the frozen prefix's outputs, cached.

A network is split at stage ``s``: stages before ``s`` are frozen, so their output for an
image never changes. With evaluation crops that output is computed once per split; with
augmentation, once per pre-drawn augmented *view* (``views`` of them, each a different random
crop and flip of every image), and training cycles through the views epoch by epoch. Both
are cached on disk, keyed by the backbone's weights, the pixels, the crop and the split
point, so a second run (or another head, another training-set size) skips the backbone.

``views=0`` instead augments afresh at every step and recomputes the prefix: no cache, the
unlimited-augmentation path, and the baseline for measuring what caching saves.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferkit.data import imaging
from transferkit.data.cache import atomic_path, map_rows, rows_on_disk
from transferkit.data.root import cache_dir
from transferkit.models.backbones import Backbone

ACTIVATION_CACHE_VERSION = 1
OUTPUTS = "the frozen stages' outputs"  # what a disk that refuses them is told about


def _cache_path(key: dict) -> Path:
    blob = json.dumps(dict(key, version=ACTIVATION_CACHE_VERSION), sort_keys=True).encode()
    return cache_dir() / "activations" / (hashlib.sha256(blob).hexdigest()[:24] + ".npy")


def save_atomic(path: Path, array: np.ndarray) -> None:
    """``array`` saved to ``path`` whole (:func:`transferkit.data.cache.atomic_path`)."""
    with atomic_path(path, suffix=".tmp.npy") as tmp:
        np.save(tmp, array)


def compute(backbone: Backbone, images: torch.Tensor, stop: int, size: int, device: torch.device,
            *options: Any, **named: Any) -> torch.Tensor:
    """Outputs of ``stages[:stop]`` for uint8 images (augmented when a generator is given),
    as float16 on the CPU: :func:`compute_chunks` (and its options) joined."""
    chunks = compute_chunks(backbone, images, stop, size, device, *options, **named)
    return torch.cat(list(chunks)).contiguous()


def compute_chunks(
    backbone: Backbone,
    images: torch.Tensor,
    stop: int,
    size: int,
    device: torch.device,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    progress: str | None = None,
    flip: bool = True,
) -> Iterator[torch.Tensor]:
    """:func:`compute` a batch at a time (in inference mode, each batch handed over outside it)."""
    backbone.eval()
    spec = backbone.spec
    starts = range(0, len(images), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=progress, unit="batch", leave=False)
    for start in starts:
        with torch.inference_mode():
            batch = images[start : start + batch_size]
            batch = (
                imaging.augment(batch, size, generator, flip)
                if generator is not None
                else imaging.center(batch, size)
            )
            x = imaging.normalize(batch.to(device), spec.mean, spec.std).contiguous(
                memory_format=torch.channels_last
            )
            out = backbone(x, 0, stop).half().cpu()
        yield out  # outside inference mode: the caller's code between batches keeps its gradients


def cached_views(
    backbone: Backbone,
    images: torch.Tensor,
    stop: int,
    size: int,
    device: torch.device,
    views: int,
    seed: int,
    progress: bool = True,
    label: str = "",
    flip: bool = True,
    on_disk: bool = False,
) -> list[torch.Tensor]:
    """``views`` augmented passes (``views=1`` and ``seed<0``: the center crop) of the prefix,
    from the disk cache when the same backbone, pixels and crops were computed before.
    ``on_disk``: written a batch at a time and memory-mapped from the cache, for images that
    do not fit in memory (with random weights, which are not cached, they are kept in memory)."""
    cacheable = backbone.spec.weights_id != "random"
    pixels = imaging.identity(images) if cacheable else ""
    out = []
    for view in range(views):
        augmented = seed >= 0
        key = {
            "backbone": backbone.spec.name,
            "weights": backbone.spec.weights_id,
            "pixels": pixels,
            "size": size,
            "mean": backbone.spec.mean,
            "std": backbone.spec.std,
            "stop": stop,
            "stages": backbone.stage_names[:stop],
            "augment": augmented,
            **({} if flip else {"flip": False}),
            "seed": seed,
            "view": view,
            "crop": [backbone.spec.crop_fraction, imaging.SCALE, imaging.RATIO],
        }
        path = _cache_path(key)
        if cacheable and path.is_file():
            try:
                kept = map_rows(path) if on_disk else torch.from_numpy(np.load(path))
            except (OSError, ValueError):  # unreadable: computed again and rewritten
                kept = None
            if kept is not None:
                out.append(kept)
                continue
        generator = None
        if augmented:
            generator = torch.Generator().manual_seed(seed * 1000 + view)
        desc = f"{label} {'view ' + str(view + 1) + '/' + str(views) if augmented else 'center crop'}"
        chunks = compute_chunks(backbone, images, stop, size, device, generator=generator,
                                progress=desc if progress else None, flip=flip)
        if cacheable and on_disk:  # a batch at a time to the file, then read from it
            out.append(rows_on_disk(path, len(images), (c.numpy() for c in chunks), OUTPUTS))
            continue
        result = torch.cat(list(chunks)).contiguous()
        if cacheable:
            save_atomic(path, result.numpy())
        out.append(result)
    return out


def extend(
    backbone: Backbone,
    views: list[torch.Tensor],
    start: int,
    stop: int,
    device: torch.device,
    batch_size: int = 256,
    on_disk: bool = False,
) -> list[torch.Tensor]:
    """Run cached outputs of ``stages[:start]`` on through ``stages[start:stop]``.
    ``on_disk``: each view's outputs written a batch at a time to a file of the cache and
    memory-mapped from it (the file is unlinked at once; the mapping holds it until freed)."""
    backbone.eval()
    out = []
    for view in views:
        chunks = _extend_chunks(backbone, view, start, stop, device, batch_size)
        if not on_disk:
            out.append(torch.cat(list(chunks)))
            continue
        path = cache_dir() / "activations" / f".extended-{uuid.uuid4().hex}.npy"
        out.append(rows_on_disk(path, len(view), (c.numpy() for c in chunks), OUTPUTS, keep=False))
    return out


def _extend_chunks(backbone: Backbone, view: torch.Tensor, start: int, stop: int,
                   device: torch.device, batch_size: int) -> Iterator[torch.Tensor]:
    for i in range(0, len(view), batch_size):
        with torch.inference_mode():
            out = backbone(view[i : i + batch_size].to(device).float(), start, stop).half().cpu()
        yield out
