"""The dataset registry: what each data set is, how it lies on disk, where it comes from.

A source is data, not code: its classes, license, home page, and for each split the file
layouts it can be read from, preferred first (the offline mirror's layout, then the official
release's). Adding a data set is adding an entry here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transferkit.data.decode import read_text_file
from transferkit.data.formats import (
    Format,
    GtsrbTestFormat,
    GtsrbTrainFormat,
    IdxFormat,
    ImageFolderFormat,
    ImageZipFormat,
    LibsvmUspsFormat,
    MatFormat,
    PngListFormat,
    folder_classes,
)
from transferkit.errors import TransferkitError


@dataclass(frozen=True)
class Remote:
    """Where a file of an official release is downloaded from, and its published checksum."""

    url: str
    md5: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Layout:
    """One way a split can lie on disk; ``expected`` is its sample count when fixed."""

    format: Format
    expected: int | None = None
    remote: dict[str, Remote] = field(default_factory=dict)

    @property
    def downloadable(self) -> bool:
        return bool(self.remote) and all(name in self.remote for name in self.format.files)


@dataclass(frozen=True)
class DatasetSource:
    name: str
    title: str
    classes: tuple[str, ...] | None  # None: taken from the data (user folders and zips)
    splits: dict[str, tuple[Layout, ...]]
    license: str
    homepage: str
    obtain: str  # how to get the files when they cannot be downloaded
    directory: Path | None = None  # absolute for user data; else data_root / name
    channels: int = 3

    def base(self, data_root: Path) -> Path:
        return self.directory if self.directory is not None else data_root / self.name


REGISTRY: dict[str, DatasetSource] = {}


def register(source: DatasetSource) -> DatasetSource:
    if source.name in REGISTRY:
        raise ValueError(f"data set {source.name!r} is registered twice")
    REGISTRY[source.name] = source
    return source


DIGITS = tuple(str(d) for d in range(10))
SIGNS = tuple(str(c) for c in range(43))
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
_USPS_URL = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass/"
_GTSRB_URL = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"


def _idx(split: str, expected: int, images_md5: str, labels_md5: str) -> Layout:
    images, labels = f"{split}-images-idx3-ubyte.gz", f"{split}-labels-idx1-ubyte.gz"
    return Layout(
        IdxFormat(images, labels),
        expected,
        {
            images: Remote(_MNIST_URL + images, md5=images_md5),
            labels: Remote(_MNIST_URL + labels, md5=labels_md5),
        },
    )


register(DatasetSource(
    name="mnist",
    title="MNIST handwritten digits",
    classes=DIGITS,
    splits={
        "train": (_idx("train", 60000, "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                       "d53e105ee54ea40749a09fcbcd1e9432"),),
        "test": (_idx("t10k", 10000, "9fb629c4189551a2d022fa330f9573f3",
                      "ec29112dd5afa0611ce80d1b7f02629c"),),
    },
    license="CC BY-SA 3.0",
    homepage="http://yann.lecun.com/exdb/mnist/",
    obtain="Download the four idx .gz files of the official release",
    channels=1,
))

register(DatasetSource(
    name="mnist_m",
    title="MNIST-M (MNIST digits blended over BSDS500 patches; Ganin et al. 2016)",
    classes=DIGITS,
    splits={
        split: (
            Layout(ImageZipFormat(f"{split}.zip"), count),
            Layout(PngListFormat(f"mnist_m_{split}", f"mnist_m_{split}_labels.txt"), count),
        )
        for split, count in (("train", 59001), ("test", 9001))
    },
    license="research use",
    homepage="http://yaroslav.ganin.net/",
    obtain=(
        "Get Ganin's MNIST-M release (mnist_m.tar.gz) and extract mnist_m_train/, "
        "mnist_m_test/ and mnist_m_{train,test}_labels.txt there, or use the offline "
        "mirror's train.zip/test.zip"
    ),
))

register(DatasetSource(
    name="svhn",
    title="SVHN street view house numbers (cropped digits)",
    classes=DIGITS,
    splits={
        "train": (Layout(MatFormat("train_32x32.mat"), 73257, {
            "train_32x32.mat": Remote(_SVHN_URL + "train_32x32.mat",
                                      md5="e26dedcc434d2e4c54c9b2d4a06d8373")}),),
        "test": (Layout(MatFormat("test_32x32.mat"), 26032, {
            "test_32x32.mat": Remote(_SVHN_URL + "test_32x32.mat",
                                     md5="eb5a983be6a315427106f1b164d9cef3")}),),
    },
    license="non-commercial use only",
    homepage="http://ufldl.stanford.edu/housenumbers/",
    obtain="Download train_32x32.mat and test_32x32.mat (format 2, cropped digits)",
))

register(DatasetSource(
    name="syn_digits",
    title="SYN NUMBERS / SynDigits (Ganin & Lempitsky 2015)",
    classes=DIGITS,
    splits={
        "train": (Layout(MatFormat("synth_train_32x32.mat"), 479400),),
        "test": (Layout(MatFormat("synth_test_32x32.mat"), 9553),),
    },
    license="research use",
    homepage="http://yaroslav.ganin.net/",
    obtain=(
        "Get synth_train_32x32.mat and synth_test_32x32.mat (SVHN's .mat layout) from "
        "Ganin's SynNumbers release"
    ),
))

register(DatasetSource(
    name="gtsrb",
    title="GTSRB German traffic signs (32x32, whole frame)",
    classes=SIGNS,
    splits={
        "train": (
            Layout(ImageZipFormat("train.zip"), 39209),
            Layout(GtsrbTrainFormat("GTSRB-Training_fixed.zip"), 39209, {
                "GTSRB-Training_fixed.zip": Remote(_GTSRB_URL + "GTSRB-Training_fixed.zip",
                                                   md5="513f3c79a4c5141765e10e952eaa2478")}),
        ),
        "test": (
            Layout(ImageZipFormat("test.zip"), 12630),
            Layout(GtsrbTestFormat("GTSRB_Final_Test_Images.zip", "GTSRB_Final_Test_GT.zip"),
                   12630, {
                "GTSRB_Final_Test_Images.zip": Remote(_GTSRB_URL + "GTSRB_Final_Test_Images.zip",
                                                      md5="c7e4e6327067d32654124b0fe9e82185"),
                "GTSRB_Final_Test_GT.zip": Remote(_GTSRB_URL + "GTSRB_Final_Test_GT.zip",
                                                  md5="fe31e9c9270bbcd7b84b7f21a9d9d9e5"),
            }),
        ),
    },
    license="research use",
    homepage="https://benchmark.ini.rub.de/",
    obtain="Download the official training and final-test zips",
))

register(DatasetSource(
    name="syn_signs",
    title="SYN SIGNS synthetic traffic signs (Ganin & Lempitsky 2015); mirror: 1,982 of 100,000",
    classes=SIGNS,
    splits={"train": (Layout(ImageZipFormat("train.zip")),)},
    license="research use",
    homepage="http://yaroslav.ganin.net/",
    obtain="Pack the SYN SIGNS images as train.zip (images + labels.csv with file,label)",
))

register(DatasetSource(
    name="usps",
    title="USPS handwritten digits (16x16)",
    classes=DIGITS,
    splits={
        "train": (Layout(LibsvmUspsFormat("usps.bz2"), 7291, {
            "usps.bz2": Remote(_USPS_URL + "usps.bz2", md5="ec16c51db3855ca6c91edd34d0e9b197")}),),
        "test": (Layout(LibsvmUspsFormat("usps.t.bz2"), 2007, {
            "usps.t.bz2": Remote(_USPS_URL + "usps.t.bz2",
                                 md5="8ea070ee2aca1ac39742fdd1ef5ed118")}),),
    },
    license="unknown; distributed by LIBSVM for research",
    homepage="https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass.html#usps",
    obtain="Download usps.bz2 and usps.t.bz2 from LIBSVM's multiclass data sets",
    channels=1,
))

register(DatasetSource(
    name="cats_vs_dogs",
    title="Dogs vs. Cats (Kaggle), Chollet's 2000/1000/1000 split",
    classes=("cats", "dogs"),
    splits={
        split: (Layout(ImageFolderFormat(split, classes=("cats", "dogs")), count),)
        for split, count in (("train", 2000), ("val", 1000), ("test", 1000))
    },
    license="non-commercial research",
    homepage="https://www.kaggle.com/c/dogs-vs-cats",
    obtain="Arrange Kaggle's Dogs vs. Cats images as train|val|test/cats|dogs/*.jpg",
))

_SPLIT_NAMES = ("train", "val", "valid", "validation", "test")


def _folder_source(spec: str, path: Path) -> DatasetSource:
    if not path.is_dir():
        raise TransferkitError(f"{spec}: {path} is not a directory (expected an ImageFolder tree)")
    split_dirs = [p.name for p in sorted(path.iterdir()) if p.is_dir() and p.name in _SPLIT_NAMES]
    if split_dirs:
        classes = tuple(folder_classes(path / split_dirs[0]))
        splits = {s: (Layout(ImageFolderFormat(s, classes=classes)),) for s in split_dirs}
    else:
        classes = tuple(folder_classes(path))
        splits = {"all": (Layout(ImageFolderFormat(".", classes=classes)),)}
    return DatasetSource(
        name=spec, title=f"image folder {path}", classes=classes, splits=splits,
        license="user data", homepage="", obtain="", directory=path,
    )


def _zip_source(spec: str, path: Path) -> DatasetSource:
    if path.is_file():
        directory, splits = path.parent, {"all": (Layout(ImageZipFormat(path.name)),)}
    elif path.is_dir():
        zips = sorted(path.glob("*.zip"))
        if not zips:
            raise TransferkitError(f"{spec}: {path} holds no SPLIT.zip files")
        directory, splits = path, {z.stem: (Layout(ImageZipFormat(z.name)),) for z in zips}
    else:
        raise TransferkitError(f"{spec}: {path} does not exist (expected a .zip or a folder of them)")
    names = directory / "classes.txt"
    classes = tuple(read_text_file(names).split()) if names.is_file() else None
    return DatasetSource(
        name=spec, title=f"image zip {path}", classes=classes, splits=splits,
        license="user data", homepage="", obtain="", directory=directory,
    )


def get_source(name: str) -> DatasetSource:
    """A registered data set by name, or user data as ``folder:PATH`` / ``zip:PATH``."""
    kind, _, rest = name.partition(":")
    if rest and kind == "folder":
        return _folder_source(name, Path(rest).expanduser())
    if rest and kind == "zip":
        return _zip_source(name, Path(rest).expanduser())
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise TransferkitError(
            f"unknown data set {name!r}: expected one of {known}, folder:PATH or zip:PATH"
        ) from None
