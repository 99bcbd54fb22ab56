"""File formats a split can be stored in, each able to read, count and list its files.

A format is a small object: ``files`` names what must exist (relative to the data set's
directory), ``read`` decodes to uint8 N×H×W×C and int64 labels, ``count`` tells the number of
samples without decoding pixels, and ``members`` lists every file a checksum can cover.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import zipfile
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from transferkit.data.decode import IMAGE_EXTENSIONS, decode_many, decode_text, read_text_file, reason
from transferkit.data.images import RaggedImages, stack_images
from transferkit.errors import DataError

Pixels = np.ndarray | RaggedImages


class Format(Protocol):
    description: str

    @property
    def files(self) -> tuple[str, ...]: ...

    def read(self, base: Path, num_classes: int | None) -> tuple[Pixels, np.ndarray]: ...

    def count(self, base: Path) -> int: ...

    def members(self, base: Path) -> list[Path]: ...


def check_labels(labels: np.ndarray, num_classes: int | None, where: Path | str) -> np.ndarray:
    """Labels as int64, each in [0, num_classes); the error names the file and the label."""
    labels = np.asarray(labels, dtype=np.int64)
    upper = num_classes if num_classes is not None else np.iinfo(np.int64).max
    bad = np.flatnonzero((labels < 0) | (labels >= upper))
    if bad.size:
        expected = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
        raise DataError(
            where, f"label {labels[bad[0]]} at row {bad[0]} is outside the class range {expected}"
        )
    return labels


def _open_zip(path: Path) -> zipfile.ZipFile:
    """The zip at ``path``; one with two members of the same name is refused (which is meant?)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(path, f"not a readable zip archive ({reason(exc)})") from None
    repeated = [(name, n) for name, n in Counter(archive.namelist()).items() if n > 1]
    if repeated:
        archive.close()
        listing = ", ".join(f"{name} {'twice' if n == 2 else f'{n} times'}" for name, n in repeated[:5])
        more = f" and {len(repeated) - 5} more names" if len(repeated) > 5 else ""
        raise DataError(path, f"holds {listing}{more}: duplicate member names, so which file is "
                              f"meant is unclear; rebuild the zip with one member per name")
    return archive


def _read_member(archive: zipfile.ZipFile, path: Path, member: str) -> bytes:
    """The bytes of one zip member; a damaged member is a one-line error naming it."""
    try:
        return archive.read(member)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise DataError(
            f"{path}:{member}", f"corrupt zip member ({reason(exc)}); copy or download the zip again"
        ) from None
    except (NotImplementedError, RuntimeError) as exc:  # unknown compression; encrypted
        raise DataError(f"{path}:{member}", f"unreadable zip member ({reason(exc)})") from None


def _duplicate(files: Sequence[tuple[int, str]], where: Path | str) -> None:
    """Refuse a label list that names one file on two lines (``files``: line number, name)."""
    first: dict[str, int] = {}
    for line, name in files:
        if name in first:
            raise DataError(where, f"lists {name} twice (lines {first[name]} and {line}); each image "
                                   f"must be listed once, with one label")
        first[name] = line


# --- MNIST idx ------------------------------------------------------------------------------


def _read_idx(path: Path, header_only: bool = False) -> np.ndarray | tuple[int, ...]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            header = handle.read(4)
            if len(header) != 4 or header[:2] != b"\0\0" or header[2] != 0x08:
                raise DataError(path, "not an idx file of unsigned bytes (bad magic number)")
            ndim = header[3]
            shape = tuple(int.from_bytes(handle.read(4), "big") for _ in range(ndim))
            if header_only:
                return shape
            data = handle.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(path, f"cannot read idx data ({reason(exc)})") from None
    expected = int(np.prod(shape))
    if len(data) != expected:
        raise DataError(path, f"truncated: header promises {expected} bytes, found {len(data)}")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


