"""Decoding happens once: later loads memory-map the cache; changed files invalidate it."""

from __future__ import annotations

import os

import numpy as np
from fakes import random_images, write_image_zip

from transferkit.data import decode as decode_module
from transferkit.data import load_split


def test_second_load_comes_from_the_cache_without_decoding(tmp_path, monkeypatch):
    images = random_images(6, 32, 3)
    write_image_zip(tmp_path / "mnist_m" / "test.zip", images, np.arange(6))
    first = load_split("mnist_m", "test", tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(decode_module, "decode_image", refuse)
    second = load_split("mnist_m", "test", tmp_path)
    assert isinstance(second.images, np.memmap)
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.labels, first.labels)


def test_replacing_the_source_file_invalidates_the_cache(tmp_path):
    path = tmp_path / "mnist_m" / "test.zip"
    write_image_zip(path, random_images(4, 32, 3, seed=1), [1, 2, 3, 4])
    load_split("mnist_m", "test", tmp_path)
    write_image_zip(path, random_images(4, 32, 3, seed=2), [4, 3, 2, 1])
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    np.testing.assert_array_equal(load_split("mnist_m", "test", tmp_path).labels, [4, 3, 2, 1])


def test_a_cache_that_cannot_be_written_still_returns_the_data(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(blocker / "cache"))
    write_image_zip(tmp_path / "mnist_m" / "test.zip", random_images(2, 32, 3), [0, 1])
    assert len(load_split("mnist_m", "test", tmp_path)) == 2


def test_rows_written_a_chunk_at_a_time_map_back_read_only(tmp_path):
    import warnings

    import torch

    from transferkit.data.cache import map_rows, write_rows

    rows = np.arange(5 * 3 * 4, dtype=np.uint8).reshape(5, 3, 4)
    path = tmp_path / "rows.npy"
    size = write_rows(path, 5, (rows[:2], rows[2:]))
    assert size == path.stat().st_size and np.array_equal(np.load(path), rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not writable" warning reaches the user
        mapped = map_rows(path, (5, 3, 4), np.uint8)
    assert torch.equal(mapped, torch.from_numpy(rows))
    assert map_rows(path, (4, 3, 4)) is None and map_rows(tmp_path / "missing.npy") is None
    empty = tmp_path / "empty.npy"
    write_rows(empty, 0, (), empty=((3, 4), np.uint8))
    assert np.load(empty).shape == (0, 3, 4)


def test_a_write_that_fails_midway_leaves_no_file_and_says_why(tmp_path):
    import errno

    import pytest

    from transferkit.data.cache import disk_error, write_rows
    from transferkit.errors import TransferkitError

    def full_disk():
        yield np.zeros((2, 3), np.uint8)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        write_rows(tmp_path / "rows.npy", 4, full_disk())
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary one
    with pytest.raises(ValueError, match="2 rows arrived, 4 expected"):
        write_rows(tmp_path / "rows.npy", 4, iter([np.zeros((2, 3), np.uint8)]))
    with pytest.raises(ValueError, match="a chunk of rows"):
        write_rows(tmp_path / "rows.npy", 4, iter([np.zeros((2, 3), np.uint8), np.zeros((2, 5), np.uint8)]))
    assert list(tmp_path.iterdir()) == []
    full = disk_error(tmp_path, OSError(errno.ENOSPC, "No space left on device"), "the resized images")
    denied = disk_error(tmp_path, OSError(errno.EACCES, "Permission denied"), "the resized images")
    assert isinstance(full, TransferkitError) and str(tmp_path) in str(full)
    assert "free some space" in str(full)
    assert "No space left" in str(full) and "free some space" not in str(denied) and "write" in str(denied)


def test_rows_on_disk_map_back_or_fail_in_one_line(tmp_path):
    import errno

    import pytest

    from transferkit.data.cache import rows_on_disk
    from transferkit.errors import TransferkitError

    rows = np.arange(12, dtype=np.uint8).reshape(4, 3)
    kept = rows_on_disk(tmp_path / "kept.npy", 4, (rows[:2], rows[2:]), "the rows")
    assert np.array_equal(kept.numpy(), rows) and (tmp_path / "kept.npy").is_file()
    gone = rows_on_disk(tmp_path / "gone.npy", 4, iter([rows]), "the rows", keep=False)
    assert np.array_equal(gone.numpy(), rows) and not (tmp_path / "gone.npy").exists()

    def full_disk():
        yield rows[:2]
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(TransferkitError, match="could not keep the rows there.*free some space"):
        rows_on_disk(tmp_path / "full.npy", 4, full_disk(), "the rows")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.npy"]
