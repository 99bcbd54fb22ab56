"""The ``transferkit`` command. Thin: parses arguments, calls the library, formats output.

User errors (bad arguments, missing or corrupt data) print one line on stderr and exit 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

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


def _adapt(args: argparse.Namespace) -> int:
    from transferkit.api import DomainAdapter

    out = args.out or f"runs/{args.source}-{args.target}-{args.method}-seed{args.seed}"
    adapter = DomainAdapter(
        method=args.method, network=args.network, image_size=args.image_size,
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
        steps_per_epoch=args.steps_per_epoch, seed=args.seed, device=args.device,
        run_dir=out, data_root=args.data_root, binarize_source=args.binarize_source,
        progress=not args.quiet,
    ).fit(args.source, args.target)
    results = adapter.results_
    oracle = " (oracle: trained on target labels)" if results["oracle"] else ""
    print(f"{args.method} {args.source} → {args.target}{oracle}: target-test accuracy "
          f"{results['target_test_accuracy']:.4f}, source-test "
          f"{results['source_test_accuracy'] if results['source_test_accuracy'] is not None else '—'}"
          f", {results['wall_seconds']:.0f} s on {results['device']}; run directory {out}")
    return 0


def _parse_list(text: str | None, allowed: list[str], what: str) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in allowed]
    if unknown or not items:
        raise TransferkitError(f"--{what} {text}: expected a comma-separated list of "
                               f"{', '.join(allowed)}")
    return items


def _benchmark(args: argparse.Namespace) -> int:
    from transferkit.benchmarks.protocols import PROTOCOLS
    from transferkit.benchmarks.runner import RunOptions, run_protocol

    protocol = PROTOCOLS[args.protocol]
    by_key = {p.key: p for p in protocol.pairs}
    pair_keys = _parse_list(args.pairs, list(by_key), "pairs") or list(by_key)
    methods = _parse_list(args.methods, list(protocol.methods), "methods") or list(protocol.methods)
    if args.seeds < 1:
        raise TransferkitError(f"--seeds {args.seeds}: expected a positive number")
    out = Path(args.out or f"runs/{protocol.name}")
    command = "transferkit " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""
    options = RunOptions(seeds=args.seeds, epochs=args.epochs, device=args.device,
                         data_root=args.data_root, progress=not args.quiet)
    run_protocol(protocol, [by_key[k] for k in pair_keys], methods, out, options, command)
    print((out / "table.md").read_text())
    print(f"results: {out / 'results.json'}, {out / 'table.md'}")
    return 0


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

    from transferkit.names import METHOD_NAMES, NETWORK_NAMES

    adapt = commands.add_parser(
        "adapt", help="unsupervised domain adaptation from a labelled source to a target",
        description="Train one method on a domain pair. The run directory gets config.json, "
                    "metrics.jsonl (one line per epoch), metrics.json (final numbers) and "
                    "model.safetensors; rerunning with the same --out resumes from the last "
                    "finished epoch. Target-test labels give the final number only.")
    adapt.add_argument("--method", required=True, choices=METHOD_NAMES,
                       help="source_only, sa (Subspace Alignment), dann, target_only (oracle)")
    adapt.add_argument("--source", required=True, help="labelled source data set, e.g. mnist")
    adapt.add_argument("--target", required=True, help="unlabelled target data set, e.g. mnist_m")
    adapt.add_argument("--epochs", type=int, default=10, help="passes over the labelled data")
    adapt.add_argument("--seed", type=int, default=0)
    adapt.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    adapt.add_argument("--out", metavar="DIR", help="run directory (default runs/S-T-M-seedK)")
    adapt.add_argument("--network", choices=NETWORK_NAMES,
                       help="the paper's network to use (default: the paper's for the pair)")
    adapt.add_argument("--image-size", type=int, help="common input size of both domains")
    adapt.add_argument("--batch-size", type=int, default=64,
                       help="source images per step (and as many target images)")
    adapt.add_argument("--lr", type=float, default=0.01, help="initial learning rate μ₀")
    adapt.add_argument("--steps-per-epoch", type=int, help="default: one pass over the source")
    adapt.add_argument("--binarize-source", action="store_true",
                       help="source pixels > 0 become 255 (MNIST as MNIST-M's digits were drawn)")
    adapt.add_argument("--data-root", metavar="DIR", help="folder holding the data sets")
    adapt.add_argument("--quiet", action="store_true", help="no progress bars")
    adapt.set_defaults(run=_adapt)

    from transferkit.benchmarks.protocols import PROTOCOLS

    bench = commands.add_parser(
        "benchmark", help="reproduce a paper's table (e.g. ganin2016)",
        description="Run every method x pair x seed of a protocol whose data is present and "
                    "write OUT/results.json and OUT/table.md beside the paper's numbers. "
                    "Finished runs are kept: an interrupted benchmark resumes.")
    bench.add_argument("protocol", choices=list(PROTOCOLS))
    bench.add_argument("--pairs", help="comma-separated SOURCE:TARGET (default: all)")
    bench.add_argument("--methods", help="comma-separated methods (default: all)")
    bench.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per method and pair")
    bench.add_argument("--epochs", type=int, help="override the protocol's epochs (quick runs)")
    bench.add_argument("--device", default="auto", help="auto, cpu or cuda")
    bench.add_argument("--out", metavar="DIR", help="output folder (default runs/PROTOCOL)")
    bench.add_argument("--data-root", metavar="DIR", help="folder holding the data sets")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    bench.set_defaults(run=_benchmark)
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