@dataclass(frozen=True)
class IdxFormat:
    """MNIST's idx files (optionally gzipped): images N×28×28 and labels N."""

    images_file: str
    labels_file: str
    description: str = "idx"

    @property
    def files(self) -> tuple[str, ...]:
        return (self.images_file, self.labels_file)

    def read(self, base: Path, num_classes: int | None) -> tuple[Pixels, np.ndarray]:
        images = _read_idx(base / self.images_file)
        labels = _read_idx(base / self.labels_file)
        assert isinstance(images, np.ndarray) and isinstance(labels, np.ndarray)
        if len(images) != len(labels):
            raise DataError(
                base / self.labels_file, f"{len(labels)} labels for {len(images)} images"
            )
        return images[..., None].copy(), check_labels(labels, num_classes, base / self.labels_file)

    def count(self, base: Path) -> int:
        shape = _read_idx(base / self.labels_file, header_only=True)
        return int(shape[0])  # type: ignore[index]

    def members(self, base: Path) -> list[Path]:
        return [base / name for name in self.files]


# --- image zip (the offline mirror's format) --------------------------------------------------


def _zip_labels(archive: zipfile.ZipFile, path: Path) -> list[tuple[str, str]]:
    """``labels.csv``'s (file, label) rows: UTF-8 (a byte-order mark is fine), header
    ``file,label``, at least one row, each file once."""
    where = f"{path}:labels.csv"
    try:
        archive.getinfo("labels.csv")
    except KeyError:
        raise DataError(path, "has no labels.csv (expected header file,label)") from None
    text = decode_text(_read_member(archive, path, "labels.csv"), where)
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise DataError(where, f"not a readable csv file ({reason(exc)})") from None
    if not any(rows):
        raise DataError(where, "is empty (expected a header 'file,label' and one line per image)")
    header = [c.strip() for c in rows[0]]
    if header != ["file", "label"]:
        if any("\ufeff" in c for c in rows[0]):
            raise DataError(where, "header must be 'file,label' but holds a byte-order mark (U+FEFF) "
                                   "inside it; save the file as UTF-8 without one")
        raise DataError(where, f"header must be 'file,label', found {','.join(rows[0])!r}")
    body = [(number, row) for number, row in enumerate(rows[1:], start=2) if row]
    if not body:
        raise DataError(where, "has a header but no rows (expected one line 'file,label' per image)")
    for number, row in body:
        if len(row) != 2:
            raise DataError(where, f"line {number} must have 2 fields: {row}")
    _duplicate([(number, row[0].strip()) for number, row in body], where)
    return [(row[0].strip(), row[1].strip()) for _, row in body]


def _parse_label(text: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(where, f"label {text!r} is not an integer class index") from None


@dataclass(frozen=True)
class ImageZipFormat:
    """A zip of encoded images plus ``labels.csv`` (``file,label``), read in csv order."""

    zip_file: str
    mode: str = "RGB"
    description: str = "image zip"

    @property
    def files(self) -> tuple[str, ...]:
        return (self.zip_file,)

    def read(self, base: Path, num_classes: int | None) -> tuple[Pixels, np.ndarray]:
        path = base / self.zip_file
        with _open_zip(path) as archive:
            rows = _zip_labels(archive, path)
            names = set(archive.namelist())
            for file, _ in rows:
                if file not in names:
                    raise DataError(f"{path}:labels.csv", f"names {file}, which is not in the zip")
            labels = np.array(
                [_parse_label(label, f"{path}:labels.csv") for _, label in rows], dtype=np.int64
            )
            labels = check_labels(labels, num_classes, f"{path}:labels.csv")
            items = [(f"{path}:{file}", _reader(archive, path, file)) for file, _ in rows]
            images = decode_many(items, self.mode, desc=path.name)
        return stack_images(images), labels

    def count(self, base: Path) -> int:
        path = base / self.zip_file
        with _open_zip(path) as archive:
            return len(_zip_labels(archive, path))

    def members(self, base: Path) -> list[Path]:
        return [base / self.zip_file]


def _reader(archive: zipfile.ZipFile, path: Path, member: str):
    return lambda: _read_member(archive, path, member)


def _file_reader(path: Path):
    def read() -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise DataError(path, f"cannot be read ({reason(exc)})") from None

    return read


# --- ImageFolder layout --------------------------------------------------------------------


def folder_classes(path: Path) -> list[str]:
    if not path.is_dir():
        raise DataError(path, "not a directory (expected one sub-folder per class)")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(path, "has no class sub-folders (expected SPLIT/CLASS/image files)")
    return classes


def _class_files(folder: Path) -> list[Path]:
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
    )
    if not files:
        raise DataError(folder, "class folder is empty")
    return files


