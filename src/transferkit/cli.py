"""The ``transferkit`` command. Thin: parses arguments, calls the library, formats output.

User errors (bad arguments, missing or corrupt data) print one line on stderr and exit 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from transferkit import __version__
from transferkit.errors import TransferkitError

EXIT_USER_ERROR = 2
EXIT_DATA_BAD = 1

# The smallest --image-size of `adapt` that every digit network takes: the MNIST network's
# two unpadded 5×5 convolutions and 2×2 poolings leave nothing of a side below 16
# (models.digit_networks.minimum_image_size; a test keeps the two in step).
ADAPT_MIN_IMAGE_SIZE = 16
# The smallest --image-size of the recipes (transferkit.recipes checks the backbone itself).
RECIPE_MIN_IMAGE_SIZE = 8
# The largest --image-size: 1,024 px is four times ImageNet's 224 (an image of it, as float,
# takes 12.6 MB; a batch of 64, 0.8 GB): beyond it memory, not the model, decides.
MAX_IMAGE_SIZE = 1024
SEED_MAX = 2**32 - 1


# -- argument types: every numeric flag is checked here, before any data is read ----------------
# argparse turns an ArgumentTypeError into "transferkit CMD: error: argument --FLAG: MESSAGE"
# (one line after the usage line) and exit code 2.


def integer(minimum: int, maximum: int | None = None, what: str = "") -> Callable[[str], int]:
    """An argparse type: an integer from ``minimum`` (to ``maximum``)."""
    expected = (f"an integer ≥ {minimum}" if maximum is None
                else f"an integer from {minimum} to {maximum}") + (f" ({what})" if what else "")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    parse.__name__ = "integer"
    return parse


positive_int = integer(1)
non_negative_int = integer(0)
seed_int = integer(0, SEED_MAX)


def _finite(text: str, expected: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (learning rates)."""
    expected = "a finite number > 0"
    value = _finite(text, expected)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
    return value


