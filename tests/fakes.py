"""Small fake data files in each official format, written with the formats' own rules."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import struct
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def random_images(n: int, side: int, channels: int, seed: int = 0) -> np.ndarray:
    shape = (n, side, side, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def encode(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    pixels = image[:, :, 0] if image.shape[2] == 1 else image
    options = {"lossless": True} if fmt == "WEBP" else {}
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def write_idx(directory: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape[:3]
    with gzip.open(directory / f"{prefix}-images-idx3-ubyte.gz", "wb") as out:
        out.write(struct.pack(">BBBBIII", 0, 0, 8, 3, n, h, w) + images[..., 0].tobytes())
    with gzip.open(directory / f"{prefix}-labels-idx1-ubyte.gz", "wb") as out:
        out.write(struct.pack(">BBBBI", 0, 0, 8, 1, n) + labels.astype(np.uint8).tobytes())


def write_image_zip(
    path: Path, images: np.ndarray, labels, extra: dict | None = None, csv_rows: list[str] | None = None
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = csv_rows if csv_rows is not None else [f"{i:08d}.webp,{label}" for i, label in enumerate(labels)]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for i, image in enumerate(images):
            archive.writestr(f"{i:08d}.webp", encode(image, "WEBP"))
        archive.writestr("labels.csv", "file,label\n" + "\n".join(rows) + "\n")
        for name, data in (extra or {}).items():
            archive.writestr(name, data)


def write_image_folder(root: Path, images: np.ndarray, labels, classes: list[str]) -> None:
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (root / classes[label] / f"img{i:04d}.png").write_bytes(encode(image, "PNG"))


def write_svhn_mat(path: Path, images: np.ndarray, digits: np.ndarray) -> None:
    from scipy.io import savemat

    path.parent.mkdir(parents=True, exist_ok=True)
    svhn_labels = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)
    savemat(path, {"X": images.transpose(1, 2, 3, 0), "y": svhn_labels})


def write_usps_bz2(path: Path, images: np.ndarray, digits: np.ndarray) -> None:
    """LIBSVM lines: label = digit + 1, 256 values in [-1, 1] (zeros omitted, as LIBSVM does)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for image, digit in zip(images, digits, strict=True):
        values = image.reshape(-1).astype(np.float64) / 127.5 - 1.0
        fields = [f"{i + 1}:{v:.6f}" for i, v in enumerate(values) if v != 0.0]
        lines.append(" ".join([str(int(digit) + 1), *fields]))
    path.write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))