@dataclass(frozen=True)
class ImageFolderFormat:
    """``SPLIT/CLASS/*.jpg`` — torchvision's ImageFolder layout; classes sorted by name.

    Every file in a class folder must be an image: a stray file is reported, not skipped.
    """

    folder: str
    mode: str = "RGB"
    classes: tuple[str, ...] | None = None
    description: str = "image folder"

    @property
    def files(self) -> tuple[str, ...]:
        return (self.folder,)

    def _samples(self, base: Path) -> tuple[list[Path], np.ndarray]:
        root = base / self.folder
        found = folder_classes(root)
        if self.classes is not None and found != list(self.classes):
            raise DataError(root, f"class folders {found} differ from expected {list(self.classes)}")
        paths: list[Path] = []
        labels: list[int] = []
        for index, name in enumerate(found):
            files = _class_files(root / name)
            for file in files:
                if file.suffix.lower() not in IMAGE_EXTENSIONS:
                    raise DataError(file, f"not an image file (extensions: {IMAGE_EXTENSIONS})")
            paths += files
            labels += [index] * len(files)
        return paths, np.array(labels, dtype=np.int64)

    def read(self, base: Path, num_classes: int | None) -> tuple[Pixels, np.ndarray]:
        paths, labels = self._samples(base)
        items = [(str(p), _file_reader(p)) for p in paths]
        return stack_images(decode_many(items, self.mode, desc=self.folder)), labels

    def count(self, base: Path) -> int:
        return len(self._samples(base)[1])

    def members(self, base: Path) -> list[Path]:
        return self._samples(base)[0]


# --- SVHN / SynDigits .mat ------------------------------------------------------------------


@dataclass(frozen=True)
class MatFormat:
    """SVHN's ``*_32x32.mat`` (also SynDigits'): X is 32×32×3×N, y is N×1 with 10 for digit 0."""

    mat_file: str
    description: str = "matlab .mat"

    @property
    def files(self) -> tuple[str, ...]:
        return (self.mat_file,)

    def _load(self, base: Path) -> tuple[np.ndarray, np.ndarray]:
        from scipy.io import loadmat

        path = base / self.mat_file
        try:
            content = loadmat(path, variable_names=["X", "y"])
        except Exception as exc:  # scipy raises several types for a bad file
            raise DataError(path, f"not a readable .mat file ({reason(exc)})") from None
        if "X" not in content or "y" not in content:
            raise DataError(path, "must hold variables X (32x32x3xN) and y (Nx1)")
        images, labels = content["X"], content["y"].reshape(-1)
        if images.ndim != 4 or images.shape[2] != 3 or images.shape[3] != len(labels):
            raise DataError(path, f"X has shape {images.shape}, expected HxWx3xN with N={len(labels)}")
        return images, labels

    def read(self, base: Path, num_classes: int | None) -> tuple[Pixels, np.ndarray]:
        images, labels = self._load(base)
        # SVHN stores digit 0 as label 10; the modulo leaves 0..9 unchanged.
        labels = check_labels(labels.astype(np.int64) % 10, num_classes, base / self.mat_file)
        return np.ascontiguousarray(images.transpose(3, 0, 1, 2), dtype=np.uint8), labels

    def count(self, base: Path) -> int:
        return len(self._load(base)[1])

    def members(self, base: Path) -> list[Path]:
        return [base / self.mat_file]


