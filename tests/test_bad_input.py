"""Broken user data fails with an error that names the file and what was expected."""

from __future__ import annotations

import numpy as np
import pytest
from fakes import random_images, write_image_folder, write_image_zip

from transferkit.data import load_split
from transferkit.errors import DataError, DataMissingError, TransferkitError


def test_truncated_image_in_a_folder_is_named(tmp_path):
    write_image_folder(tmp_path / "d", random_images(4, 16, 3), [0, 0, 1, 1], ["a", "b"])
    broken = tmp_path / "d" / "b" / "img0003.png"
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(DataError, match="img0003.png: not a readable image"):
        load_split(f"folder:{tmp_path / 'd'}", "all")


def test_non_image_file_in_a_class_folder_is_named(tmp_path):
    write_image_folder(tmp_path / "d", random_images(2, 16, 3), [0, 1], ["a", "b"])
    (tmp_path / "d" / "a" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes\.txt: not an image file"):
        load_split(f"folder:{tmp_path / 'd'}", "all")


def test_non_image_member_of_a_zip_is_named(tmp_path):
    path = tmp_path / "d" / "train.zip"
    write_image_zip(path, random_images(2, 8, 3), [0, 1],
                    extra={"bogus.webp": b"this is not an image"},
                    csv_rows=["00000000.webp,0", "bogus.webp,1"])
    with pytest.raises(DataError, match=r"train\.zip:bogus\.webp: not a readable image"):
        load_split(f"zip:{tmp_path / 'd'}", "train")


def test_label_outside_the_class_range_is_named_with_its_file(tmp_path):
    write_image_zip(tmp_path / "mnist_m" / "test.zip", random_images(3, 32, 3), [1, 10, 2])
    with pytest.raises(DataError, match=r"labels\.csv: label 10 at row 1 is outside the class "
                                        r"range 0\.\.9"):
        load_split("mnist_m", "test", tmp_path)


def test_empty_class_folder_is_named(tmp_path):
    write_image_folder(tmp_path / "d", random_images(2, 16, 3), [0, 0], ["a", "b"])
    with pytest.raises(DataError, match=r"[/\\]b: class folder is empty"):
        load_split(f"folder:{tmp_path / 'd'}", "all")


def test_labels_csv_naming_a_missing_file_is_named(tmp_path):
    write_image_zip(tmp_path / "d" / "all.zip", random_images(1, 8, 3), [0],
                    csv_rows=["00000000.webp,0", "00000099.webp,1"])
    with pytest.raises(DataError, match=r"labels\.csv: names 00000099\.webp, which is not in"):
        load_split(f"zip:{tmp_path / 'd' / 'all.zip'}", "all")


def test_wrong_data_root_is_named(tmp_path):
    with pytest.raises(TransferkitError, match=r"--data-root .*nowhere: no such directory"):
        load_split("mnist", "train", tmp_path / "nowhere")


def test_missing_data_set_lists_files_and_where_to_put_them(tmp_path):
    with pytest.raises(DataMissingError) as info:
        load_split("svhn", "train", tmp_path)
    message = str(info.value)
    assert "train_32x32.mat" in message and str(tmp_path / "svhn") in message
    assert "TRANSFERKIT_OFFLINE" in message


def test_truncated_idx_file_is_named(tmp_path):
    from fakes import write_idx

    write_idx(tmp_path / "mnist", "t10k", random_images(3, 28, 1), np.array([1, 2, 3]))
    images = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    import gzip

    raw = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(raw[:-50]))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: truncated"):
        load_split("mnist", "test", tmp_path)
