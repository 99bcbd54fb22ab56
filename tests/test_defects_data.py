"""Hostile and unusual input to the data layer (issue 20): each case gets one clear line, or is
read correctly — never a traceback, a memory address, or a silently wrong result."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import PIL
import pytest
from fakes import (
    corrupt_zip_member,
    encode,
    png16,
    png_bomb,
    random_images,
    write_image_folder,
    write_image_zip,
    write_zip,
)
from PIL import Image

from transferkit.cli import main
from transferkit.data import load_split
from transferkit.errors import DataError

ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}|BytesIO")


def one_line_error(capsys, code: int, expected: int = 2) -> str:
    """The error line the CLI printed; asserts the exit code and the one-line contract."""
    err = capsys.readouterr().err
    assert code == expected, err
    assert err.count("\n") == 1, err
    assert err.startswith("transferkit: error: ") and "Traceback" not in err
    assert not ADDRESS.search(err), err
    return err.strip()


def scratch(data: str, tmp_path: Path) -> int:
    """``transferkit scratch`` on ``data``: bad data stops it while loading, before training."""
    return main(["scratch", "--data", data, "--image-size", "48", "--epochs", "1", "--device", "cpu",
                 "--out", str(tmp_path / "run"), "--quiet"])


def sample(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- 1. every PIL mode, 16 bits too

RNG = np.random.default_rng(20)
RGB = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
WIDE = RNG.integers(0, 65536, (8, 8), dtype=np.uint16)  # 16-bit samples
PALETTE = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
FLOATS = RNG.random((8, 8), dtype=np.float32)  # in [0, 1)


def _gray(values: np.ndarray) -> np.ndarray:
    return np.repeat(values.astype(np.uint8)[:, :, None], 3, axis=2)


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _palette(mode: str) -> Image.Image:
    image = Image.fromarray(GRAY).convert("P") if mode == "P" else Image.new("PA", (8, 8))
    image.putpalette(PALETTE.reshape(-1).tolist())
    if mode == "PA":
        image.putdata(list(zip(GRAY.reshape(-1).tolist(), ALPHA.reshape(-1).tolist(), strict=True)))
    else:
        image.putdata(GRAY.reshape(-1).tolist())
    return image


def _mode_cases() -> list[tuple[str, str, bytes, str, np.ndarray, float]]:
    """(case, file suffix, encoded bytes, PIL mode it opens as, expected 8-bit RGB, tolerance)."""
    rgb = Image.fromarray(RGB)
    wide_png = _save(Image.fromarray(WIDE), "PNG")  # Pillow writes I;16 as a 16-bit gray PNG
    return [
        ("1-bit png", ".png", _save(Image.fromarray(GRAY > 127), "PNG"), "1",
         _gray(np.where(GRAY > 127, 255, 0)), 0),
        ("L png", ".png", _save(Image.fromarray(GRAY), "PNG"), "L", _gray(GRAY), 0),
        ("LA png", ".png", _save(Image.fromarray(np.dstack([GRAY, ALPHA])), "PNG"), "LA",
         _gray(GRAY), 0),
        ("P png", ".png", _save(_palette("P"), "PNG"), "P", PALETTE[GRAY], 0),
        ("P png with transparency", ".png", _save(_palette("P"), "PNG", transparency=3), "P",
         PALETTE[GRAY], 0),
        ("PA tiff", ".tif", _save(_palette("PA"), "TIFF"), "PA", PALETTE[GRAY], 0),
        ("RGB png", ".png", _save(rgb, "PNG"), "RGB", RGB, 0),
        ("RGBA png", ".png", _save(Image.fromarray(np.dstack([RGB, ALPHA])), "PNG"), "RGBA", RGB, 0),
        ("CMYK tiff", ".tif", _save(rgb.convert("CMYK"), "TIFF"), "CMYK", RGB, 0),
        ("CMYK jpeg", ".jpg", _save(rgb.convert("CMYK"), "JPEG", quality=100), "CMYK", RGB, 12),
        # YCbCr and LAB at 8 bits lose a little of the color: expect Pillow's conversion of them
        ("YCbCr tiff", ".tif", _save(rgb.convert("YCbCr"), "TIFF"), "YCbCr",
         np.asarray(rgb.convert("YCbCr").convert("RGB")), 0),
        ("LAB tiff", ".tif", _save(rgb.convert("LAB"), "TIFF"), "LAB",
         np.asarray(rgb.convert("LAB").convert("RGB")), 0),
        ("16-bit gray png", ".png", wide_png, "I;16", _gray(WIDE >> 8), 0),
        ("I;16 tiff", ".tif", _save(Image.fromarray(WIDE), "TIFF"), "I;16", _gray(WIDE >> 8), 0),
        ("I;16B tiff", ".tif", _save(Image.frombytes("I;16B", (8, 8), WIDE.astype(">u2").tobytes()), "TIFF"),
         "I;16B", _gray(WIDE >> 8), 0),
        ("I 32-bit tiff", ".tif", _save(Image.fromarray(WIDE.astype(np.int32)), "TIFF"), "I",
         _gray(WIDE >> 8), 0),
        ("16-bit pgm", ".pgm", _save(Image.fromarray(WIDE), "PPM"), "I", _gray(WIDE >> 8), 0),
        ("F tiff in [0, 1]", ".tif", _save(Image.fromarray(FLOATS), "TIFF"), "F",
         _gray(np.rint(FLOATS * 255)), 0),
        ("F tiff in [0, 255]", ".tif", _save(Image.fromarray(GRAY.astype(np.float32)), "TIFF"), "F",
         _gray(GRAY), 0),
        ("16-bit gray+alpha png", ".png", png16(np.dstack([WIDE, WIDE[::-1]])), "RGBA", _gray(WIDE >> 8), 0),
        ("48-bit RGB png", ".png", png16(np.dstack([WIDE, WIDE.T, WIDE[::-1]])), "RGB",
         np.dstack([WIDE, WIDE.T, WIDE[::-1]]) >> 8, 0),
        ("64-bit RGBA png", ".png", png16(np.dstack([WIDE, WIDE.T, WIDE[::-1], WIDE])), "RGBA",
         np.dstack([WIDE, WIDE.T, WIDE[::-1]]) >> 8, 0),
    ]


MODE_CASES = _mode_cases()


@pytest.mark.parametrize(
    ("suffix", "data", "opens_as", "expected", "tolerance"),
    [case[1:] for case in MODE_CASES],
    ids=[case[0] for case in MODE_CASES],
)
def test_every_image_mode_decodes_to_its_8_bit_values_in_training_data_and_predict(
    suffix, data, opens_as, expected, tolerance, tmp_path
):
    from transferkit.predict import _read

    with Image.open(io.BytesIO(data)) as image:
        # the case really exercises that mode on the Pillow the cases were written against;
        # older Pillows open some 16-bit files under other mode names, decoded all the same
        if int(PIL.__version__.split(".")[0]) >= 13:
            assert image.mode == opens_as
    path = sample(tmp_path / "d" / "a" / f"case{suffix}", data)
    sample(tmp_path / "d" / "b" / "other.png", encode(random_images(1, 8, 3)[0], "PNG"))
    decoded = np.asarray(load_split(f"folder:{tmp_path / 'd'}", "all").images[0]).astype(int)
    assert decoded.shape == (8, 8, 3)
    assert np.abs(decoded - expected).max() <= tolerance
    predicted = _read(path, 8).permute(1, 2, 0).numpy().astype(int)  # 8 px: no resize, no crop
    assert np.abs(predicted - expected).max() <= tolerance


def test_a_16_bit_png_decodes_like_its_8_bit_copy_in_a_zip_and_as_gray(tmp_path):
    """The issue's case: a photo saved with 16 bits per sample, mean 71, read as all white."""
    smooth = np.add.outer(np.arange(32), np.arange(32)).astype(np.uint8) * 2 + 10  # mean 72
    path = tmp_path / "d" / "train.zip"
    write_zip(path, [("a.png", png16((smooth.astype(np.uint16) * 257)[:, :, None])),
                     ("b.png", encode(smooth[:, :, None], "PNG")),
                     ("labels.csv", b"file,label\na.png,0\nb.png,1\n")])
    images = load_split(f"zip:{tmp_path / 'd'}", "train").images
    assert abs(float(np.mean(images[0])) - float(smooth.mean())) < 0.5
    np.testing.assert_array_equal(images[0], images[1])

    from transferkit.data.decode import decode_image

    gray = decode_image(png16(WIDE[:, :, None]), "wide.png", mode="L")
    np.testing.assert_array_equal(gray[:, :, 0], WIDE >> 8)