# --- USPS, LIBSVM's bz2 text ---------------------------------------------------------------


@dataclass(frozen=True)
class LibsvmUspsFormat:
    """USPS as LIBSVM distributes it: ``label i:v ...`` lines, labels 1..10, values in [-1, 1]."""

    bz2_file: str
    side: int = 16
    description: str = "libsvm bz2"

    @property
    def files(self) -> tuple[str, ...]:
        return (self.bz2_file,)

    def _lines(self, base: Path) -> list[str]:
        path = base / self.bz2_file
        try:
            with bz2.open(path, "rt") as handle:
                return [line for line in handle if line.strip()]
        except (OSError, EOFError, ValueError) as exc:
            raise DataError(path, f"not a readable bz2 file ({reason(exc)})") from None

    def read(self, base: Path, num_classes: int | None) -> tuple[Pixels, np.ndarray]:
        path = base / self.bz2_file
        features = self.side * self.side
        lines = self._lines(base)
        values = np.full((len(lines), features), -1.0, dtype=np.float32)
        labels = np.empty(len(lines), dtype=np.int64)
        for row, line in enumerate(lines):
            fields = line.split()
            try:
                labels[row] = int(float(fields[0])) - 1
                for field in fields[1:]:
                    index, value = field.split(":")
                    values[row, int(index) - 1] = float(value)
            except (ValueError, IndexError):
                raise DataError(path, f"line {row + 1} is not 'label index:value ...'") from None
        pixels = np.clip(np.rint((values + 1.0) * 127.5), 0, 255).astype(np.uint8)
        images = pixels.reshape(-1, self.side, self.side, 1)
        return images, check_labels(labels, num_classes, path)

    def count(self, base: Path) -> int:
        return len(self._lines(base))

    def members(self, base: Path) -> list[Path]:
        return [base / self.bz2_file]


# --- GTSRB official: ppm images in zips, per-class or final-test csv ---------------------------


def _gtsrb_csv(text: str, where: str) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(text), delimiter=";", skipinitialspace=True))
    if not rows or "Filename" not in rows[0] or "ClassId" not in rows[0]:
        raise DataError(where, "expected a ';'-separated csv with Filename and ClassId columns")
    return rows


@dataclass(frozen=True)
class GtsrbTrainFormat:
    """GTSRB's official training zip: ``.../NNNNN/*.ppm``, the folder number is the class.

    Read in class-major order, whole frame resized to ``size`` (no ROI crop), as the
    offline mirror was made.
    """

    zip_file: str
    size: int = 32
    description: str = "GTSRB official ppm zip"

    @property
    def files(self) -> tuple[str, ...]:
        return (self.zip_file,)

    def _samples(self, archive: zipfile.ZipFile, path: Path) -> list[tuple[str, int]]:
        samples = []
        for name in sorted(archive.namelist()):
            parts = name.split("/")
            if name.lower().endswith(".ppm") and len(parts) >= 2 and parts[-2].isdigit():
                samples.append((name, int(parts[-2])))
        if not samples:
            raise DataError(path, "holds no CLASS/*.ppm images")
        return samples

    def read(self, base: Path, num_classes: int | None) -> tuple[Pixels, np.ndarray]:
        path = base / self.zip_file
        with _open_zip(path) as archive:
            samples = self._samples(archive, path)
            labels = check_labels(np.array([s[1] for s in samples]), num_classes, path)
            items = [(f"{path}:{name}", _reader(archive, path, name)) for name, _ in samples]
            images = decode_many(items, "RGB", (self.size, self.size), desc=path.name)
        return np.stack(images), labels

    def count(self, base: Path) -> int:
        path = base / self.zip_file
        with _open_zip(path) as archive:
            return len(self._samples(archive, path))

    def members(self, base: Path) -> list[Path]:
        return [base / self.zip_file]


