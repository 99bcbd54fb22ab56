"""`transferkit data make`: MNIST-M-like data sets from digits and a folder of photos."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fakes import encode, random_images, write_digit_pair
from PIL import Image

from transferkit.cli import main
from transferkit.data import load_split
from transferkit.data.blend import BlendPlan, binarized_digits


def _photos(folder, sizes=((48, 40), (64, 50), (33, 90))):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for index, (width, height) in enumerate(sizes):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        suffix, fmt = (".png", "PNG") if index % 2 else (".jpg", "JPEG")
        (folder / f"sub{index % 2}" / f"photo{index}{suffix}").parent.mkdir(exist_ok=True)
        (folder / f"sub{index % 2}" / f"photo{index}{suffix}").write_bytes(encode(image, fmt))
    (folder / "notes.txt").write_text("not a photo: skipped")
    return folder


def _make(tmp_path, out, *extra):
    root = tmp_path / "data"
    if not root.exists():
        write_digit_pair(root, n_train=40, n_test=12)
    photos = tmp_path / "photos"
    if not photos.exists():
        _photos(photos)
    return main(["data", "make", "dev", "--photos", str(photos), "--out", str(out),
                 "--data-root", str(root), "--quiet", *extra])


def test_make_writes_a_zip_data_set_that_loads_and_is_reproducible_byte_for_byte(tmp_path, capsys):
    assert _make(tmp_path, tmp_path / "a") == 0
    assert "dev: train 40, test 12 images from mnist" in capsys.readouterr().out
    assert _make(tmp_path, tmp_path / "b") == 0
    assert _make(tmp_path, tmp_path / "c", "--seed", "1") == 0
    for split in ("train", "test"):
        same = (tmp_path / "a" / f"{split}.zip").read_bytes()
        assert same == (tmp_path / "b" / f"{split}.zip").read_bytes()
        assert same != (tmp_path / "c" / f"{split}.zip").read_bytes()
    record = json.loads((tmp_path / "a" / "make.json").read_text())
    assert record["seed"] == 0 and record["photo_count"] == 3 and record["name"] == "dev"
    made = load_split(f"zip:{tmp_path / 'a'}", "train")
    digits = load_split("mnist", "train", tmp_path / "data")
    assert made.images.shape == (40, 32, 32, 3) and made.classes == digits.classes
    np.testing.assert_array_equal(made.labels, digits.labels)


def test_each_image_is_the_digit_minus_a_patch_of_a_photo(tmp_path):
    assert _make(tmp_path, tmp_path / "a", "--limit", "5") == 0
    made = load_split(f"zip:{tmp_path / 'a'}", "train")
    digits = binarized_digits(np.asarray(load_split("mnist", "train", tmp_path / "data").images[:5]))
    photos = sorted((tmp_path / "photos").rglob("photo*"), key=lambda p: p.relative_to(
        tmp_path / "photos").parts)
    plan = BlendPlan.draw(5, len(photos), np.random.default_rng(0))  # train is drawn first
    for index in range(5):
        photo = np.asarray(Image.open(photos[plan.photo[index]]).convert("RGB")).astype(int)
        top = int(plan.top[index] * (photo.shape[0] - 31))
        left = int(plan.left[index] * (photo.shape[1] - 31))
        patch = photo[top : top + 32, left : left + 32]
        expected = np.abs(digits[index].astype(int)[..., None] - patch)
        np.testing.assert_array_equal(made.images[index], expected)  # lossless WebP
    assert set(np.unique(digits)) <= {0, 255}  # binarized, with MNIST-M's 2-pixel border
    assert not digits[:, :2].any() and not digits[:, -2:].any()


@pytest.mark.parametrize(("setup", "message"), [
    ("empty", "holds no photos"),
    ("small", "smaller than the 32×32 patches"),
    ("missing", "not a folder"),
])
def test_bad_photo_folders_get_one_line_and_exit_2(tmp_path, capsys, setup, message):
    write_digit_pair(tmp_path / "data", n_train=20, n_test=10)
    photos = tmp_path / "photos"
    if setup != "missing":
        photos.mkdir()
    if setup == "small":
        (photos / "tiny.png").write_bytes(encode(random_images(1, 20, 3)[0], "PNG"))
    code = main(["data", "make", "dev", "--photos", str(photos), "--out", str(tmp_path / "out"),
                 "--data-root", str(tmp_path / "data"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "out" / "train.zip").exists()


def test_a_made_set_is_a_target_adapt_can_use(tmp_path, capsys):
    assert _make(tmp_path, tmp_path / "made") == 0
    code = main(["adapt", "--method", "dann", "--source", "mnist", "--target", f"zip:{tmp_path / 'made'}",
                 "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8", "--device", "cpu",
                 "--quiet", "--out", str(tmp_path / "run"), "--data-root", str(tmp_path / "data")])
    assert code == 0
    assert "target-test accuracy" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["target"] == f"zip:{tmp_path / 'made'}"


def test_an_out_that_cannot_be_made_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("not a folder")
    assert _make(tmp_path, tmp_path / "afile" / "made") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot make the folder" in err[0]