def _tiny_model(directory: Path) -> Path:
    import torch

    from transferkit.models.backbones import build_backbone
    from transferkit.recipes import Classifier, make_head, save_model

    torch.manual_seed(0)
    backbone = build_backbone("small_convnet", "random", 48)
    head = make_head("linear", backbone.feature_dim, 2)
    save_model(Classifier(backbone, head, ("cats", "dogs"), "linear"), directory, {})
    return directory


def test_predict_gives_a_16_bit_png_the_answer_of_its_8_bit_copy(tmp_path, capsys):
    model = _tiny_model(tmp_path / "model")
    smooth = np.add.outer(np.arange(40), np.arange(40)).astype(np.uint8) * 2 + 10
    eight = sample(tmp_path / "images" / "a8.png", encode(smooth[:, :, None], "PNG"))
    sixteen = sample(tmp_path / "images" / "b16.png", png16((smooth.astype(np.uint16) * 257)[:, :, None]))
    white = sample(tmp_path / "images" / "c255.png", encode(np.full((40, 40, 1), 255, np.uint8), "PNG"))
    assert main(["predict", str(model), str(eight), str(sixteen), str(white), "--json", "--top", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["file"] for row in rows] == [str(eight), str(sixteen), str(white)]
    assert rows[0]["top"] == rows[1]["top"]
    assert rows[0]["top"] != rows[2]["top"]  # the model does tell a white image apart


# ---------------------------------------------------------------- 2. a CRC-corrupt zip member


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED],
                         ids=["stored", "deflated"])
