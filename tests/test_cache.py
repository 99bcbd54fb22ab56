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