def open_unit_interval(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1 (a decay, a probability)."""
    expected = "a number strictly between 0 and 1 (such as 0.999)"
    value = _finite(text, expected)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
    return value


def decay_or_none(text: str) -> float | str:
    """An argparse type: :func:`open_unit_interval`, or ``none`` (no weight average)."""
    return "none" if text.strip().lower() == "none" else open_unit_interval(text)


def training_sizes(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated training-set sizes, each at least 2, none repeated."""
    expected = "comma-separated integers ≥ 2 (training-set sizes), none repeated"
    try:
        sizes = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if any(n < 2 for n in sizes) or len(set(sizes)) != len(sizes):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
    return sizes


def unfreeze_stages(text: str) -> str:
    """An argparse type: a number of stages ≥ 0, a stage name or ``all`` (names are checked
    against the backbone once it is built)."""
    try:
        count = int(text)
    except ValueError:
        if not text.strip():
            raise argparse.ArgumentTypeError("expected a number of stages ≥ 0, a stage name or "
                                             "'all', got ''") from None
        return text
    if count < 0:
        raise argparse.ArgumentTypeError(f"expected a number of stages ≥ 0, a stage name or "
                                         f"'all', got {text}")
    return str(count)


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
        print(f"{'':<13} {source.title}; {classes} classes; license: {source.license}")
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
    bad = found = 0
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
        found += report.status != "missing"
    if not found:  # nothing verified is no success: a wrong --root would pass silently
        print(f"transferkit: no data set found under {root}: nothing was verified (each lies in "
              f"ROOT/NAME/, see transferkit data list)", file=sys.stderr)
        return EXIT_DATA_BAD
    return EXIT_DATA_BAD if bad else 0


def _data_make(args: argparse.Namespace) -> int:
    import numpy as np

    from transferkit.data.blend import make_blended
    from transferkit.data.loading import load_split
    from transferkit.data.sources import get_source

    source = get_source(args.digits)
    splits = {}
    classes: list[str] = []
    for split in source.splits:
        image_set = load_split(args.digits, split, args.data_root)
        if not isinstance(image_set.images, np.ndarray):
            raise TransferkitError(f"--digits {args.digits}: its {split} images differ in size; "
                                   "expected digits of one size (at most 32×32)")
        if image_set.images.shape[-1] != 1:
            raise TransferkitError(f"--digits {args.digits}: expected gray images, its {split} split "
                                   f"has {image_set.images.shape[-1]} channels")
        count = len(image_set.labels) if args.limit is None else min(args.limit, len(image_set.labels))
        splits[split] = (np.asarray(image_set.images[:count]), np.asarray(image_set.labels[:count]))
        classes = [str(c) for c in image_set.classes]
    out = Path(args.out)
    record = make_blended(out, Path(args.photos), splits, classes, seed=args.seed,
                          describe={"name": args.name, "digits": args.digits, "limit": args.limit},
                          progress=not args.quiet)
    counts = ", ".join(f"{split} {info['count']:,}" for split, info in record["splits"].items())
    print(f"{args.name}: {counts} images from {args.digits} on patches of {record['photo_count']:,} "
          f"photos (seed {args.seed}) in {out}; use it as zip:{out}")
    return 0


def _adapt(args: argparse.Namespace) -> int:
    from transferkit.api import DomainAdapter, adapt_defaults, takes_recipe
    from transferkit.checks import PredictionShares

    # a setting not given is the recipe's (a pair outside the paper's table) or the plain default
    given = {"epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch,
             "ema_decay": args.ema_decay, "input_norm": args.input_norm, "select": args.select}
    settings = adapt_defaults(args.source, args.target, args.backbone, args.method)
    settings.update({key: value for key, value in given.items() if value is not None})
    method = settings.pop("method")
    defaulted = [f"--{key.replace('_', '-')} {settings[key]}" for key in given if given[key] is None]
    if args.method is None:
        defaulted.insert(0, f"--method {method}")
    if takes_recipe(args.source, args.target, args.backbone) and defaulted and not args.quiet:
        print(f"transferkit: {args.source} → {args.target} is outside the paper's table, so the "
              f"adaptation recipe's defaults apply: {', '.join(defaulted)}", file=sys.stderr)
    for key, off in (("ema_decay", "none"), ("input_norm", "none"), ("select", "last")):
        settings[key] = None if settings[key] == off else settings[key]
    out = args.out or f"runs/{args.source}-{args.target}-{method}-seed{args.seed}"
    adapter = DomainAdapter(
        method=method, network=args.network, image_size=args.image_size,
        batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed, device=args.device,
        run_dir=out, data_root=args.data_root, binarize_source=args.binarize_source,
        geometry=args.geometry, progress=not args.quiet, restart=args.restart,
        backbone=args.backbone, weights=args.weights, unfreeze=args.unfreeze,
        bottleneck=args.bottleneck or None, log=args.log, precision=args.precision,
        keep_epochs=args.keep_epochs, **settings,
    ).fit(args.source, args.target)
    results = adapter.results_
    if adapter.as_recorded_ and not args.quiet:
        print(f"transferkit: {out} holds this run, finished: reported as recorded (--restart trains "
              "it again)", file=sys.stderr)
    oracle = " (oracle: trained on target labels)" if results["oracle"] else ""
    source_test = results["source_test_accuracy"]
    target = results["target_test_accuracy"]
    print(f"{method} {args.source} → {args.target}{oracle}: target-test accuracy "
          f"{'— (unlabelled target)' if target is None else f'{target:.4f}'}, source-test "
          f"{f'{source_test:.4f}' if source_test is not None else '—'}"
          f", {results['wall_seconds']:.0f} s on {results['device']}; run directory {out}")
    warning = PredictionShares.from_dict(results["label_free_check"]).message()
    if warning:
        print(warning)
    return 0


def _reverse_validate(args: argparse.Namespace) -> int:
    from transferkit.api import DomainAdapter, read_run_config
    from transferkit.selection import RESULT_FILE, reverse_validation

    pairs = {}
    for run in args.run_dirs:  # every folder checked before hours of training start
        config = read_run_config(Path(run))
        pairs[run] = f"{config['source']} → {config['target']}"
    if len(set(pairs.values())) > 1:
        listed = "; ".join(f"{run}: {pair}" for run, pair in pairs.items())
        raise TransferkitError(f"reverse-validation scores compare runs of one domain pair, "
                               f"got several ({listed})")
    scores = {}
    for run in args.run_dirs:
        adapter = DomainAdapter.load(run, data_root=args.data_root, device=args.device,
                                     progress=not args.quiet)
        record = reverse_validation(adapter, epochs=args.epochs, run_dir=run,
                                    progress=not args.quiet)
        scores[run] = record["score"]
        print(f"reverse validation of {run} ({record['method']} {record['source']} → "
              f"{record['target']}, seed {record['seed']}): {record['score']:.4f} on the "
              f"{record['scored_on']} ({record['scored_images']} images), reverse run of "
              f"{record['reverse_epochs']} epochs, {record['wall_seconds']:.0f} s; "
              f"{Path(run) / RESULT_FILE}")
    if len(scores) > 1:
        best = max(scores, key=lambda run: scores[run])  # the first listed wins a tie
        print(f"highest reverse-validation score: {best} ({scores[best]:.4f})")
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

    if args.protocol == "cats_vs_dogs":
        return _benchmark_cats_vs_dogs(args)
    if args.protocol == "advise":
        from transferkit.advise.benchmark import run_benchmark

        out = Path(args.out or "runs/advise")
        run_benchmark(out, args.runs, seeds=args.seeds, device=args.device, data_root=args.data_root,
                      progress=not args.quiet)
        print((out / "table.md").read_text())
        print(f"results: {out / 'results.json'}, {out / 'table.md'}")
        return 0
    protocol = PROTOCOLS[args.protocol]
    by_key = {p.key: p for p in protocol.pairs}
    pair_keys = _parse_list(args.pairs, list(by_key), "pairs") or list(by_key)
    methods = _parse_list(args.methods, list(protocol.methods), "methods") or list(protocol.methods)
    out = Path(args.out or f"runs/{protocol.name}")
    command = "transferkit " + shlex.join(sys.argv[1:]) if sys.argv[1:] else ""
    if args.machine is not None and not args.report_only:
        raise TransferkitError("--machine describes runs made elsewhere: use it with "
                               "--report-only")
    options = RunOptions(seeds=args.seeds, epochs=args.epochs, device=args.device,
                         data_root=args.data_root, progress=not args.quiet,
                         oracle_seeds=args.oracle_seeds, jobs=args.jobs,
                         report_only=args.report_only, machine=args.machine,
                         keep_epochs=args.keep_epochs,
                         select=None if args.select == "last" else args.select,
                         input_norm=None if args.input_norm == "none" else args.input_norm)
    run_protocol(protocol, [by_key[k] for k in pair_keys], methods, out, options, command)
    print((out / "table.md").read_text())
    picture = f", {out / 'accuracies.png'}" if (out / "accuracies.png").is_file() else ""
    print(f"results: {out / 'results.json'}, {out / 'table.md'}{picture}")
    return 0


def _recipe(args: argparse.Namespace) -> int:
    from transferkit.recipes import RecipeConfig, run

    recipe = args.command
    fields = {"recipe": recipe, "data": args.data, "backbone": args.backbone, "weights": args.weights,
              "image_size": args.image_size, "head": args.head, "epochs": args.epochs,
              "learning_rate": args.lr, "batch_size": args.batch_size, "patience": args.patience,
              "train_size": args.train_size, "seed": args.seed, "device": args.device,
              "flip": not args.no_flip,
              "precision": None if args.precision == "fp32" else args.precision}
    if recipe == "finetune":
        fields.update(views=args.views, unfreeze=args.unfreeze, finetune_epochs=args.finetune_epochs,
                      finetune_learning_rate=args.finetune_lr)
    if recipe == "extract":
        fields.update(views=1)
    config = RecipeConfig(**fields)
    out = Path(args.out or f"runs/{recipe}-{args.data.replace(':', '_').replace('/', '_')}-seed{args.seed}")
    result = run(config, out, args.data_root, progress=not args.quiet, restart=args.restart, log=args.log)
    test = f"test accuracy {result['test_accuracy']:.4f}, " if "test_accuracy" in result else ""
    print(f"{recipe} {config.backbone} on {config.data}: {test}validation {result['val_accuracy']:.4f} "
          f"({result['train_size']} training images, {result['wall_seconds']:.0f} s on {result['device']})")
    print(f"model: {out / 'model.safetensors'}; predict with: transferkit predict {out} IMAGES…")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import json

    from transferkit.predict import expand, load_predictor, predict_files
    from transferkit.training.device import resolve_device

    model = load_predictor(args.model)  # any run folder: adapt, extract, finetune, scratch
    files = expand(args.images)
    results = predict_files(model, files, top=args.top, device=resolve_device(args.device))
    failed = 0
    for r in results:
        if r.error:
            failed += 1
            print(f"transferkit: {r.path}: {r.error}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps({"file": str(r.path), "class": r.label, "probability": r.probability,
                              "top": [{"class": c, "probability": p} for c, p in r.top]}))
        else:
            extra = "  " + ", ".join(f"{c} {p:.3f}" for c, p in r.top[1:]) if len(r.top) > 1 else ""
            print(f"{r.path}\t{r.label}\t{r.probability:.3f}{extra}")
    return EXIT_DATA_BAD if failed else 0


