"""Do the "should I transfer?" numbers mean anything? Measured answers.

1. **Domain gap on pixels**: proxy A-distance for MNIST→MNIST (train vs test: the same
   domain), MNIST→MNIST-M and MNIST→GTSRB (resized), over sampling seeds.
2. **Domain gap on features, before and after DANN**: MNIST vs MNIST-M test images through
   the source-only network and through the DANN network of the same seed (runs of
   ``transferkit benchmark ganin2016``).
3. **Transferability against fine-tuning**: for MNIST-M with 1,000 labelled images, score
   candidate networks (LogME, H-score, LEEP) on those images, fine-tune each one (the same
   ``finetune`` recipe for all), and report the rank correlation between each score and the
   measured test accuracy.

Writes ``OUT/results.json`` and ``OUT/table.md``; finished fine-tuning runs are kept
(``OUT/finetune/CANDIDATE/seedK``), so an interrupted benchmark resumes.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferkit.advise.advisor import sample, score_candidate
from transferkit.advise.scores import proxy_a_distance
from transferkit.errors import DataMissingError, TransferkitError

PIXEL_PAIRS = (("mnist", "mnist"), ("mnist", "mnist_m"), ("mnist", "gtsrb"))


def _mean_std(values: list[float]) -> dict[str, Any]:
    return {
        "values": values,
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def pixel_gaps(seeds: int, samples: int, data_root: str | None) -> list[dict[str, Any]]:
    from transferkit.data.imaging import prepare
    from transferkit.data.loading import load_split

    rows = []
    for source, target in PIXEL_PAIRS:
        label = f"{source} train → {target} test" if source == target else f"{source} → {target}"
        try:
            a_set = load_split(source, "train", data_root)
            b_set = load_split(target, "test" if source == target else "train", data_root)
        except DataMissingError as exc:
            rows.append({"pair": label, "space": "pixels (32×32 RGB)", "missing": str(exc)})
            continue
        values = []
        for seed in range(seeds):
            a = prepare(sample(a_set, samples, 10 + seed), 32, crop_fraction=1.0).numpy()
            b = prepare(sample(b_set, samples, 20 + seed), 32, crop_fraction=1.0).numpy()
            values.append(proxy_a_distance(a, b, samples=samples, seed=seed).proxy_a_distance)
        rows.append({"pair": label, "space": "pixels (32×32 RGB)", **_mean_std(values)})
    return rows


def feature_gaps(runs: Path, seeds: int, samples: int, data_root: str | None) -> list[dict[str, Any]]:
    from transferkit.data.pairs import pair_of_run
    from transferkit.report import adapt_network, features_and_predictions

    folder = runs / "mnist-mnist_m"
    before, after = [], []
    pair = None
    for seed in range(seeds):
        runs_for_seed = {m: folder / m / f"seed{seed}" for m in ("source_only", "dann")}
        if not all((r / "model.safetensors").is_file() for r in runs_for_seed.values()):
            break
        configs = {m: json.loads((r / "config.json").read_text()) for m, r in runs_for_seed.items()}
        if pair is None:
            c = configs["dann"]
            pair = pair_of_run(c, data_root)
        rng = np.random.default_rng(seed)
        s_index = torch.as_tensor(rng.choice(len(pair.source_test), samples, replace=False))
        t_index = torch.as_tensor(rng.choice(len(pair.target_test), samples, replace=False))
        for method, store in (("source_only", before), ("dann", after)):
            network = adapt_network(runs_for_seed[method], configs[method], len(pair.classes))
            fs, _ = features_and_predictions(network, pair.source_test.images[s_index], pair)
            ft, _ = features_and_predictions(network, pair.target_test.images[t_index], pair)
            store.append(proxy_a_distance(fs, ft, samples=samples, seed=seed).proxy_a_distance)
    if not before:
        return []
    return [
        {
            "pair": "mnist → mnist_m (test images)",
            "space": "features of the source-only network",
            **_mean_std(before),
        },
        {
            "pair": "mnist → mnist_m (test images)",
            "space": "features of the DANN network",
            **_mean_std(after),
        },
    ]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", text.replace("run:", "").replace("/", "_"))[-60:]


def transferability(
    runs: Path,
    out: Path,
    seeds: int,
    device: str,
    data_root: str | None,
    labelled: int = 1000,
    progress: bool = True,
) -> dict[str, Any]:
    from scipy.stats import kendalltau, spearmanr

    from transferkit.data.loading import load_split
    from transferkit.recipes import RecipeConfig, Splits, balanced_subset, run
    from transferkit.training.device import resolve_device

    source_only = runs / "mnist-mnist_m" / "source_only" / "seed0"
    dann = runs / "mnist-mnist_m" / "dann" / "seed0"
    for folder in (source_only, dann):
        if not (folder / "model.safetensors").is_file():
            raise TransferkitError(
                f"{folder}: missing; run transferkit benchmark ganin2016 --pairs mnist:mnist_m "
                f"--methods source_only,dann first (or pass --runs)"
            )
    candidates = [
        (f"run:{source_only}", "the paper's MNIST network trained on MNIST (source only)", None),
        (f"run:{dann}", "the same network trained by DANN on MNIST → unlabelled MNIST-M", None),
        (f"run:{source_only}@random", "the same network, random weights", None),
        ("efficientnet_lite0", "EfficientNet-Lite0, ImageNet weights (96 px)", 96),
        ("efficientnet_lite0@random", "EfficientNet-Lite0, random weights (96 px)", 96),
    ]
    pool = load_split("mnist_m", "train", data_root)
    labels = np.asarray(pool.labels)
    train_index = balanced_subset(labels, labelled, seed=0)
    rest = np.setdiff1d(np.arange(len(labels)), train_index)
    val_index = rest[balanced_subset(labels[rest], labelled, seed=1)]
    from transferkit.data.images import ImageSet

    def take(index: np.ndarray) -> ImageSet:
        return ImageSet(np.asarray(pool.images)[index], labels[index], pool.classes)

    splits = Splits(
        take(train_index), take(val_index), load_split("mnist_m", "test", data_root), pool.classes, True
    )
    torch_device = resolve_device(device)
    rows = []
    for text, description, size in candidates:
        name, _, weights = text.partition("@")
        scored = score_candidate(text, splits.train, torch_device, data_root)
        accuracies = []
        for seed in range(seeds):
            config = RecipeConfig(
                recipe="finetune",
                data="mnist_m",
                backbone=name,
                weights=weights or ("trained" if name.startswith("run:") else "imagenet"),
                image_size=size,
                views=4,
                unfreeze="2",
                epochs=40,
                finetune_epochs=10,
                patience=4,
                flip=False,
                seed=seed,
                device=device,
            )
            run_dir = out / "finetune" / _slug(text) / f"seed{seed}"
            done = run_dir / "metrics.json"
            if done.is_file():
                result = json.loads(done.read_text())
            else:
                result = run(replace(config), run_dir, data_root, progress, splits)
            accuracies.append(result["test_accuracy"])
            if progress:
                print(
                    f"{text} seed {seed}: fine-tuned test accuracy {result['test_accuracy']:.4f}", flush=True
                )
        rows.append(
            {
                "candidate": text,
                "description": description,
                "logme": scored.logme,
                "h_score": scored.h_score,
                "leep": scored.leep,
                "score_seconds": scored.seconds,
                "finetune": _mean_std(accuracies),
            }
        )
    correlations = {}
    accuracy = [r["finetune"]["mean"] for r in rows]
    for key in ("logme", "h_score", "leep"):
        values = [r[key] for r in rows]
        if any(v is None for v in values):
            continue
        rho = spearmanr(values, accuracy).statistic
        tau = kendalltau(values, accuracy).statistic
        correlations[key] = {"spearman": float(rho), "kendall": float(tau)}
    return {
        "target": "mnist_m",
        "labelled": labelled,
        "validation": labelled,
        "test": len(splits.test.labels),
        "rows": rows,
        "rank_correlation": correlations,
    }


def run_benchmark(
    out: str | Path,
    runs: str | Path = "runs/ganin2016",
    seeds: int = 3,
    samples: int = 2000,
    device: str = "auto",
    data_root: str | None = None,
    progress: bool = True,
    labelled: int = 1000,
) -> dict[str, Any]:
    from transferkit.benchmarks.runner import _machine

    started = time.perf_counter()
    out, runs = Path(out), Path(runs)
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": _machine(), "seeds": seeds, "samples_per_domain": samples}
    results["pixel_gaps"] = pixel_gaps(seeds, samples, data_root)
    results["feature_gaps"] = feature_gaps(runs, seeds, min(samples, 2000), data_root)
    results["transferability"] = transferability(runs, out, seeds, device, data_root, labelled, progress)
    results["wall_seconds"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "table.md").write_text(render(results))
    return results


def render(results: dict[str, Any]) -> str:
    lines = [
        "# Should I transfer? Domain gaps and transferability, measured",
        "",
        f"Machine: {results['machine']}. Mean ± std over {results['seeds']} seeds.",
        "",
        "## Domain gap: proxy A-distance (0 = indistinguishable, 2 = fully separable)",
        "",
        "| domains | measured on | proxy A-distance |",
        "|---|---|---|",
    ]
    for row in results["pixel_gaps"] + results["feature_gaps"]:
        if "missing" in row:
            lines.append(f"| {row['pair']} | {row['space']} | data missing |")
            continue
        lines.append(f"| {row['pair']} | {row['space']} | {row['mean']:.3f} ± {row['std']:.3f} |")
    t = results["transferability"]
    lines += [
        "",
        f"## Transferability to MNIST-M with {t['labelled']} labelled images",
        "",
        f"Scores computed on the {t['labelled']} labelled training images (no training); fine-tuning: "
        f"new head, then the last two stages (`finetune --unfreeze 2 --no-flip`), epochs chosen on "
        f"{t['validation']} held-out MNIST-M training images; test accuracy on the {t['test']} test images.",
        "",
        "| candidate | LogME | H-score | LEEP | fine-tuned test accuracy |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(t["rows"], key=lambda r: -r["finetune"]["mean"]):
        leep = f"{r['leep']:.3f}" if r["leep"] is not None else "–"
        lines.append(
            f"| {r['description']} | {r['logme']:.3f} | {r['h_score']:.2f} | {leep} | "
            f"{r['finetune']['mean']:.4f} ± {r['finetune']['std']:.4f} |"
        )
    lines += ["", "Rank correlation with the fine-tuned accuracy over these candidates:", ""]
    for key, label in (("logme", "LogME"), ("h_score", "H-score"), ("leep", "LEEP")):
        c = t["rank_correlation"][key]
        lines.append(f"- {label}: Spearman ρ = {c['spearman']:.2f}, Kendall τ = {c['kendall']:.2f}")
    return "\n".join(lines) + "\n"
