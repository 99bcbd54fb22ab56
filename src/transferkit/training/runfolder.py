"""A run folder's guards: one writer at a time, every file replaced whole, and a failed write
or an unreadable weights file reported as one line.

- :func:`locked` holds an exclusive ``flock`` on ``FOLDER/.transferkit.lock`` while a run
  writes the folder. A second process asking for it gets a :class:`TransferkitError` at once.
  The kernel releases the lock when the holder's descriptor closes, so a process killed with
  ``kill -9`` leaves no stale lock behind. The file stays in the folder (it holds only the last
  pid): removing it while another process has it open would let two processes lock at once.
  An ``--out`` that is a file is refused as one line.
- :func:`replace_file` writes a part file of its own (``.NAME.XXXXXXXX.part``), flushes it to
  the disk and renames it over ``PATH``, then flushes the folder: a reader, a second writer,
  an interruption, a power loss or a full disk never leaves half a file under ``PATH``; the
  previous file stays as it was, and the part file is removed. Write failures (a full disk, a
  read-only folder) become one line naming the file.
- :func:`check_same_settings` refuses to reuse a folder that holds a run of other settings;
  :func:`write_config` then records the settings, replacing ``config.json`` only when they
  differ, so a refused or failed rerun never leaves the config of one run beside the model of
  another.
- :func:`read_safetensors` and :func:`check_finite` read weights without unpickling and refuse
  corrupt files and NaN or infinite tensors, naming the file.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from functools import cache
from pathlib import Path
from typing import IO, Any

import torch

from transferkit.errors import TransferkitError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".transferkit.lock"


class NonFiniteError(TransferkitError):
    """The loss or the weights stopped being finite; training stopped before saving them."""


# ---------------------------------------------------------------- one writer at a time


def _open_lock(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def _not_a_folder(folder: Path, option: str) -> TransferkitError | None:
    """The error for a ``folder`` that is, or lies under, a file; None when it is not so."""
    for place in (folder, *folder.parents):
        if place.exists():
            if place.is_dir():
                return None
            where = f"{option} {folder}" + ("" if place == folder else f": {place}")
            return TransferkitError(f"{where} is a file, not a folder: choose a folder for the run")
    return None


def _take(descriptor: int, path: Path) -> bool | None:
    """Lock ``descriptor`` (the lock file opened from ``path``): True when it is held, False when
    another process holds it, None when the file it opened is no longer the one at ``path`` (it
    was removed with its empty folder, or replaced, after it was opened): locking an orphaned
    file would let a process that locks the new one write the folder too, so it is opened again."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # a file system without flock (some network mounts): unlocked
        return True
    mine = os.fstat(descriptor)
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return None
    return True if (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino) else None


def _acquire(folder: Path, path: Path, option: str) -> tuple[int, bool]:
    """The held lock's descriptor, and whether this call made ``folder``."""
    for _ in range(100):
        created = not folder.exists()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            descriptor = _open_lock(path)
        except OSError as exc:
            raise (_not_a_folder(folder, option) or write_error(path, exc, option)) from None
        try:
            taken = _take(descriptor, path)
            if taken is False:
                raise TransferkitError(
                    f"{folder}: another transferkit process{_holder(descriptor)} is writing this "
                    f"run folder (it holds {path.name} there); wait for it to finish, or choose "
                    f"another {option}")
        except OSError as exc:  # fstat or stat of the lock file
            os.close(descriptor)
            raise write_error(path, exc, option) from None
        except BaseException:
            os.close(descriptor)
            raise
        if taken:
            return descriptor, created
        os.close(descriptor)  # an orphaned lock file: open the one there now
    raise TransferkitError(f"{path}: the lock file keeps being replaced by another process; "
                           f"wait for it to finish, or choose another {option}")