@dataclass(frozen=True)
class GtsrbTestFormat:
    """GTSRB's official final test: ppm images zip plus ``GT-final_test.csv`` in its own zip."""

    images_zip: str
    labels_zip: str
    size: int = 32
    description: str = "GTSRB official ppm zip + GT csv"

    @property
    def files(self) -> tuple[str, ...]:
        return (self.images_zip, self.labels_zip)

    def _rows(self, base: Path) -> list[dict[str, str]]:
        path = base / self.labels_zip
        with _open_zip(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("GT-final_test.csv")]
            if not names:
                raise DataError(path, "holds no GT-final_test.csv")
            where = f"{path}:{names[0]}"
            return _gtsrb_csv(decode_text(_read_member(archive, path, names[0]), where), where)

    def read(self, base: Path, num_classes: int | None) -> tuple[Pixels, np.ndarray]:
        rows = self._rows(base)
        path = base / self.images_zip
        labels = np.array([_parse_label(r["ClassId"], str(base / self.labels_zip)) for r in rows])
        labels = check_labels(labels, num_classes, base / self.labels_zip)
        with _open_zip(path) as archive:
            by_file = {n.split("/")[-1]: n for n in archive.namelist() if n.endswith(".ppm")}
            items = []
            for row in rows:
                member = by_file.get(row["Filename"])
                if member is None:
                    raise DataError(base / self.labels_zip, f"names {row['Filename']}, not in {path}")
                items.append((f"{path}:{member}", _reader(archive, path, member)))
            images = decode_many(items, "RGB", (self.size, self.size), desc=path.name)
        return np.stack(images), labels

    def count(self, base: Path) -> int:
        return len(self._rows(base))

    def members(self, base: Path) -> list[Path]:
        return [base / name for name in self.files]


# --- MNIST-M as Ganin released it: png folder + labels txt ----------------------------------


@dataclass(frozen=True)
class PngListFormat:
    """A folder of images and a text file of ``FILENAME LABEL`` lines (MNIST-M's release)."""

    folder: str
    labels_file: str
    description: str = "png folder + labels txt"

    @property
    def files(self) -> tuple[str, ...]:
        return (self.folder, self.labels_file)

    def _rows(self, base: Path) -> list[tuple[str, str]]:
        path = base / self.labels_file
        rows, lines = [], []
        for number, line in enumerate(read_text_file(path).splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2:
                raise DataError(path, f"line {number} must be 'FILENAME LABEL', got {line!r}")
            rows.append((fields[0], fields[1]))
            lines.append((number, fields[0]))
        if not rows:
            raise DataError(path, "is empty (expected one line 'FILENAME LABEL' per image)")
        _duplicate(lines, path)
        return rows

    def read(self, base: Path, num_classes: int | None) -> tuple[Pixels, np.ndarray]:
        rows = self._rows(base)
        labels_path = base / self.labels_file
        labels = np.array([_parse_label(label, str(labels_path)) for _, label in rows])
        labels = check_labels(labels, num_classes, labels_path)
        items = []
        for file, _ in rows:
            image_path = base / self.folder / file
            if not image_path.is_file():
                raise DataError(labels_path, f"names {file}, which is not in {base / self.folder}")
            items.append((str(image_path), _file_reader(image_path)))
        return stack_images(decode_many(items, "RGB", desc=self.folder)), labels

    def count(self, base: Path) -> int:
        return len(self._rows(base))

    def members(self, base: Path) -> list[Path]:
        return [base / self.labels_file] + [base / self.folder / f for f, _ in self._rows(base)]


def present(fmt: Format, base: Path) -> bool:
    return all((base / name).exists() for name in fmt.files)


def missing_files(formats: Sequence[Format], base: Path) -> list[str]:
    """Files of the first (preferred) format that are not under ``base``."""
    return [name for name in formats[0].files if not (base / name).exists()]