def test_a_corrupt_zip_member_is_one_line_naming_the_zip_and_member(compression, tmp_path, capsys):
    images = random_images(4, 16, 3)
    members = [(f"{i}.png", encode(image, "PNG")) for i, image in enumerate(images)]
    path = tmp_path / "d" / "train.zip"
    write_zip(path, [*members, ("labels.csv", b"file,label\n0.png,0\n1.png,1\n2.png,0\n3.png,1\n")],
              compression)
    corrupt_zip_member(path, "2.png")
    err = one_line_error(capsys, scratch(f"zip:{tmp_path / 'd'}", tmp_path))
    assert f"{path}:2.png: corrupt zip member" in err


def test_a_corrupt_labels_csv_member_is_named(tmp_path, capsys):
    path = tmp_path / "d" / "train.zip"
    write_zip(path, [("0.png", encode(RGB, "PNG")), ("labels.csv", b"file,label\n0.png,0\n" * 20)])
    corrupt_zip_member(path, "labels.csv")
    err = one_line_error(capsys, scratch(f"zip:{tmp_path / 'd'}", tmp_path))
    assert f"{path}:labels.csv: corrupt zip member" in err


def test_verify_decode_reports_a_corrupt_member_and_goes_on_to_the_other_data_sets(tmp_path, capsys):
    write_image_zip(tmp_path / "syn_signs" / "train.zip", random_images(4, 32, 3), [0, 1, 2, 3])
    corrupt_zip_member(tmp_path / "syn_signs" / "train.zip", "00000001.webp")
    write_image_zip(tmp_path / "mnist_m" / "train.zip", random_images(3, 32, 3), [0, 1, 2])
    code = main(["data", "verify", "syn_signs", "mnist_m", "--decode", "--root", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err
    syn_signs, mnist_m = captured.out.splitlines()[1:]
    assert syn_signs.startswith("syn_signs     CORRUPT")
    assert f"{tmp_path / 'syn_signs' / 'train.zip'}:00000001.webp: corrupt zip member" in syn_signs
    # the next data set was still read and counted (its fake has fewer images than MNIST-M)
    assert mnist_m.startswith("mnist_m       CORRUPT") and "train has 3 samples, expected 59001" in mnist_m


# ---------------------------------------------------------------- 3. a decompression bomb


def _folder_with(tmp_path: Path, name: str, data: bytes) -> Path:
    root = tmp_path / "photos"
    write_image_folder(root / "train", random_images(4, 16, 3), [0, 1, 0, 1], ["cats", "dogs"])
    sample(root / "train" / "dogs" / name, data)
    return root


def test_a_decompression_bomb_in_training_data_is_one_line_naming_the_file(tmp_path, capsys):
    root = _folder_with(tmp_path, "huge.png", png_bomb())
    err = one_line_error(capsys, scratch(f"folder:{root}", tmp_path))
    assert f"{root / 'train' / 'dogs' / 'huge.png'}: image of 400,000,000 pixels" in err
    assert "decompression bomb" in err


def test_a_decompression_bomb_in_a_zip_is_named(tmp_path, capsys):
    path = tmp_path / "d" / "train.zip"
    write_zip(path, [("0.png", encode(RGB, "PNG")), ("1.png", png_bomb()),
                     ("labels.csv", b"file,label\n0.png,0\n1.png,1\n")])
    err = one_line_error(capsys, scratch(f"zip:{tmp_path / 'd'}", tmp_path))
    assert f"{path}:1.png: image of 400,000,000 pixels" in err


def test_predict_reports_a_decompression_bomb_and_predicts_the_other_images(tmp_path, capsys):
    model = _tiny_model(tmp_path / "model")
    folder = tmp_path / "images"
    for i, image in enumerate(random_images(2, 40, 3)):
        sample(folder / f"ok{i}.png", encode(image, "PNG"))
    sample(folder / "huge.png", png_bomb())
    sample(folder / "text.png", b"no picture here")
    code = main(["predict", str(model), str(folder)])
    captured = capsys.readouterr()
    assert code == 1
    assert [line.split("\t")[0] for line in captured.out.splitlines()] == [
        str(folder / "ok0.png"), str(folder / "ok1.png")]
    errors = captured.err.splitlines()
    assert len(errors) == 2 and "Traceback" not in captured.err and not ADDRESS.search(captured.err)
    assert errors[0].startswith(f"transferkit: {folder / 'huge.png'}: image of 400,000,000 pixels")
    assert errors[1].startswith(f"transferkit: {folder / 'text.png'}: not a readable image")


def test_advise_on_a_decompression_bomb_is_one_line(tmp_path, capsys):
    root = _folder_with(tmp_path, "huge.png", png_bomb())
    code = main(["advise", "--target", f"folder:{root}", "--backbones", "small_convnet@random",
                 "--samples", "10", "--device", "cpu", "--quiet"])
    assert "huge.png: image of 400,000,000 pixels" in one_line_error(capsys, code)


def test_a_lowered_pixel_limit_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)  # 16×16 = 256 > 2 × 20
    root = tmp_path / "d"
    write_image_folder(root, random_images(2, 16, 3), [0, 1], ["a", "b"])
    with pytest.raises(DataError, match=r"img0000\.png: image of 256 pixels, over the 40 "):
        load_split(f"folder:{root}", "all")


# ---------------------------------------------------------------- 4. labels.csv


def _zip_with_labels(tmp_path: Path, labels_csv: bytes) -> Path:
    path = tmp_path / "d" / "train.zip"
    write_zip(path, [("0.png", encode(RGB, "PNG")), ("1.png", encode(RGB[::-1], "PNG")),
                     ("labels.csv", labels_csv)])
    return path


@pytest.mark.parametrize(
    ("labels_csv", "problem"),
    [
        ("file,label\ncafé.png,0\n".encode("latin-1"), "labels.csv: not UTF-8 text (byte 0xe9 at line 2)"),
        (b"file,label\n", "labels.csv: has a header but no rows (expected one line 'file,label' per image)"),
        (b"", "labels.csv: is empty (expected a header 'file,label' and one line per image)"),
        ("file,label\n0.png,0\n1.png,1\n".encode("utf-16"),
         "labels.csv: starts with a UTF-16 byte-order mark; save it as UTF-8"),
        (b"name,class\n0.png,0\n", "labels.csv: header must be 'file,label', found 'name,class'"),
    ],
    ids=["latin-1", "header only", "empty", "utf-16 with byte-order mark", "wrong header"],
)
def test_a_bad_labels_csv_is_one_line_naming_it(labels_csv, problem, tmp_path, capsys):
    path = _zip_with_labels(tmp_path, labels_csv)
    err = one_line_error(capsys, scratch(f"zip:{tmp_path / 'd'}", tmp_path))
    assert f"{path}:{problem}" in err


def test_a_utf8_byte_order_mark_in_labels_csv_is_accepted(tmp_path):
    """Excel's "CSV UTF-8" starts the file with a byte-order mark: it is read as the header."""
    _zip_with_labels(tmp_path, "\ufefffile,label\n0.png,0\n1.png,1\n".encode())
    assert load_split(f"zip:{tmp_path / 'd'}", "train").labels.tolist() == [0, 1]


def test_a_byte_order_mark_in_the_middle_of_a_header_is_named(tmp_path, capsys):
    _zip_with_labels(tmp_path, "file,\ufefflabel\n0.png,0\n1.png,1\n".encode())
    err = one_line_error(capsys, scratch(f"zip:{tmp_path / 'd'}", tmp_path))
    assert "labels.csv: header must be 'file,label'" in err and "byte-order mark" in err


def test_non_utf8_label_lists_and_class_names_are_named(tmp_path, capsys):
    from fakes import write_mnist_m_release

    write_mnist_m_release(tmp_path / "mnist_m", "test", random_images(2, 28, 3), [0, 1])
    (tmp_path / "mnist_m" / "mnist_m_test_labels.txt").write_bytes("ü.png 1\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"mnist_m_test_labels\.txt: not UTF-8 text"):
        load_split("mnist_m", "test", tmp_path)
    write_image_zip(tmp_path / "z" / "train.zip", random_images(2, 8, 3), [0, 1])
    (tmp_path / "z" / "classes.txt").write_bytes("chats\nmarmottes\xe9\n".encode("latin-1"))
    err = one_line_error(capsys, scratch(f"zip:{tmp_path / 'z'}", tmp_path))
    assert f"{tmp_path / 'z' / 'classes.txt'}: not UTF-8 text" in err


# ---------------------------------------------------------------- 5. one class; duplicates


def test_a_folder_with_one_class_is_refused(tmp_path, capsys):
    root = tmp_path / "photos"
    write_image_folder(root / "train", random_images(4, 16, 3), [0, 0, 0, 0], ["cats"])
    err = one_line_error(capsys, scratch(f"folder:{root}", tmp_path))
    assert f"folder:{root}: train has one class only (cats); a classifier needs at least two" in err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_zip_whose_labels_name_one_class_is_refused(tmp_path, capsys):
    write_image_zip(tmp_path / "d" / "train.zip", random_images(3, 8, 3), [0, 0, 0])
    err = one_line_error(capsys, scratch(f"zip:{tmp_path / 'd'}", tmp_path))
    assert f"zip:{tmp_path / 'd'}: train has one class only (0)" in err
    write_image_zip(tmp_path / "e" / "train.zip", random_images(3, 8, 3), [3, 3, 3])
    err = one_line_error(capsys, scratch(f"zip:{tmp_path / 'e'}", tmp_path))
    assert f"zip:{tmp_path / 'e'}: train has 4 classes but every image is labelled 3" in err


def test_duplicate_member_names_in_a_zip_are_refused(tmp_path, capsys):
    path = tmp_path / "d" / "train.zip"
    write_zip(path, [("0.png", encode(RGB, "PNG")), ("1.png", encode(RGB, "PNG")),
                     ("0.png", encode(RGB[::-1], "PNG")), ("labels.csv", b"file,label\n0.png,0\n1.png,1\n")])
    err = one_line_error(capsys, scratch(f"zip:{tmp_path / 'd'}", tmp_path))
    assert f"{path}: holds 0.png twice" in err


@pytest.mark.parametrize("second_label", ["1", "0"], ids=["two labels", "same label twice"])
def test_a_file_listed_twice_in_labels_csv_is_refused(second_label, tmp_path, capsys):
    path = _zip_with_labels(tmp_path, f"file,label\n0.png,0\n1.png,1\n0.png,{second_label}\n".encode())
    err = one_line_error(capsys, scratch(f"zip:{tmp_path / 'd'}", tmp_path))
    assert f"{path}:labels.csv: lists 0.png twice (lines 2 and 4)" in err


# ---------------------------------------------------------------- 6. a failed cache write


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), RuntimeError("boom")],
                         ids=["disk full", "unexpected"])