@contextmanager
def locked(folder: Path, option: str = "--out") -> Iterator[None]:
    """Hold ``folder``'s lock (creating the folder) for the ``with`` block, or raise a
    :class:`TransferkitError` naming the folder if another process holds it.

    The lock file stays in the folder once the block ends: removing it while another process
    has it open would let that process lock the removed file while a third locks a new one.
    Only a folder this call made and the run left empty (it failed before its first file, on
    bad data say) is removed again, as the last step while the lock is still held; a process
    that opened its lock file meanwhile finds the file gone once it gets the lock, and opens
    the folder's lock file again."""
    folder = Path(folder)
    path = folder / LOCK_FILE
    problem = _not_a_folder(folder, option)
    if problem is not None:
        raise problem
    descriptor, created = _acquire(folder, path, option)
    try:
        with suppress(OSError):  # who holds it, for the message above; the lock needs it not
            os.ftruncate(descriptor, 0)
            os.write(descriptor, f"{os.getpid()}\n".encode())
        yield
    finally:
        with suppress(OSError):
            if created and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
                path.unlink()
                folder.rmdir()
        os.close(descriptor)  # releases the lock


def _holder(descriptor: int) -> str:
    try:
        text = os.pread(descriptor, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {text})" if text.isdigit() else ""


# ---------------------------------------------------------------- whole files or none


def write_error(path: Path, exc: OSError, option: str = "--out") -> TransferkitError:
    """One line for a failed write of ``path``."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = f"free some space on that disk, or choose another {option} on a disk with room"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = f"choose an {option} folder you can write to"
    else:
        hint = f"check that disk, or choose another {option}"
    return TransferkitError(f"{path}: could not write it ({reason}); {hint} (the file that was "
                            "there before, if any, is unchanged)")


def _open_partial(path: Path) -> IO[bytes]:
    return open(path, "wb")  # noqa: SIM115 — closed by replace_file


@cache
def _file_mode() -> int:
    """The mode ``open`` gives a new file (0o666 less the umask): ``mkstemp`` makes it 0o600."""
    with suppress(OSError, ValueError), open("/proc/self/status") as status:  # Linux, thread-safe
        for line in status:
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a file system (or Windows) that refuses is let be."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def is_part_file(path: Path, name: str) -> bool:
    """Whether ``path`` is a part file :func:`replace_file` writes for a file called ``name``."""
    return path.name == name + ".part" or (
        path.name.startswith(f".{name}.") and path.name.endswith(".part"))


def replace_file(path: Path, write: Callable[[IO[bytes]], None], option: str = "--out") -> None:
    """``write(handle)`` into a new part file beside ``path`` (``.NAME.XXXXXXXX.part``, a name
    no other writer uses), flush it to the disk, rename it over ``path`` and flush the folder,
    so that neither a concurrent writer nor a power loss leaves ``path`` empty or half written.
    On any failure the part file is removed and ``path`` is left as it was; an ``OSError``
    becomes one line."""
    path = Path(path)
    partial: Path | None = None
    try:
        descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        partial = Path(name)
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(descriptor, _file_mode())
        finally:
            os.close(descriptor)
        with _open_partial(partial) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
        partial = None
    except OSError as exc:
        raise write_error(path, exc, option) from None
    finally:
        if partial is not None:
            with suppress(OSError):
                partial.unlink(missing_ok=True)
    _sync_folder(path.parent)


def write_text(path: Path, text: str, option: str = "--out") -> None:
    """``text`` (UTF-8) as the whole of ``path``, atomically."""
    data = text.encode()
    replace_file(path, lambda handle: handle.write(data), option)


def write_json(path: Path, record: Any, option: str = "--out", strict: bool = False) -> None:
    """``record`` as indented JSON, atomically; ``strict``: refuse NaN and infinities (settings
    are checked to be finite, so one there is a bug, not something to record)."""
    write_text(path, json.dumps(record, indent=2, allow_nan=not strict), option)


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor],
                 metadata: dict[str, str] | None = None, option: str = "--out") -> None:
    """A safetensors file, atomically."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata)
    replace_file(path, lambda handle: handle.write(data), option)


# ---------------------------------------------------------------- one run per folder