def _export_format(text: str) -> str:
    """An argparse type: a format of ``transferkit export`` (onnx, pt2)."""
    from transferkit.export import format_problem

    problem = format_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def _export(args: argparse.Namespace) -> int:
    import json

    from transferkit.export import description_path, export_run

    path = export_run(args.run_dir, args.format, args.out)
    description = json.loads(description_path(path).read_text())
    checked = description["verified"]
    runtime = description.get("runtime", "torch.export.load")
    print(f"{args.format} model: {path} ({description['run_kind']} run, {len(description['classes'])} "
          f"classes; input {'×'.join(map(str, description['input']['shape']))} float32 in [0, 1], "
          f"output probabilities); checked with {runtime} on {checked['random_images']} random images: "
          f"probabilities within {checked['max_abs_difference']:.1e} of PyTorch's")
    print(f"preprocessing, classes and steps: {description_path(path)}")
    return 0


def _advise(args: argparse.Namespace) -> int:
    from transferkit.advise.advisor import advise, render

    candidates = [c.strip() for c in (args.backbones or "efficientnet_lite0").split(",") if c.strip()]
    result = advise(args.target, args.source, candidates, samples=args.samples, device=args.device,
                    data_root=args.data_root, out=args.out, progress=not args.quiet,
                    reference=not args.no_reference)
    print(render(result))
    if args.out:
        print(f"results: {Path(args.out) / 'advise.json'}, {Path(args.out) / 'advise.md'}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from transferkit.report import report

    page = report(args.run_dir, args.out, args.before, args.samples, args.data_root)
    print(f"report: {page} (open it in a browser; the PNGs are beside it)")
    return 0


def _add_recipe(commands, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    scratch = name == "scratch"
    parser = commands.add_parser(name, help=help_text, description=description)
    parser.add_argument("--data", default="cats_vs_dogs",
                        help="labelled data set with train (+ val, test) splits: a registered name or "
                             "folder:PATH holding train/CLASS/*.jpg (val/ and test/ likewise; without "
                             "val/, 20%% of train is held out)")
    parser.add_argument("--backbone", default="small_convnet" if scratch else "efficientnet_lite0",
                        help="torchvision model name (vgg16, resnet50, …), timm:NAME, efficientnet_lite0 "
                             "(offline ImageNet weights) or small_convnet; default %(default)s")
    parser.add_argument("--weights", default="random" if scratch else "imagenet",
                        help="imagenet (the library's pretrained weights), random, or a state-dict file "
                             "(.safetensors, or .pth read with weights_only=True); default %(default)s")
    parser.add_argument("--image-size", type=integer(RECIPE_MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, what="pixels"),
                        help=f"input size, {RECIPE_MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} "
                             "(default: the backbone's)")
    parser.add_argument("--head", default="linear", choices=["linear", "mlp"],
                        help="new classifier: linear, or mlp (Dense 256 + dropout 0.5, as Chollet)")
    parser.add_argument("--epochs", type=positive_int, default=40,
                        help="most epochs of " + ("training" if scratch else "head training")
                        + " (%(default)s)")
    parser.add_argument("--lr", type=positive_float, default=1e-3, help="AdamW learning rate (%(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per step (%(default)s)")
    parser.add_argument("--patience", type=positive_int, default=6,
                        help="stop after this many epochs without a better validation accuracy (%(default)s)")
    if name == "finetune":
        parser.add_argument("--unfreeze", type=unfreeze_stages, default="2",
                            help="stage 2 trains the last K stages with weights, from a named stage "
                                 "(e.g. block5 of vgg16, blocks.5 of efficientnet_lite0), or 'all'; "
                                 "default %(default)s")
        parser.add_argument("--views", type=non_negative_int, default=4,
                            help="augmented views of the training set whose frozen-prefix outputs are "
                                 "cached; 0 augments afresh every step (slower, unlimited "
                                 "augmentation); default %(default)s")
        parser.add_argument("--finetune-epochs", type=positive_int, default=10,
                            help="most epochs of stage 2 (%(default)s)")
        parser.add_argument("--finetune-lr", type=positive_float, default=1e-4,
                            help="stage 2 learning rate (%(default)s)")
    parser.add_argument("--train-size", type=integer(2, what="images"),
                        help="train on a class-balanced subset of this size (at least 2)")
    parser.add_argument("--no-flip", action="store_true",
                        help="no horizontal flips in augmentation (digits, text, road signs)")
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    parser.add_argument("--out", metavar="DIR", help="run folder (default runs/RECIPE-DATA-seedK)")
    parser.add_argument("--data-root", metavar="DIR", help="folder holding the data sets")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--restart", action="store_true",
                        help="discard what --out holds of this run (checkpoint, metrics, model) "
                             "and train it from the start")
    _add_run_options(parser)
    parser.set_defaults(run=_recipe)
    return parser


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    from transferkit.training.loop import PRECISIONS
    from transferkit.training.runlog import LOGS

    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="training steps under autocast: bf16 (GPUs and recent CPUs) or fp16 "
                             "(GPUs, with a gradient scaler); evaluation stays float32; default "
                             "fp32")
    parser.add_argument("--log", choices=LOGS, default="none",
                        help="watch the run live: tensorboard writes step losses, the learning "
                             "rate and each epoch's metrics to OUT/tensorboard (then: tensorboard "
                             "--logdir OUT/tensorboard; needs pip install 'transferkit[tensorboard]'); "
                             "default none")


