"""Data layer: dataset registry, offline-first loading, decode-once cache, domain pairs, and
photos to network inputs (:mod:`imaging`: resize once, crop, flip, normalize).

Domain pairs need torch; they are imported on first use so that listing and verifying data
stays quick.
"""

from typing import Any

from transferkit.data.images import ImageSet, RaggedImages
from transferkit.data.loading import load_split
from transferkit.data.root import cache_dir, resolve_data_root
from transferkit.data.sources import REGISTRY, DatasetSource, get_source

_PAIRS = ("DomainPair", "DomainSplit", "load_pair")


def __getattr__(name: str) -> Any:
    if name in _PAIRS:
        from transferkit.data import pairs

        return getattr(pairs, name)
    raise AttributeError(f"module 'transferkit.data' has no attribute {name!r}")


__all__ = [
    "REGISTRY",
    "DatasetSource",
    "DomainPair",
    "DomainSplit",
    "ImageSet",
    "RaggedImages",
    "cache_dir",
    "get_source",
    "load_pair",
    "load_split",
    "resolve_data_root",
]
