"""``transferkit report RUN_DIR``: one self-contained HTML page about a run, plus its PNGs.

For a domain-adaptation run (``transferkit adapt`` / ``benchmark ganin2016``): the config and
final numbers, learning curves (losses, source-validation accuracy, the domain classifier's
accuracy), the target-test confusion matrix, sample images of each domain, and a t-SNE of
source and target features before and after adaptation (the DANN paper's Figure 3), with the
proxy A-distance of the same features. "Before" is the sibling ``source_only`` run of the
same seed when there is one (``--before DIR`` picks another), else the untrained network.

For an ``extract``/``finetune``/``scratch`` run: config and numbers, per-stage learning curves,
the test confusion matrix, sample training images per class and a t-SNE of test features.

Images are embedded as base64, so the page opens from disk, without a server.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferkit.errors import TransferkitError
from transferkit.report import figures as draw
from transferkit.report.features import adapt_network, aligned_and_predictions, features_and_predictions


def _image_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    caption = html.escape(alt)
    return (
        f'<figure><img alt="{caption}" src="data:image/png;base64,{data}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _page(
    title: str,
    summary: dict[str, Any],
    config: dict[str, Any],
    figures: list[tuple[Path, str]],
    notes: list[str],
) -> str:
    def table(record: dict[str, Any]) -> str:
        rows = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
            for k, v in record.items()
        )
        return f"<table>{rows}</table>"

    body = "".join(_image_tag(p, alt) for p, alt in figures)
    notes_html = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 2em 1em 0; display: inline-table; vertical-align: top; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 2px 10px; text-align: left; font-size: 13px; }}
th {{ color: #555; font-weight: 600; }}
figure {{ margin: 1.2em 0; }} img {{ max-width: 100%; }} figcaption {{ color: #555; font-size: 13px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<h2>Results</h2>{table(summary)}<h2>Configuration</h2>{table(config)}
{notes_html}
<h2>Figures</h2>{body}
</body></html>
"""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)[:300]
    return str(value)


# ---------------------------------------------------------------- domain-adaptation runs


