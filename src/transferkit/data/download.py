"""Download a file once and check it against its published checksum."""

from __future__ import annotations

import hashlib
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from transferkit.errors import DataError


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_problem(path: Path, md5: str | None = None, sha256: str | None = None) -> str | None:
    """None when ``path`` matches every checksum given, else what differs."""
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected:
            actual = file_digest(path, algorithm)
            if actual != expected:
                return f"{algorithm} {actual} does not match the expected {expected}"
    return None


def download(
    url: str, destination: Path, md5: str | None = None, sha256: str | None = None,
    timeout: float = 30.0,
) -> Path:
    """Fetch ``url`` to ``destination`` (atomically) and verify it; raises OSError offline."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)
    problem = checksum_problem(partial, md5, sha256)
    if problem:
        partial.unlink()
        raise DataError(url, f"downloaded file is corrupt: {problem}")
    partial.replace(destination)
    return destination
