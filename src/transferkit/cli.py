"""The ``transferkit`` command. Thin: parses arguments, calls the library, formats output.

User errors (bad arguments, missing or corrupt data) print one line on stderr and exit 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from transferkit import __version__
from transferkit.errors import TransferkitError

EXIT_USER_ERROR = 2
EXIT_DATA_BAD = 1


def _data_list(args: argparse.Namespace) -> int:
    from transferkit.data.formats import present
    from transferkit.data.root import resolve_data_root
    from transferkit.data.sources import REGISTRY

    root = resolve_data_root(args.data_root)
    print(f"data root: {root}")
    for source in REGISTRY.values():
        base = source.base(root)
        found = []
        for split, layouts in source.splits.items():
            layout = next((lay for lay in layouts if present(lay.format, base)), None)
            if layout is not None:
                try:
                    count = f"{layout.format.count(base):,}"
                except TransferkitError:
                    count = "unreadable"
                found.append(f"{split} {count}")
        where = str(base) if found else "missing"
        classes = len(source.classes) if source.classes else "?"
        print(f"{source.name:<13} {where}")
        print(f"{'':<13} {source.title}; {classes} classes; licence: {source.licence}")
        print(f"{'':<13} splits: {' · '.join(found) if found else ', '.join(source.splits)}")
    return 0


def _data_verify(args: argparse.Namespace) -> int:
    from transferkit.data.root import resolve_data_root
    from transferkit.data.sources import REGISTRY
    from transferkit.data.verify import read_manifests, verify_source

    root = resolve_data_root(args.root)
    manifest = read_manifests(root)
    names = args.datasets or list(REGISTRY)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise TransferkitError(f"unknown data set(s) {', '.join(unknown)}: expected "
                               f"{', '.join(REGISTRY)}")
    print(f"data root: {root}")
    bad = 0
    for name in names:
        report = verify_source(REGISTRY[name], root, manifest, decode=args.decode)
        counts = " · ".join(
            f"{s.split} {s.count}" + (f"/{s.expected}" if s.expected not in (None, s.count) else "")
            for s in report.splits
        )
        checks = ",".join(sorted({s.checked_by for s in report.splits if s.checked_by}))
        detail = {
            "intact": f"{counts}  ({checks})",
            "partial": f"{counts}  ({checks}); missing split(s): {', '.join(report.missing)}",
            "missing": f"not under {report.directory}",
            "CORRUPT": "; ".join(report.problems),
        }[report.status]
        print(f"{name:<13} {report.status:<8} {detail}")
        bad += report.status == "CORRUPT"
    return EXIT_DATA_BAD if bad else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transferkit",
        description=(
            "Transfer learning toolkit: feature extraction, fine-tuning and unsupervised "
            "domain adaptation. Data sets are read from the data root: --data-root, else "
            "$TRANSFERKIT_DATA, else ../shared/data when present, else ~/.cache/transferkit/data."
        ),
    )
    parser.add_argument("--version", action="version", version=f"transferkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    data = commands.add_parser("data", help="list and verify data sets",
                               description="List and verify the data sets under the data root.")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION")
    data_commands.required = True
    listing = data_commands.add_parser(
        "list", help="each data set: where it was found, its splits and counts",
        description="Each registered data set: where it was found, its splits and sample "
                    "counts (read from headers and label files, nothing decoded).")
    listing.add_argument("--data-root", metavar="DIR", help="folder holding the data sets")
    listing.set_defaults(run=_data_list)
    verify = data_commands.add_parser(
        "verify", help="check files (checksums or full decode) and sample counts",
        description="Check every data set found under the root: sha256 from SHA256SUMS "
                    "manifests or published checksums where known, else a full decode; and "
                    "sample counts. One line per data set; exit 0 only if all found are intact.")
    verify.add_argument("datasets", nargs="*", metavar="NAME", help="data sets (default: all)")
    verify.add_argument("--root", "--data-root", dest="root", metavar="DIR",
                        help="folder holding the data sets")
    verify.add_argument("--decode", action="store_true",
                        help="also decode every image, even where checksums are known")
    verify.set_defaults(run=_data_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except TransferkitError as exc:
        if args.debug:
            raise
        print(f"transferkit: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("transferkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
