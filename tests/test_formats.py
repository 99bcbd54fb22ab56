"""Each official format decodes to the pixels and labels that were written."""

from __future__ import annotations

import numpy as np
import pytest
from fakes import (
    random_images,
    write_gtsrb_test_zips,
    write_gtsrb_train_zip,
    write_idx,
    write_image_folder,
    write_image_zip,
    write_mnist_m_release,
    write_svhn_mat,
    write_usps_bz2,
)

from transferkit.data import load_split
from transferkit.data.images import RaggedImages


def test_mnist_idx_reads_gray_images_and_labels(tmp_path):
    images, labels = random_images(12, 28, 1), np.arange(12) % 10
    write_idx(tmp_path / "mnist", "t10k", images, labels)
    split = load_split("mnist", "test", tmp_path)
    np.testing.assert_array_equal(split.images, images)
    np.testing.assert_array_equal(split.labels, labels)
    assert split.classes == tuple("0123456789")


def test_svhn_mat_maps_label_10_to_digit_0_and_transposes_to_nhwc(tmp_path):
    images, digits = random_images(7, 32, 3), np.array([0, 1, 2, 3, 9, 0, 5])
    write_svhn_mat(tmp_path / "svhn" / "test_32x32.mat", images, digits)
    split = load_split("svhn", "test", tmp_path)
    np.testing.assert_array_equal(split.images, images)
    np.testing.assert_array_equal(split.labels, digits)


def test_syn_digits_reads_the_svhn_mat_layout(tmp_path):
    images, digits = random_images(5, 32, 3, seed=1), np.array([4, 0, 7, 7, 1])
    write_svhn_mat(tmp_path / "syn_digits" / "synth_train_32x32.mat", images, digits)
    split = load_split("syn_digits", "train", tmp_path)
    np.testing.assert_array_equal(split.images, images)
    np.testing.assert_array_equal(split.labels, digits)


def test_usps_libsvm_bz2_rescales_minus_one_to_one_onto_bytes(tmp_path):
    images, digits = random_images(6, 16, 1, seed=2), np.array([0, 1, 2, 3, 4, 9])
    write_usps_bz2(tmp_path / "usps" / "usps.t.bz2", images, digits)
    split = load_split("usps", "test", tmp_path)
    assert split.images.shape == (6, 16, 16, 1)
    np.testing.assert_array_equal(split.labels, digits)
    assert np.abs(split.images.astype(int) - images.astype(int)).max() <= 1


def test_gtsrb_official_train_zip_uses_folder_as_class_and_resizes_to_32(tmp_path):
    images, labels = random_images(6, 40, 3, seed=3), np.array([0, 0, 5, 5, 42, 42])
    write_gtsrb_train_zip(tmp_path / "gtsrb" / "GTSRB-Training_fixed.zip", images, labels)
    split = load_split("gtsrb", "train", tmp_path)
    assert split.images.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(split.labels, labels)


def test_gtsrb_official_test_reads_labels_from_the_ground_truth_csv(tmp_path):
    images, labels = random_images(4, 32, 3, seed=4), np.array([3, 1, 4, 1])
    write_gtsrb_test_zips(tmp_path / "gtsrb", images, labels)
    split = load_split("gtsrb", "test", tmp_path)
    np.testing.assert_array_equal(split.images, images)  # already 32×32: no resize
    np.testing.assert_array_equal(split.labels, labels)


def test_mnist_m_release_reads_pngs_listed_in_labels_txt(tmp_path):
    images, labels = random_images(5, 32, 3, seed=5), [3, 1, 4, 1, 5]
    write_mnist_m_release(tmp_path / "mnist_m", "test", images, labels)
    split = load_split("mnist_m", "test", tmp_path)
    np.testing.assert_array_equal(split.images, images)
    np.testing.assert_array_equal(split.labels, labels)


def test_mirror_image_zip_is_preferred_and_decodes_losslessly(tmp_path):
    images, labels = random_images(9, 32, 3, seed=6), np.arange(9) % 10
    write_image_zip(tmp_path / "mnist_m" / "train.zip", images, labels)
    split = load_split("mnist_m", "train", tmp_path)
    np.testing.assert_array_equal(split.images, images)
    np.testing.assert_array_equal(split.labels, labels)


def test_user_folder_with_split_subfolders_gives_splits_and_sorted_classes(tmp_path):
    images = random_images(6, 20, 3, seed=7)
    write_image_folder(tmp_path / "pets" / "train", images, [0, 1, 0, 1, 1, 0], ["cat", "dog"])
    write_image_folder(tmp_path / "pets" / "test", images[:2], [1, 0], ["cat", "dog"])
    split = load_split(f"folder:{tmp_path / 'pets'}", "test")
    assert split.classes == ("cat", "dog")
    np.testing.assert_array_equal(split.labels, [0, 1])  # sorted by class, then file name


def test_user_folder_of_differently_sized_images_is_stored_ragged(tmp_path):
    write_image_folder(tmp_path / "a", random_images(1, 10, 3), [0], ["x"])
    write_image_folder(tmp_path / "a", random_images(1, 14, 3), [0], ["y"])
    split = load_split(f"folder:{tmp_path / 'a'}", "all")
    assert isinstance(split.images, RaggedImages)
    assert [im.shape for im in split.images] == [(10, 10, 3), (14, 14, 3)]
    assert split.image_shape is None


def test_user_zip_takes_class_names_from_classes_txt(tmp_path):
    write_image_zip(tmp_path / "d" / "train.zip", random_images(3, 8, 3), [0, 2, 1])
    (tmp_path / "d" / "classes.txt").write_text("red\ngreen\nblue\n")
    split = load_split(f"zip:{tmp_path / 'd'}", "train")
    assert split.classes == ("red", "green", "blue")


def test_unknown_split_names_the_splits_that_exist(tmp_path):
    from transferkit.errors import TransferkitError

    with pytest.raises(TransferkitError, match="expected one of train, test"):
        load_split("mnist", "validation", tmp_path)


def test_decoding_shows_a_progress_bar_unless_told_to_be_quiet(capsys):
    import io

    from PIL import Image

    from transferkit.data.decode import decode_many, decode_progress

    buffer = io.BytesIO()
    Image.new("L", (4, 4), 7).save(buffer, format="PNG")
    png = buffer.getvalue()
    items = [(f"{i}.png", lambda: png) for i in range(2500)]  # bars start at 2,000 images
    with decode_progress(False):
        quiet = decode_many(items, desc="quiet decode")
    assert "quiet decode" not in capsys.readouterr().err
    shown = decode_many(items, desc="loud decode")
    assert "loud decode" in capsys.readouterr().err
    assert len(quiet) == len(shown) == 2500 and int(quiet[0][0, 0, 0]) == 7
