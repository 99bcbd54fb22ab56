"""Check the data under a root: checksums where known, else a full decode; counts always."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transferkit.data.decode import read_text_file, reason
from transferkit.data.download import checksum_problem
from transferkit.data.loading import find_layout, read_layout
from transferkit.data.sources import DatasetSource, Layout
from transferkit.errors import TransferkitError


def read_manifests(data_root: Path) -> dict[Path, str]:
    """sha256 of files listed in ``SHA256SUMS`` (paths from the root) and ``NAME.SHA256SUMS``
    (paths from ``NAME/``), as the offline mirror ships them."""
    checksums: dict[Path, str] = {}
    for manifest in sorted(data_root.glob("*SHA256SUMS")):
        prefix = manifest.name[: -len(".SHA256SUMS")] if manifest.name != "SHA256SUMS" else ""
        base = data_root / prefix
        for line in read_text_file(manifest).splitlines():
            digest, _, name = line.strip().partition(" ")
            name = name.strip().lstrip("*")
            if digest and name:
                checksums[(base / name).resolve()] = digest.lower()
    return checksums


@dataclass
class SplitReport:
    split: str
    count: int | None = None
    expected: int | None = None
    checked_by: str = ""  # "sha256", "md5", "decode" or a mix


@dataclass
class DatasetReport:
    name: str
    directory: Path
    splits: list[SplitReport] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.problems:
            return "CORRUPT"
        if not self.splits:
            return "missing"
        return "partial" if self.missing else "intact"


def _checksums(layout: Layout, base: Path, manifest: dict[Path, str]) -> list[tuple[Path, dict]]:
    """Each member file with the checksum it must match ({} when none is known)."""
    pairs = []
    for path in layout.format.members(base):
        known = manifest.get(path.resolve())
        if known:
            pairs.append((path, {"sha256": known}))
            continue
        remote = layout.remote.get(str(path.relative_to(base)))
        pairs.append((path, {"md5": remote.md5, "sha256": remote.sha256} if remote else {}))
    return pairs


def _listed_but_absent(layout: Layout, base: Path, manifest: dict[Path, str]) -> list[Path]:
    roots = [(base / name).resolve() for name in layout.format.files]
    return sorted(
        path for path in manifest
        if any(path == r or r in path.parents for r in roots) and not path.exists()
    )


def _check_split(
    source: DatasetSource, split: str, data_root: Path, layout: Layout, manifest: dict[Path, str],
    decode: bool, report: DatasetReport, split_report: SplitReport, methods: set[str],
) -> None:
    base = source.base(data_root)
    unchecked = decode
    for path in _listed_but_absent(layout, base, manifest):
        report.problems.append(f"{path}: listed in a SHA256SUMS manifest but missing")
    for path, sums in _checksums(layout, base, manifest):
        if not any(sums.values()):
            unchecked = True
            continue
        methods.update(k for k, v in sums.items() if v)
        problem = checksum_problem(path, **sums)
        if problem:
            report.problems.append(f"{path}: {problem}")
    if unchecked:
        methods.add("decode")
        split_report.count = len(read_layout(source, split, data_root, layout))
    else:
        split_report.count = layout.format.count(base)


def verify_source(
    source: DatasetSource, data_root: Path, manifest: dict[Path, str], decode: bool = False
) -> DatasetReport:
    base = source.base(data_root)
    report = DatasetReport(source.name, base)
    for split in source.splits:
        layout = find_layout(source, split, data_root)
        if layout is None:
            report.missing.append(split)
            continue
        split_report = SplitReport(split, expected=layout.expected)
        report.splits.append(split_report)
        methods: set[str] = set()
        try:  # a split that cannot be read is this data set's problem; the next one is checked
            _check_split(source, split, data_root, layout, manifest, decode, report, split_report,
                         methods)
        except TransferkitError as exc:
            report.problems.append(str(exc))
            continue
        except OSError as exc:
            report.problems.append(f"{getattr(exc, 'filename', None) or base}: cannot be read "
                                   f"({reason(exc)})")
            continue
        split_report.checked_by = "+".join(sorted(methods))
        if layout.expected is not None and split_report.count != layout.expected:
            report.problems.append(
                f"{base}: {split} has {split_report.count} samples, expected {layout.expected}"
            )
    return report
