"""Errors a user can act on. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations

from pathlib import Path


class TransferkitError(Exception):
    """An error caused by input (arguments, files, data), not by a bug in transferkit."""


class DataError(TransferkitError):
    """A data file is unreadable, corrupt, or inconsistent with what its format promises."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class DataMissingError(TransferkitError):
    """A data set's files are not under the data root and could not be downloaded."""

    def __init__(self, dataset: str, directory: Path, files: list[str], where: str) -> None:
        self.dataset = dataset
        self.directory = directory
        self.files = files
        listing = ", ".join(files)
        super().__init__(
            f"{dataset}: missing {listing} in {directory}. {where} "
            f"(or pass --data-root / set TRANSFERKIT_DATA to a folder that holds them)"
        )
