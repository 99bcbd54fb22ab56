"""Where data sets and decoded caches live.

Data root: ``--data-root``, else ``$TRANSFERKIT_DATA``, else the offline mirror
``../shared/data`` when it exists (seen from the working directory or from this checkout),
else ``~/.cache/transferkit/data``. Decoded arrays are cached under ``$TRANSFERKIT_CACHE``,
else ``~/.cache/transferkit/decoded``: the data root may be read-only.
"""

from __future__ import annotations

import os
from pathlib import Path

from transferkit.errors import TransferkitError

_CHECKOUT = Path(__file__).resolve().parents[3]


def default_data_root() -> Path:
    env = os.environ.get("TRANSFERKIT_DATA")
    if env:
        return Path(env).expanduser()
    for mirror in (Path.cwd() / ".." / "shared" / "data", _CHECKOUT / ".." / "shared" / "data"):
        if mirror.is_dir():
            return mirror.resolve()
    return Path.home() / ".cache" / "transferkit" / "data"


def resolve_data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data root to use; an explicit ``root`` must be an existing directory."""
    if root is None:
        return default_data_root()
    path = Path(root).expanduser()
    if not path.exists():
        raise TransferkitError(f"--data-root {root}: no such directory")
    if not path.is_dir():
        raise TransferkitError(f"--data-root {root}: not a directory")
    return path.resolve()


def cache_dir() -> Path:
    env = os.environ.get("TRANSFERKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "transferkit" / "decoded"