def check_same_settings(run_dir: Path, record: dict[str, Any], started_by: tuple[str, ...],
                        resumable: frozenset[str] = frozenset({"device"}),
                        unreadable_ok: bool = False) -> None:
    """Refuse to resume or reuse ``run_dir`` when it holds a run with other settings.

    A checkpoint or result made with, say, 10 epochs must not be continued or reported as a
    20-epoch run: the schedules depend on the whole budget. A folder holds a run when one of
    ``started_by`` is there; ``unreadable_ok`` lets an unreadable ``config.json`` pass (a
    restart, which replaces it).
    """
    config_path = run_dir / "config.json"
    started = any((run_dir / name).is_file() for name in started_by)
    if not started or not config_path.is_file():
        return
    try:
        before = json.loads(config_path.read_text())
        if not isinstance(before, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if unreadable_ok:
            return
        raise TransferkitError(f"{config_path}: not readable JSON ({exc}); rerun with --restart "
                               "to replace it, or remove the folder") from None
    # A setting the older run did not record is one it did not have (new options default to
    # None), so a run without, say, a weight average is not reused as one with it.
    changed = [f"{key}={before.get(key)!r} there, {value!r} here"
               for key, value in record.items()
               if key not in resumable and before.get(key) != value]
    if changed:
        raise TransferkitError(
            f"{run_dir} holds a run with other settings ({'; '.join(changed)}): "
            "choose another --out, or remove the folder to start again")


def write_config(run_dir: Path, record: dict[str, Any]) -> None:
    """``config.json`` of ``record``, replaced whole, and only when it says something else
    (called once :func:`check_same_settings` has let the folder be used for ``record``)."""
    path = run_dir / "config.json"
    try:
        if json.loads(path.read_text()) == record:
            return
    except (OSError, UnicodeDecodeError, ValueError):
        pass
    write_json(path, record, strict=True)


def discard(run_dir: Path, names: tuple[str, ...]) -> None:
    """Remove ``names`` (and their part files) from ``run_dir``, in that order, then the run's
    TensorBoard events (``tensorboard/``, :mod:`transferkit.training.runlog`) and kept epochs
    (``epochs/``, ``keep_epochs`` of :func:`transferkit.training.loop.fit`): a restarted run
    logs afresh."""
    import shutil

    for folder in (run_dir / "tensorboard", run_dir / "epochs"):
        if folder.is_dir() and not folder.is_symlink():
            try:
                shutil.rmtree(folder)
            except OSError as exc:
                raise write_error(folder, exc) from None
    for name in names:
        try:
            parts = [p for p in run_dir.iterdir() if is_part_file(p, name)]
        except OSError:
            parts = []
        for path in (run_dir / name, *parts):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise write_error(path, exc) from None


def previous_wall_seconds(run_dir: Path) -> float | None:
    """``wall_seconds`` of the finished run's ``metrics.json`` in ``run_dir``, if readable."""
    try:
        seconds = json.loads((run_dir / "metrics.json").read_text()).get("wall_seconds")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return float(seconds) if isinstance(seconds, int | float) and seconds >= 0 else None


# ---------------------------------------------------------------- reading weights


def non_finite(tensors: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``tensors`` that hold a NaN or an infinity
    (one device read per device, not one per tensor)."""
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel():
            by_device.setdefault(value.device, []).append((name, value))
    bad = []
    for items in by_device.values():
        flags = torch.stack([torch.isfinite(value.detach()).all() for _, value in items]).cpu()
        bad += [name for (name, _), ok in zip(items, flags.tolist(), strict=True) if not ok]
    return bad


def check_finite(tensors: Mapping[str, Any], what: str, advice: str) -> None:
    """Refuse ``tensors`` (named ``what`` in the message) if any holds NaN or infinity."""
    bad = non_finite(tensors)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise TransferkitError(f"{what}: {len(bad)} tensor(s) hold NaN or infinite values "
                               f"({shown}); {advice}")


def read_safetensors(path: Path, advice: str, what: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (no unpickling), or one line naming the file when it
    is unreadable, corrupt or truncated, or holds NaN or infinite values."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    what = what or str(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TransferkitError(f"{what}: not a readable safetensors file, corrupt or truncated "
                               f"({detail}); {advice}") from None
    check_finite(tensors, what, advice)
    return tensors