def _adapt_report(
    run: Path, out: Path, config: dict[str, Any], before: Path | None, samples: int, data_root: str | None
) -> tuple[str, dict, list, list]:
    from transferkit.advise.scores import proxy_a_distance
    from transferkit.data.pairs import pair_of_run

    metrics = json.loads((run / "metrics.json").read_text())
    curves = run / "metrics.jsonl"  # absent for SA on a reused source-only network
    history = ([json.loads(line) for line in curves.read_text().splitlines() if line.strip()]
               if curves.is_file() else [])
    pair = pair_of_run(config, data_root)
    classes = len(pair.classes)
    network = adapt_network(run, config, classes)
    figures, notes = [], []
    alignment = None
    if config["method"] == "sa":  # the network is the source-only one; SA's classifier decides
        from transferkit.api import run_alignment
        from transferkit.methods import SourceOnly

        alignment = run_alignment(run, SourceOnly(network), pair, config["seed"])
        notes.append("SA classifies the source-only network's last hidden layer in an aligned "
                     "subspace: the confusion matrix is SA's, the t-SNE's right panel that "
                     "subspace, its left panel the source-only network's feature extractor.")
        if metrics.get("sa_features_from"):
            notes.append(f"SA aligned the network of {metrics['sa_features_from']}; its "
                         "training curves are in that run's report.")
    if history:
        figures.append(
            (
                draw.curves(
                    history,
                    [
                        ("class_loss", "label loss"),
                        ("domain_loss", "domain loss"),
                        ("domain_accuracy", "domain classifier accuracy"),
                        ("mcc_loss", "class confusion on the target (MCC)"),
                        ("source_val_accuracy", "source validation accuracy"),
                    ],
                    out / "curves.png",
                ),
                "Learning curves (one point per epoch)",
            )
        )
    # an unlabelled target (unlabelled:PATH) has no test split: its training images stand in
    # for the pictures, and no picture needs a target label
    target_images = pair.target_test if pair.target_test is not None else pair.target_train
    _, predicted = (features_and_predictions(network, target_images.images, pair) if alignment is None
                    else aligned_and_predictions(network, alignment, target_images.images, pair))
    if alignment is not None and pair.target_test is not None:  # SA must predict as the run did
        refitted = float((predicted == pair.target_test.labels.numpy()).mean())
        if abs(refitted - metrics["target_test_accuracy"]) > 1e-6:
            notes.append(f"SA as read here gives target-test accuracy {refitted:.4f}, the run "
                         f"recorded {metrics['target_test_accuracy']:.4f} (a run made before SA "
                         "saved its alignment, fitted again): the pictures are of this fit.")
    from transferkit.checks import PredictionShares, prediction_shares
    from transferkit.methods import SourceOnly
    from transferkit.training.loop import run_batches

    if "label_free_check" in metrics:  # recorded by the run: no second pass over target train
        shares = PredictionShares.from_dict(metrics["label_free_check"])
    else:  # a run made before runs recorded it
        train = pair.target_train.images
        shares = prediction_shares(
            torch.as_tensor(aligned_and_predictions(network, alignment, train, pair)[1])
            if alignment is not None else run_batches(SourceOnly(network), train, pair).argmax(1),
            pair.source_train.labels, pair.classes)
    if shares.message():
        notes.append(shares.message())
    figures.append((draw.shares(shares, out / "class_shares.png"),
                    "Label-free check: where the model sends the unlabelled target training "
                    "images, beside the source labels (red: a class with 2× or ½ its source "
                    "share)"))
    if pair.target_test is not None:
        figures.append(
            (
                draw.confusion(
                    pair.target_test.labels.numpy(),
                    predicted,
                    pair.classes,
                    out / "confusion.png",
                    f"{config['target']} test",
                ),
                "Target-test confusion matrix (final number only)",
            )
        )
    rng = np.random.default_rng(0)
    pick = lambda split, k: split.images[torch.as_tensor(rng.choice(len(split), k, replace=False))]  # noqa: E731
    figures.append(
        (
            draw.grid(
                [
                    (config["source"], pick(pair.source_train, 10)),
                    (config["target"], pick(pair.target_train, 10)),
                ],
                out / "samples.png",
            ),
            "Sample training images of each domain (as the network sees them, before mean subtraction)",
        )
    )
    # t-SNE before/after, on test images of both domains (the paper uses test sets too).
    source_split = pair.source_test or pair.source_train
    s_index = torch.as_tensor(rng.choice(len(source_split), min(samples, len(source_split)), replace=False))
    t_index = torch.as_tensor(
        rng.choice(len(target_images), min(samples, len(target_images)), replace=False)
    )
    images = torch.cat([source_split.images[s_index], target_images.images[t_index]])
    domain = np.r_[np.zeros(len(s_index), dtype=int), np.ones(len(t_index), dtype=int)]
    names = {0: f"source ({config['source']})", 1: f"target ({config['target']})"}
    if before is None:
        sibling = run.parent.parent / "source_only" / run.name
        before = sibling if (sibling / "model.safetensors").is_file() and sibling != run else None
    if before is not None:
        before_config = json.loads((before / "config.json").read_text())
        before_net = adapt_network(before, before_config, classes)
        before_label = f"before: {before_config.get('method', 'run')} ({before.name})"
    else:
        before_net = adapt_network(run, config, classes, trained=False)
        before_label = "before: the untrained network"
    f_before, _ = features_and_predictions(before_net, images, pair)
    f_after, _ = (features_and_predictions(network, images, pair) if alignment is None
                  else aligned_and_predictions(network, alignment, images, pair, domain))
    try:
        gap_before = proxy_a_distance(f_before[domain == 0], f_before[domain == 1], samples=samples)
        gap_after = proxy_a_distance(f_after[domain == 0], f_after[domain == 1], samples=samples)
        distance_before = f"proxy A-distance {gap_before.proxy_a_distance:.2f}"
        distance_after = f"proxy A-distance {gap_after.proxy_a_distance:.2f}"
    except TransferkitError as exc:  # a handful of images: the pictures, without the measure
        notes.append(f"Domain gap not measured: {exc}.")
        gap_before = gap_after = None
        distance_before = distance_after = "proxy A-distance not measured"
    draw.add_tsne(
        figures,
        notes,
        [
            (f"{before_label}\n{distance_before}", f_before, domain, names),
            (
                f"after: {config['method']}\n{distance_after}",
                f_after,
                domain,
                names,
            ),
        ],
        out / "tsne.png",
        "t-SNE of the feature extractor's output for source and target test images"
        + (
            f" (after: SA's aligned {alignment.selected_dimension}-dimensional subspace of the "
            "label predictor's last hidden layer)"
            if alignment is not None
            else ""
        ),
    )
    summary = {
        k: metrics.get(k)
        for k in (
            "method",
            "source",
            "target",
            "seed",
            "target_test_accuracy",
            "source_test_accuracy",
            "selected_by",
            "oracle",
            "wall_seconds",
            "images_per_second",
            "peak_memory_mb",
            "device",
        )
    }
    summary["features_before"] = before_label.removeprefix("before: ")
    summary["features_proxy_a_distance_before"] = gap_before.proxy_a_distance if gap_before else None
    summary["features_proxy_a_distance_after"] = gap_after.proxy_a_distance if gap_after else None
    reverse = run / "reverse_validation.json"  # written by `transferkit reverse-validate`
    if reverse.is_file():
        record = json.loads(reverse.read_text())
        summary["reverse_validation_score"] = record.get("score")
        notes.append(
            f"Reverse validation (label-free): {record.get('score', float('nan')):.4f} — a model "
            f"adapted back from this run's pseudo-labelled target for {record.get('reverse_epochs')} "
            f"epochs, scored on the {record.get('scored_on')}. Compare it across runs of this pair."
        )
    title = f"{config['method']}: {config['source']} → {config['target']} (seed {config.get('seed', 0)})"
    return title, summary, figures, notes