def _benchmark_cats_vs_dogs(args: argparse.Namespace) -> int:
    from transferkit.benchmarks.cats_vs_dogs import SIZES, run_benchmark

    recipes = _parse_list(args.methods, ["scratch", "extract", "finetune"], "methods") or \
        ["scratch", "extract", "finetune"]
    sizes = args.sizes or SIZES
    if args.pairs or args.epochs:
        raise TransferkitError("--pairs and --epochs apply to domain-adaptation protocols, not cats_vs_dogs")
    out = Path(args.out or "runs/cats_vs_dogs")
    run_benchmark(out, seeds=args.seeds, sizes=sizes, recipes=tuple(recipes), curve_seeds=args.curve_seeds,
                  device=args.device, data_root=args.data_root, progress=not args.quiet)
    print((out / "table.md").read_text())
    print(f"results: {out / 'results.json'}, {out / 'table.md'}, {out / 'curve.png'}")
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

    data = commands.add_parser("data", help="list, verify and make data sets",
                               description="List and verify the data sets under the data root, "
                                           "or make an MNIST-M-like one.")
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
    make = data_commands.add_parser(
        "make", help="make an MNIST-M-like data set from digits and a folder of photos",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Make an MNIST-M-like data set as Ganin et al. 2016 (§5.2.1) made MNIST-M: "
                    "each digit\nbinarized, padded to 32×32 and blended over a random 32×32 "
                    "patch of a random photo,\n|digit − patch| per channel. Deterministic: the "
                    "same digits, photos and --seed give the\nsame bytes. The result is a zip: "
                    "data set (train.zip, test.zip, classes.txt, make.json).",
        epilog="example (transferkit's development pair, MNIST → MNIST-CD):\n"
               "  transferkit data make mnist_cd --photos ../shared/data/cats_vs_dogs/train "
               "--out data/mnist_cd\n"
               "  transferkit adapt --method dann --source mnist --target zip:data/mnist_cd")
    make.add_argument("name", metavar="NAME", help="a name for the new data set (recorded in make.json)")
    make.add_argument("--photos", required=True, metavar="DIR",
                      help="folder of color photos (searched recursively) to cut patches from")
    make.add_argument("--out", required=True, metavar="DIR", help="folder to write the data set to")
    make.add_argument("--digits", default="mnist",
                      help="gray digit data set to blend, every split of it (%(default)s)")
    make.add_argument("--seed", type=seed_int, default=0, help="random seed (%(default)s)")
    make.add_argument("--limit", type=positive_int, metavar="N",
                      help="only the first N images of each split (a quick, small set)")
    make.add_argument("--data-root", metavar="DIR", help="folder holding the digit data set")
    make.add_argument("--quiet", action="store_true", help="no progress bars")
    make.set_defaults(run=_data_make)

    from transferkit.names import GEOMETRIES, METHOD_NAMES, NETWORK_NAMES, SELECTOR_NAMES

    adapt = commands.add_parser(
        "adapt", help="unsupervised domain adaptation from a labelled source to a target",
        description="Train one method on a domain pair. The run directory gets config.json, "
                    "metrics.jsonl (one line per epoch), metrics.json (final numbers) and "
                    "model.safetensors; rerunning with the same --out resumes from the last "
                    "finished epoch. Target-test labels give the final number only. "
                    "Defaults: on a pair outside the paper's table with the paper's digit "
                    "networks, the recipe frozen in benchmarks/results/selftraining.md — "
                    "dann_fixmatch, instance-normalized inputs, 20 epochs of 1,000 steps, the "
                    "weight average (EMA 0.999) of each epoch kept and the one information "
                    "maximization scores highest on the unlabeled target images chosen; the "
                    "MNIST network at 28 px (the sign network for 43 classes). The paper's four "
                    "pairs, and any --backbone, default to 10 passes over the source and the "
                    "last weights. Any flag given overrides its default.")
    adapt.add_argument("--method", choices=METHOD_NAMES,
                       help="dann_fixmatch (default); source_only; sa (Subspace Alignment of the source-only "
                            "network's last hidden layer, size 2-60 chosen on source "
                            "validation); dann; target_only (oracle); dann_mcc (DANN + "
                            "Minimum Class Confusion on the target, Jin et al. 2020); cdan "
                            "(CDAN+E: the domain classifier conditioned on the class "
                            "predictions, Long et al. 2018); vada (DANN + target "
                            "entropy + virtual adversarial training, Shu et al. 2018); "
                            "dann_fixmatch (DANN + self-training: confident pseudo-labels "
                            "of weakly augmented target images teach strongly augmented "
                            "ones, FixMatch 2020 with AdaMatch's thresholds 2022) — the "
                            "last four past the DANN paper")
    adapt.add_argument("--source", required=True, help="labelled source data set, e.g. mnist")
    adapt.add_argument("--target", required=True,
                       help="target data set, e.g. mnist_m, folder:PATH, or unlabelled:PATH (a folder "
                            "of images without labels: no target accuracy is reported)")
    adapt.add_argument("--epochs", type=positive_int,
                       help="epochs (default: 20 with the recipe, each --steps-per-epoch long; "
                            "else 10 passes over the labelled data)")
    adapt.add_argument("--seed", type=seed_int, default=0)
    adapt.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    adapt.add_argument("--out", metavar="DIR", help="run directory (default runs/S-T-M-seedK)")
    adapt.add_argument("--network", choices=NETWORK_NAMES,
                       help="the paper's network to use (default: the paper's for its pairs; "
                            "else the MNIST network at 28 px, the sign network for 43 classes)")
    adapt.add_argument("--backbone", metavar="NAME",
                       help="adapt any backbone instead, with a new bottleneck and head: a "
                            "torchvision model (resnet50), timm:NAME, efficientnet_lite0, "
                            "small_convnet, run:DIR (a trained adapt run's network)")
    adapt.add_argument("--weights", default="imagenet", metavar="imagenet|random|FILE",
                       help="--backbone's starting weights (%(default)s; a FILE is a safetensors "
                            "or weights-only state dict)")
    adapt.add_argument("--unfreeze", type=unfreeze_stages, default="all", metavar="K|all|STAGE",
                       help="train the backbone's last K stages (or from STAGE on); the others "
                            "stay frozen (%(default)s)")
    adapt.add_argument("--bottleneck", type=non_negative_int, default=256, metavar="N",
                       help="width of the bottleneck between backbone and head, 0 for none "
                            "(%(default)s)")
    adapt.add_argument("--image-size",
                       type=integer(ADAPT_MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, what="pixels"),
                       help=f"common input size of both domains, {ADAPT_MIN_IMAGE_SIZE} (the smallest "
                            f"every digit network takes) to {MAX_IMAGE_SIZE}")
    adapt.add_argument("--batch-size", type=positive_int, default=64,
                       help="source images per step (and as many target images)")
    adapt.add_argument("--lr", type=positive_float, default=0.01, help="initial learning rate μ₀")
    adapt.add_argument("--steps-per-epoch", type=positive_int,
                       help="steps in an epoch (default: 1,000 with the recipe, whatever the "
                            "source's size; else one pass over the source)")
    adapt.add_argument("--binarize-source", action="store_true",
                       help="source pixels > 0 become 255 (MNIST as MNIST-M's digits were drawn)")
    adapt.add_argument("--geometry", choices=GEOMETRIES,
                       help="how images of another size reach --image-size: resize them, or "
                            "center-crop / zero-pad them (pixel scale kept). Default: center for "
                            "mnist → mnist_m (MNIST-M is MNIST padded by 2 px), else resize")
    adapt.add_argument("--ema-decay", type=decay_or_none, metavar="D|none",
                       help="keep an exponential moving average of the weights (w̄ ← D·w̄ + "
                            "(1−D)·w after every step; 0.999 averages over about 1,000 steps) and "
                            "make it the model; the last-epoch weights' accuracies are recorded "
                            "beside it. Default: 0.999 with the recipe, else none (the "
                            "last-epoch weights are the model)")
    adapt.add_argument("--data-root", metavar="DIR", help="folder holding the data sets")
    adapt.add_argument("--quiet", action="store_true", help="no progress bars")
    adapt.add_argument("--restart", action="store_true",
                       help="discard what --out holds of this run (checkpoint, metrics, model) and "
                            "train it from the start (a folder of other settings is still refused)")
    _add_run_options(adapt)
    adapt.add_argument("--input-norm", choices=("none", "instance", "auto"),
                       help="the paper's digit networks: instance (normalize each image's channels "
                            "to mean 0 and variance 1 first, with learnt scale and shift, as Shu et "
                            "al. 2018's networks), none (the pair's mean subtracted; the default "
                            "but with the recipe) or auto (the recipe's: instance on the MNIST "
                            "network, none on the others)")
    adapt.add_argument("--select", choices=("last", *SELECTOR_NAMES),
                       help="which epoch's model the run keeps: last (default but with the "
                            "recipe, which uses im), or the one a "
                            "label-free validator scores highest (keeps every epoch, see "
                            "--keep-epochs): class_shares, im, entropy, snd (on the target's "
                            "unlabelled training images) or source_accuracy (source test split); "
                            "docs/adaptation.md says how each was measured")
    adapt.add_argument("--keep-epochs", action="store_true",
                       help="also keep each epoch's model, OUT/epochs/epoch-K.safetensors (the "
                            "weight average where there is one), to choose an epoch afterwards "
                            "without target labels; a run resumes with or without it")
    adapt.set_defaults(run=_adapt)

    reverse = commands.add_parser(
        "reverse-validate", help="score finished adapt runs without target labels",
        description="Reverse validation (Zhong et al. 2010; the model selection of Ganin et al. "
                    "2016): the run's model pseudo-labels the target training images, the same "
                    "method adapts back from them to the unlabelled source images, and the "
                    "reverse model's accuracy on labelled source data it did not train on is "
                    "the score (higher is better). Compare runs of one pair with it — epochs, "
                    "hyper-parameters, methods — where target labels must not choose. Writes "
                    "RUN/reverse_validation.json and keeps the reverse run in "
                    "RUN/reverse_validation/ (an interrupted one resumes).")
    reverse.add_argument("run_dirs", metavar="RUN", nargs="+",
                         help="folder of a finished `transferkit adapt` run; several runs of one "
                              "pair are scored in turn and the highest is named")
    reverse.add_argument("--epochs", type=positive_int,
                         help="epochs of the reverse run (default: the run's own)")
    reverse.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    reverse.add_argument("--data-root", metavar="DIR", help="folder holding the data sets")
    reverse.add_argument("--quiet", action="store_true", help="no progress bars")
    reverse.set_defaults(run=_reverse_validate)

    _add_recipe(commands, "extract", "train a new head on a frozen pretrained base (features cached)",
                "Feature extraction: run the frozen base once per image (features cached on disk, so a "
                "second run skips it) and train a new classifier head on the features. The epoch is "
                "chosen on the validation split. Writes config.json, metrics.jsonl, metrics.json, "
                "model.safetensors and model.json to --out.")
    _add_recipe(commands, "finetune", "new head on the frozen base, then unfreeze the last blocks",
                "Fine-tuning in two stages: (1) a new head on the frozen base, with augmentation; "
                "(2) the last --unfreeze stages trained with the head at --finetune-lr. BatchNorm stays "
                "in inference mode; each stage keeps its best epoch on the validation split.")
    _add_recipe(commands, "scratch", "train a small convnet from random weights (the baseline)",
                "The no-transfer baseline: Chollet's four-block convnet (or any --backbone with "
                "--weights random) trained end to end with augmentation.")
    pred = commands.add_parser(
        "predict", help="class and probability for images, with a saved model",
        description="Print FILE, class and probability for each image (files or folders, searched "
                    "recursively). Unreadable files are reported on stderr and the exit code is 1.")
    pred.add_argument("model", metavar="MODEL",
                      help="run folder written by adapt, extract, finetune or scratch")
    pred.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    pred.add_argument("--top", type=positive_int, default=1,
                      help="also list the next most likely classes (%(default)s: the most likely only)")
    pred.add_argument("--json", action="store_true", help="one JSON object per line")
    pred.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    pred.set_defaults(run=_predict)

    exp = commands.add_parser(
        "export", help="write a run's model as ONNX (or a torch.export program) to ship",
        description="Write the trained model of a run folder as one file that runs without "
                    "transferkit, and RUN_DIR/model.onnx.json (FILE.json) beside it: how to turn an "
                    "image file into the graph's input (decode, resize, crop, / 255), the class names "
                    "in order, and the run's normalization, which the graph applies itself. The graph "
                    "takes float32 N×3×S×S RGB images in [0, 1] at the run's size S (any N) and gives "
                    "N×K class probabilities; it is loaded as predict loads the run, and checked "
                    "against it on random images before it is written. ONNX needs "
                    "pip install 'transferkit[export]'.")
    exp.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of adapt, extract, finetune or scratch")
    exp.add_argument("--format", default="onnx", type=_export_format, metavar="onnx|pt2",
                     help="onnx (checked with onnxruntime) or pt2 (torch.export's program, for "
                          "torch.export.load; TorchScript is deprecated in torch 2.14); default %(default)s")
    exp.add_argument("--out", metavar="FILE",
                     help="where to write the model (default RUN_DIR/model.onnx or RUN_DIR/model.pt2); "
                          "its description goes to FILE.json")
    exp.set_defaults(run=_export)

    adv = commands.add_parser(
        "advise", help="should I transfer, and from what? (LogME, LEEP, H-score, domain gap)",
        description="Score candidate networks for a labelled target data set without training "
                    "(LogME, H-score on their frozen features; LEEP on their own classifiers' outputs), "
                    "measure the domain gap to --source (proxy A-distance on pixels and features), and "
                    "recommend: train from scratch, extract features, fine-tune, or adapt without labels.")
    adv.add_argument("--target", required=True, help="labelled target data set (name or folder:PATH)")
    adv.add_argument("--source", help="source data set, to measure the domain gap")
    adv.add_argument("--backbones", help="comma-separated candidates NAME[@WEIGHTS]: efficientnet_lite0, "
                                         "resnet50@imagenet, timm:NAME, run:DIR (a transferkit adapt run); "
                                         "default efficientnet_lite0")
    adv.add_argument("--samples", type=integer(10, what="images"), default=1000,
                     help="class-balanced target images to score on (default %(default)s)")
    adv.add_argument("--no-reference", action="store_true",
                     help="do not add the first candidate with random weights as a reference")
    adv.add_argument("--device", default="auto", help="auto, cpu or cuda")
    adv.add_argument("--out", metavar="DIR", help="write advise.json and advise.md here")
    adv.add_argument("--data-root", metavar="DIR", help="folder holding the data sets")
    adv.add_argument("--quiet", action="store_true", help="no progress output")
    adv.set_defaults(run=_advise)

    rep = commands.add_parser(
        "report", help="one self-contained HTML page about a run (curves, confusion, t-SNE)",
        description="Write RUN_DIR/report/report.html and its PNGs: config and results, learning curves, "
                    "a confusion matrix, sample images, and a t-SNE of features (for adaptation runs: "
                    "source and target, before and after adaptation, with their proxy A-distance).")
    rep.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of adapt, extract, finetune or scratch")
    rep.add_argument("--out", metavar="DIR", help="where to write (default RUN_DIR/report)")
    rep.add_argument("--before", metavar="DIR",
                     help="adaptation runs: the run whose features are 'before' (default: the sibling "
                          "source_only run of the same seed, else the untrained network)")
    rep.add_argument("--samples", type=integer(10, what="images"), default=500,
                     help="images per domain in the t-SNE, at least 10 (%(default)s)")
    rep.add_argument("--data-root", metavar="DIR", help="folder holding the data sets")
    rep.set_defaults(run=_report)

    from transferkit.benchmarks.protocols import PROTOCOLS

    bench = commands.add_parser(
        "benchmark", help="reproduce a paper's table (e.g. ganin2016)",
        description="Run every method x pair x seed of a protocol whose data is present and "
                    "write OUT/results.json and OUT/table.md beside the paper's numbers "
                    "(ganin2016: and OUT/accuracies.png, every seed beside the paper). "
                    "Finished runs are kept: an interrupted benchmark resumes.")
    bench.add_argument("protocol", choices=[*PROTOCOLS, "cats_vs_dogs", "advise"],
                       help="ganin2016 (DANN table); ganin2016_lite0 (its pairs on an ImageNet "
                            "EfficientNet-Lite0: source only, DANN, CDAN+E); cats_vs_dogs "
                            "(scratch / extract / fine-tune and the data-efficiency curve); "
                            "advise (domain gaps; transferability scores against fine-tuning)")
    bench.add_argument("--sizes", type=training_sizes,
                       help="cats_vs_dogs: training-set sizes (default 20,50,100,200,500,1000,2000)")
    bench.add_argument("--runs", default="runs/ganin2016", metavar="DIR",
                       help="advise: the ganin2016 benchmark folder whose MNIST → MNIST-M networks are "
                            "candidates (default %(default)s)")
    bench.add_argument("--curve-seeds", type=positive_int,
                       help="cats_vs_dogs: seeds for sizes below the full set (default: --seeds)")
    bench.add_argument("--pairs", help="comma-separated SOURCE:TARGET (default: all)")
    bench.add_argument("--methods", help="comma-separated methods (default: all; cats_vs_dogs: "
                                          "scratch,extract,finetune)")
    bench.add_argument("--seeds", type=positive_int, default=3, help="seeds 0..N-1 per method and pair")
    bench.add_argument("--oracle-seeds", type=positive_int,
                       help="ganin2016: seeds of the train-on-target reference (default: --seeds)")
    bench.add_argument("--epochs", type=positive_int, help="override the protocol's epochs (quick runs)")
    bench.add_argument("--jobs", type=positive_int, default=1,
                       help="ganin2016: runs at a time, in worker processes sharing the machine's "
                            "threads (on a small CPU, 2 one-thread runs beat 1 two-thread run; "
                            "default %(default)s)")
    bench.add_argument("--device", default="auto", help="auto, cpu or cuda")
    bench.add_argument("--input-norm", choices=("none", "instance", "auto"), default="none",
                       help="ganin2016: the digit networks normalize each image first (see adapt "
                            "--input-norm; auto: on the MNIST network only); default none, the "
                            "paper's")
    bench.add_argument("--select", choices=("last", *SELECTOR_NAMES), default="last",
                       help="ganin2016: every run keeps the epoch a label-free validator scores "
                            "highest (see adapt --select); default: the protocol's last epoch")
    bench.add_argument("--keep-epochs", action="store_true",
                       help="ganin2016: every run also keeps each epoch's model (RUN/epochs/), for "
                            "choosing epochs afterwards without target labels")
    bench.add_argument("--out", metavar="DIR", help="output folder (default runs/PROTOCOL)")
    bench.add_argument("--data-root", metavar="DIR", help="folder holding the data sets")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    bench.add_argument("--report-only", action="store_true",
                       help="ganin2016: train nothing; write results.json and table.md from the "
                            "runs already finished in --out (each row says how many seeds), "
                            "e.g. runs made on a GPU machine and copied here")
    bench.add_argument("--machine", metavar="TEXT",
                       help="with --report-only: the machine the runs ran on, for the report "
                            "(default: the one machine the runs record)")
    bench.set_defaults(run=_benchmark)
    return parser


# The commands that run under torchrun (training/distributed.py).
DISTRIBUTED_COMMANDS = ("adapt", "extract", "finetune", "scratch")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from transferkit.data.decode import decode_progress

    try:
        from transferkit.training import distributed

        if distributed.launched() and args.command not in DISTRIBUTED_COMMANDS:
            raise TransferkitError(f"{args.command} under torchrun: only {', '.join(DISTRIBUTED_COMMANDS)} "
                                   "train across processes; run it as one process")
        # under torchrun the other processes print nothing but their errors: rank 0 reports
        others = distributed.launched() and int(os.environ.get("RANK", "0")) > 0
        with contextlib.ExitStack() as stack:
            if others:
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            stack.enter_context(decode_progress(not getattr(args, "quiet", False) and not others))
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
