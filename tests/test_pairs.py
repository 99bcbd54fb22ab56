"""A domain pair shares one label space and one preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fakes import random_images, write_idx, write_image_zip

from transferkit.data import load_pair
from transferkit.errors import TransferkitError


@pytest.fixture
def digits_root(tmp_path):
    write_idx(tmp_path / "mnist", "train", random_images(8, 28, 1), np.arange(8) % 10)
    write_idx(tmp_path / "mnist", "t10k", random_images(4, 28, 1, seed=1), np.arange(4))
    write_image_zip(tmp_path / "mnist_m" / "train.zip", random_images(6, 32, 3, seed=2),
                    np.arange(6))
    write_image_zip(tmp_path / "mnist_m" / "test.zip", random_images(5, 32, 3, seed=3),
                    np.arange(5))
    return tmp_path


def test_pair_turns_gray_into_rgb_at_a_common_size(digits_root):
    pair = load_pair("mnist", "mnist_m", data_root=digits_root)
    assert pair.source_train.images.shape == (8, 3, 32, 32)
    assert pair.source_train.images.dtype == torch.uint8
    assert pair.target_test.images.shape == (5, 3, 32, 32)
    first = pair.source_train.images[0]
    assert torch.equal(first[0], first[1]) and torch.equal(first[1], first[2])


def test_pair_mean_is_that_of_both_training_sets(digits_root):
    pair = load_pair("mnist", "mnist_m", size=28, data_root=digits_root)
    pixels = torch.cat([pair.source_train.images, pair.target_train.images]).double() / 255
    torch.testing.assert_close(pair.mean.double(), pixels.mean(dim=(0, 2, 3)), atol=1e-6,
                               rtol=0)
    normalized = pair.normalize(torch.cat([pair.source_train.images, pair.target_train.images]))
    assert normalized.mean(dim=(0, 2, 3)).abs().max() < 1e-5


def test_pair_with_different_label_spaces_is_an_error(digits_root):
    write_image_zip(digits_root / "gtsrb" / "train.zip", random_images(2, 32, 3), [0, 42])
    write_image_zip(digits_root / "gtsrb" / "test.zip", random_images(2, 32, 3), [0, 1])
    with pytest.raises(TransferkitError, match="label spaces differ"):
        load_pair("mnist", "gtsrb", data_root=digits_root)


def test_binarized_source_has_only_black_and_white_pixels(digits_root):
    pair = load_pair("mnist", "mnist_m", data_root=digits_root, size=28, binarize_source=True)
    assert set(torch.unique(pair.source_train.images).tolist()) <= {0, 255}
    assert len(torch.unique(pair.target_train.images)) > 2  # the target is left as it is


def test_center_geometry_crops_the_border_and_keeps_the_pixel_scale(digits_root):
    """MNIST-M is MNIST padded by 2 px: centering to 28 must give back the inner 28×28 pixels
    untouched (resizing would shrink the digit)."""
    from transferkit.data.loading import load_split

    raw = torch.from_numpy(np.array(load_split("mnist_m", "test", digits_root).images))
    pair = load_pair("mnist", "mnist_m", data_root=digits_root, size=28, geometry="center")
    assert torch.equal(pair.target_test.images, raw.permute(0, 3, 1, 2)[..., 2:30, 2:30])
    padded = load_pair("mnist", "mnist_m", data_root=digits_root, size=32, geometry="center")
    source = padded.source_train.images
    assert source.shape[-2:] == (32, 32)
    assert source[..., :2, :].sum() == 0 and source[..., :, 30:].sum() == 0  # zero border
    assert torch.equal(source[..., 2:30, 2:30], pair.source_train.images)
    resized = load_pair("mnist", "mnist_m", data_root=digits_root, size=28)
    assert not torch.equal(resized.target_test.images, pair.target_test.images)


def test_unknown_geometry_is_an_error(digits_root):
    with pytest.raises(TransferkitError, match="geometry"):
        load_pair("mnist", "mnist_m", data_root=digits_root, size=28, geometry="stretch")