# ---------------------------------------------------------------- pretrained runs


def _recipe_report(
    run: Path, out: Path, config: dict[str, Any], samples: int, data_root: str | None
) -> tuple[str, dict, list, list]:
    from transferkit.data import imaging
    from transferkit.data.images import ImageSet, stack_images
    from transferkit.recipes import evaluate, load_model, load_splits
    from transferkit.training.batches import OnlineInputs

    metrics = json.loads((run / "metrics.json").read_text())
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    model = load_model(run)
    spec = model.backbone.spec
    figures = []
    if history:
        figures.append(
            (
                draw.curves(
                    history,
                    [
                        ("train_loss", "training loss"),
                        ("val_loss", "validation loss"),
                        ("train_accuracy", "training accuracy"),
                        ("val_accuracy", "validation accuracy"),
                    ],
                    out / "curves.png",
                ),
                "Learning curves per stage",
            )
        )
    splits = load_splits(config["data"], data_root)
    evaluated = splits.test if splits.test is not None else splits.val
    images = imaging.prepare(evaluated, spec.input_size, False, spec.crop_fraction)
    labels = torch.as_tensor(np.array(evaluated.labels))
    inputs = OnlineInputs(images, model.backbone, 0, spec.input_size, torch.device("cpu"), None)
    _, _, probabilities = evaluate(model, 0, inputs, labels)
    predicted = probabilities.argmax(1).numpy()
    name = "test" if splits.test is not None else "validation"
    figures.append(
        (
            draw.confusion(labels.numpy(), predicted, model.classes, out / "confusion.png", f"{name} split"),
            f"Confusion matrix on the {name} split",
        )
    )
    train_labels = np.asarray(splits.train.labels)
    rows = []
    for c, class_name in enumerate(model.classes[:10]):
        index = np.flatnonzero(train_labels == c)[:8]
        subset = ImageSet(
            stack_images([np.asarray(splits.train.images[i]) for i in index]),
            train_labels[index],
            model.classes,
        )
        rows.append((class_name, imaging.prepare(subset, 96, False, 1.0)))
    figures.append((draw.grid(rows, out / "samples.png"), "Sample training images per class"))
    rng = np.random.default_rng(0)
    pick = rng.choice(len(labels), min(samples, len(labels)), replace=False)
    with torch.inference_mode():
        features = torch.cat(
            [
                model.backbone(inputs.batch(torch.as_tensor(pick[i : i + 64]), 0))
                for i in range(0, len(pick), 64)
            ]
        ).numpy()
    notes: list[str] = []
    draw.add_tsne(
        figures,
        notes,
        [
            (
                f"{spec.name} features after training",
                features,
                labels.numpy()[pick],
                dict(enumerate(model.classes)),
            )
        ],
        out / "tsne.png",
        f"t-SNE of the backbone's features for {len(pick)} {name} images",
    )
    summary = {
        k: metrics.get(k)
        for k in (
            "recipe",
            "data",
            "backbone",
            "weights",
            "train_size",
            "val_accuracy",
            "test_accuracy",
            "selected_by",
            "wall_seconds",
            "device",
        )
    }
    title = f"{metrics['recipe']}: {metrics['backbone']} on {metrics['data']} (seed {metrics['seed']})"
    return title, summary, figures, notes


def report(
    run_dir: str | Path,
    out: str | Path | None = None,
    before: str | Path | None = None,
    samples: int = 500,
    data_root: str | None = None,
) -> Path:
    """Write ``OUT/report.html`` (default OUT = RUN_DIR/report) and return its path."""
    run = Path(run_dir)
    config_path = run / "config.json"
    if not (run / "metrics.json").is_file() or not config_path.is_file():
        raise TransferkitError(f"{run}: not a finished run folder (expected config.json and metrics.json)")
    from transferkit.training.runfolder import write_error, write_json, write_text

    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise TransferkitError(f"{config_path}: not readable JSON ({exc})") from None
    target = Path(out) if out is not None else run / "report"
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(target, exc) from None
    if "method" in config:
        title, summary, figures, notes = _adapt_report(
            run, target, config, Path(before) if before else None, samples, data_root
        )
    elif "recipe" in config:
        title, summary, figures, notes = _recipe_report(run, target, config, samples, data_root)
    else:
        raise TransferkitError(f"{config_path}: neither an adapt run nor an extract/finetune/scratch run")
    page = target / "report.html"
    write_text(page, _page(title, summary, config, figures, notes))
    write_json(target / "summary.json", summary)
    return page
