"""Official files are downloaded once and checked; offline, the error says what to put where."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from fakes import random_images, write_svhn_mat

from transferkit.data import load_split
from transferkit.data import sources as sources_module
from transferkit.data.sources import Layout, Remote
from transferkit.errors import DataError, DataMissingError


def _serve_svhn_test_from(monkeypatch, served, md5):
    layout = Layout(sources_module.REGISTRY["svhn"].splits["test"][0].format, 3,
                    {"test_32x32.mat": Remote(served.as_uri(), md5=md5)})
    svhn = sources_module.REGISTRY["svhn"]
    patched = sources_module.DatasetSource(**{**svhn.__dict__, "splits": {"test": (layout,)}})
    monkeypatch.setitem(sources_module.REGISTRY, "svhn", patched)


def test_missing_official_file_is_downloaded_and_checked(tmp_path, monkeypatch):
    served = tmp_path / "server" / "test_32x32.mat"
    write_svhn_mat(served, random_images(3, 32, 3), np.array([1, 2, 0]))
    _serve_svhn_test_from(monkeypatch, served, hashlib.md5(served.read_bytes()).hexdigest())
    root = tmp_path / "root"
    root.mkdir()
    split = load_split("svhn", "test", root, allow_download=True)
    assert (root / "svhn" / "test_32x32.mat").is_file()
    np.testing.assert_array_equal(split.labels, [1, 2, 0])


def test_download_with_a_wrong_checksum_is_rejected_and_not_kept(tmp_path, monkeypatch):
    served = tmp_path / "server" / "test_32x32.mat"
    write_svhn_mat(served, random_images(3, 32, 3), np.array([1, 2, 0]))
    _serve_svhn_test_from(monkeypatch, served, "0" * 32)
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DataError, match="downloaded file is corrupt: md5"):
        load_split("svhn", "test", root, allow_download=True)
    assert not any((root / "svhn").iterdir())


def test_unreachable_download_says_which_files_to_put_where(tmp_path, monkeypatch):
    _serve_svhn_test_from(monkeypatch, tmp_path / "nothing-here.mat", None)
    with pytest.raises(DataMissingError, match=r"missing test_32x32\.mat in .*svhn.*Download failed"):
        load_split("svhn", "test", tmp_path, allow_download=True)