def write_gtsrb_train_zip(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = f"GTSRB/Training/{label:05d}"
            archive.writestr(f"{folder}/00000_{i:05d}.ppm", encode(image, "PPM"))
        for label in sorted(set(labels.tolist())):
            archive.writestr(
                f"GTSRB/Training/{label:05d}/GT-{label:05d}.csv",
                "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n",
            )


def write_gtsrb_test_zips(directory: Path, images: np.ndarray, labels: np.ndarray) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    with zipfile.ZipFile(directory / "GTSRB_Final_Test_Images.zip", "w") as archive:
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            archive.writestr(f"GTSRB/Final_Test/Images/{i:05d}.ppm", encode(image, "PPM"))
            h, w = image.shape[:2]
            rows.append(f"{i:05d}.ppm;{w};{h};0;0;{w - 1};{h - 1};{label}")
    with zipfile.ZipFile(directory / "GTSRB_Final_Test_GT.zip", "w") as archive:
        archive.writestr("GT-final_test.csv", "\n".join(rows) + "\n")


def write_mnist_m_release(directory: Path, split: str, images: np.ndarray, labels) -> None:
    folder = directory / f"mnist_m_{split}"
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (folder / f"{i:08d}.png").write_bytes(encode(image, "PNG"))
        lines.append(f"{i:08d}.png {label}")
    (directory / f"mnist_m_{split}_labels.txt").write_text("\n".join(lines) + "\n")


def write_manifest(root: Path, files: list[Path]) -> None:
    """A SHA256SUMS at ``root`` listing ``files`` by their path from it, as the mirror does."""
    lines = [f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.relative_to(root).as_posix()}" for f in files]
    (root / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def write_digit_pair(root: Path, n_train: int = 96, n_test: int = 32) -> Path:
    """Tiny MNIST (idx) and MNIST-M (mirror zips) under ``root`` whose digits are learnable:
    each class is a bright square at its own position, on noise (MNIST-M: colored noise)."""
    rng = np.random.default_rng(0)

    def draw(n: int, side: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, (n, side, side, channels), dtype=np.uint8)
        for image, label in zip(images, labels, strict=True):
            row, col = 2 + (label // 5) * 12, 2 + (label % 5) * 5
            image[row : row + 8, col : col + 4] = 255
        return images, labels

    images, labels = draw(n_train, 28, 1)
    write_idx(root / "mnist", "train", images, labels)
    images, labels = draw(n_test, 28, 1)
    write_idx(root / "mnist", "t10k", images, labels)
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = draw(n, 28, 3)
        write_image_zip(root / "mnist_m" / f"{split}.zip", images, labels)
    return root


def two_class_images(n: int, side: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy photos whose class is their tint (reddish "cats", bluish "dogs"), sides vary."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = []
    for label in labels:
        h, w = side + int(rng.integers(0, 9)), side + int(rng.integers(0, 9))
        image = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
        image[:, :, 0 if label == 0 else 2] += 100
        images.append(image)
    return images, labels


def write_two_class_data(root: Path, sizes: dict[str, int] | None = None, side: int = 40) -> Path:
    """train/val/test folders of :func:`two_class_images` as JPEGs; returns ``root``."""
    sizes = sizes or {"train": 16, "val": 8, "test": 8}
    for offset, (split, n) in enumerate(sizes.items()):
        images, labels = two_class_images(n, side, seed=offset)
        for name in ("cats", "dogs"):
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            path = root / split / ("cats", "dogs")[label] / f"{split}{i:03d}.jpg"
            path.write_bytes(encode(image, "JPEG"))
    return root


def write_tiny_adapt_runs(data_root: Path, folder: Path, epochs: int = 1) -> Path:
    """``folder/source_only/seed0`` and ``folder/dann/seed0``: two tiny mnist → mnist_m runs,
    laid out as ``transferkit benchmark ganin2016`` lays them out; returns ``folder``."""
    from transferkit import DomainAdapter

    for method in ("source_only", "dann"):
        DomainAdapter(
            method=method,
            epochs=epochs,
            steps_per_epoch=2,
            device="cpu",
            run_dir=folder / method / "seed0",
            data_root=data_root,
            progress=False,
        ).fit("mnist", "mnist_m")
    return folder


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A tiny PNG whose header claims ``width``×``height`` pixels: Pillow refuses to open it as a
    decompression bomb (more than twice ``PIL.Image.MAX_IMAGE_PIXELS``) before decoding anything."""
    import zlib

    data = bytearray(encode(np.zeros((1, 1, 1), dtype=np.uint8), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def corrupt_zip_member(path: Path, member: str) -> None:
    """Flip bytes in the middle of ``member``'s data inside the zip at ``path``, so that reading
    it fails (a CRC mismatch, or an invalid deflate stream); the zip's directory stays intact."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    data = bytearray(path.read_bytes())
    header = info.header_offset
    name_length, extra_length = struct.unpack("<HH", data[header + 26 : header + 30])
    start = header + 30 + name_length + extra_length
    middle = start + info.compress_size // 2
    for i in range(middle, min(middle + 4, start + info.compress_size)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def write_zip(path: Path, members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> None:
    """A zip holding ``members`` in order, as given: duplicate names are written twice."""
    import warnings

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names; they are the point
        with zipfile.ZipFile(path, "w", compression) as archive:
            for name, data in members:
                archive.writestr(name, data)


def png16(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-sample PNG of uint16 H×W×C pixels, C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA
    (Pillow cannot write most of these itself)."""
    import zlib

    height, width, channels = pixels.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = pixels.astype(">u2").reshape(height, width * channels)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def interrupt_after_first_checkpoint(monkeypatch, train, count: int = 1) -> None:
    """Call ``train()`` and stop it as Ctrl-C would, just after the training loop writes its
    ``count``-th checkpoint (by default the first: the end of epoch 1); later checkpoints are
    written as usual again."""
    import pytest

    from transferkit.training import loop

    real_save = loop.save_checkpoint
    written = []

    def save_then_interrupt(path, state):
        real_save(path, state)
        written.append(path)
        if len(written) == count:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train()
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