def test_a_failed_cache_write_leaves_no_staging_folder(failure, tmp_path, monkeypatch):
    import os

    write_image_zip(tmp_path / "d" / "train.zip", random_images(3, 8, 3), [0, 1, 0])
    saved, original = [], np.save

    def save_then_fail(path, array, *args, **kwargs):
        if saved:
            raise failure
        saved.append(path)
        original(path, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", save_then_fail)
    root = Path(os.environ["TRANSFERKIT_CACHE"])
    if isinstance(failure, OSError):  # a cache that cannot be written is no error: data uncached
        assert load_split(f"zip:{tmp_path / 'd'}", "train").labels.tolist() == [0, 1, 0]
    else:
        with pytest.raises(RuntimeError, match="boom"):
            load_split(f"zip:{tmp_path / 'd'}", "train")
    assert saved and list(root.iterdir()) == []


# ---------------------------------------------------------------- 7. nothing to verify


def test_verify_on_a_root_without_data_exits_1_saying_so(tmp_path, capsys):
    assert main(["data", "verify", "--root", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert f"no data set found under {tmp_path}" in captured.err
    assert "Traceback" not in captured.err


# ---------------------------------------------------------------- 8. no memory addresses


@pytest.mark.parametrize("where", ["folder", "zip"])
def test_a_non_image_is_named_without_a_memory_address(where, tmp_path, capsys):
    if where == "folder":
        root = _folder_with(tmp_path, "notes.png", b"these are words, not pixels")
        spec, named = f"folder:{root}", f"{root / 'train' / 'dogs' / 'notes.png'}"
    else:
        path = tmp_path / "d" / "train.zip"
        write_zip(path, [("0.png", encode(RGB, "PNG")), ("1.png", b"words"),
                         ("labels.csv", b"file,label\n0.png,0\n1.png,1\n")])
        spec, named = f"zip:{tmp_path / 'd'}", f"{path}:1.png"
    err = one_line_error(capsys, scratch(spec, tmp_path))
    assert f"{named}: not a readable image (not a format Pillow recognizes)" in err


def test_data_layer_messages_carry_no_object_reprs(tmp_path):
    """Every exception text the data layer puts in a message goes through one cleaner."""
    from transferkit.data.decode import reason

    class Odd(Exception):
        pass

    text = reason(Odd(f"cannot identify image file {io.BytesIO()!r} from {object()!r}"))
    assert not ADDRESS.search(text) and "cannot identify image file" in text
