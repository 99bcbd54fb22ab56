"""Chollet's cats-vs-dogs protocol: scratch vs feature extraction vs fine-tuning, and how
each fares as the training set shrinks (the data-efficiency curve).

Every run has its own folder ``OUT/RECIPE/nSIZE/seedK``; a finished run (``metrics.json``) is
read, not redone, so an interrupted benchmark resumes. Results: ``OUT/results.json``,
``OUT/table.md`` and ``OUT/curve.png``.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from transferkit.recipes import RecipeConfig, Splits, load_splits, run

SIZES = (20, 50, 100, 200, 500, 1000, 2000)

# Deep Learning with Python (Chollet, 2017), §5.2–5.3, VGG16 at 150×150, test accuracy.
CHOLLET = {
    "scratch": "~71 % (82 % with augmentation)",
    "extract": "~90 % (96 % with augmentation, end to end)",
    "finetune": "97 %",
}

LABELS = {"scratch": "small convnet from scratch", "extract": "feature extraction", "finetune": "fine-tuning"}


@dataclass
class Protocol:
    """The recipes as measured, sized for a 2-core CPU.

    Scratch runs at 64 px for at most 30 epochs: Chollet's convnet at 150 px trains at ~35 img/s
    on this CPU (his 82 % took 100 epochs at 150 px), too slow for 3 seeds × 7 sizes.
    Fine-tuning unfreezes the last two stages of EfficientNet-Lite0 (its last MBConv block and
    the 1×1 head convolution): the stage before them (four 1152-wide MBConv blocks) would
    triple the cost of every step on this CPU."""

    scratch: RecipeConfig
    extract: RecipeConfig
    finetune: RecipeConfig


def default_protocol(device: str = "auto") -> Protocol:
    common = {"data": "cats_vs_dogs", "device": device}
    return Protocol(
        scratch=RecipeConfig(
            recipe="scratch",
            backbone="small_convnet",
            weights="random",
            image_size=64,
            epochs=30,
            patience=6,
            learning_rate=1e-3,
            **common,
        ),
        extract=RecipeConfig(
            recipe="extract",
            backbone="efficientnet_lite0",
            weights="imagenet",
            head="linear",
            epochs=40,
            patience=8,
            **common,
        ),
        finetune=RecipeConfig(
            recipe="finetune",
            backbone="efficientnet_lite0",
            weights="imagenet",
            head="linear",
            views=4,
            unfreeze="2",
            epochs=40,
            finetune_epochs=10,
            patience=4,
            **common,
        ),
    )


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "accuracies": values,
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def _measure_speed(protocol: Protocol, splits: Splits, prepared: dict, out: Path, progress: bool) -> dict:
    """Extraction throughput, and head training on cached features against recomputing the
    features every epoch (the ``views=0`` path) — 2 epochs of each, same head, same data."""
    import torch

    from transferkit.models.backbones import build_backbone
    from transferkit.training import activations
    from transferkit.training.device import resolve_device

    device = resolve_device(protocol.extract.device)
    backbone = build_backbone(protocol.extract.backbone, protocol.extract.weights).to(device)
    size = backbone.spec.input_size
    images = prepared[size]["val"]
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        activations.compute(backbone, images[:256], len(backbone.stages), size, device)
        timings.append(time.perf_counter() - started)
    throughput = 256 / statistics.median(timings)
    cached = run(
        replace(protocol.extract, epochs=2, patience=99),
        out / "speed" / "cached",
        progress=progress,
        splits=splits,
        prepared=prepared[size],
    )
    online = run(
        replace(protocol.extract, epochs=2, patience=99, views=0, recipe="extract"),
        out / "speed" / "recompute",
        progress=progress,
        splits=splits,
        prepared=prepared[size],
    )
    cached_epoch = cached["stages"][0]["median_epoch_seconds"]
    online_epoch = online["stages"][0]["median_epoch_seconds"]
    return {
        "extraction_images_per_second": throughput,
        "extraction_batch": 64,
        "extraction_timing": "median of 3 passes over 256 validation images",
        "head_epoch_seconds_cached": cached_epoch,
        "head_epoch_seconds_recomputed": online_epoch,
        "head_training_speedup": online_epoch / cached_epoch,
        "threads": torch.get_num_threads(),
    }


def run_benchmark(
    out: str | Path,
    seeds: int = 3,
    sizes: tuple[int, ...] = SIZES,
    recipes: tuple[str, ...] = ("scratch", "extract", "finetune"),
    curve_seeds: int | None = None,
    device: str = "auto",
    data_root: str | None = None,
    progress: bool = True,
    measure_speed: bool = True,
) -> dict[str, Any]:
    """Run (or resume) every recipe × size × seed; write results.json, table.md, curve.png."""
    from transferkit.benchmarks.runner import _machine
    from transferkit.data import imaging

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    protocol = default_protocol(device)
    splits = load_splits("cats_vs_dogs", data_root)
    prepared: dict[int, dict] = {}

    def prepared_for(config: RecipeConfig) -> int:
        """Resize the three splits once per input size; returns that size."""
        from transferkit.models.backbones import build_backbone

        size = config.image_size or build_backbone(config.backbone, "random").spec.input_size
        if size not in prepared:
            prepared[size] = {
                k: imaging.prepare(s, size, progress)
                for k, s in (("train", splits.train), ("val", splits.val), ("test", splits.test))
            }
        return size

    started = time.perf_counter()
    rows = []
    full = len(splits.train)
    for name in recipes:
        config: RecipeConfig = getattr(protocol, name)
        for size in sorted(sizes, reverse=True):
            n = min(size, full)
            wanted = seeds if n == full or curve_seeds is None else curve_seeds
            runs = []
            for seed in range(max(wanted, seeds)):
                run_dir = out / name / f"n{n}" / f"seed{seed}"
                done = run_dir / "metrics.json"
                if done.is_file():  # finished runs always count, even beyond --curve-seeds
                    runs.append(json.loads(done.read_text()))
                    continue
                if seed >= wanted:
                    continue
                input_size = prepared_for(config)
                runs.append(
                    run(
                        replace(config, seed=seed, train_size=None if n == full else n),
                        run_dir,
                        data_root,
                        progress,
                        splits,
                        prepared[input_size],
                    )
                )
                if progress:
                    print(
                        f"{name} n={n} seed {seed}: test {runs[-1]['test_accuracy']:.4f} "
                        f"(val {runs[-1]['val_accuracy']:.4f}, {runs[-1]['wall_seconds']:.0f} s)",
                        flush=True,
                    )
            rows.append(
                {
                    "recipe": name,
                    "train_size": n,
                    "seeds": len(runs),
                    **_summary([r["test_accuracy"] for r in runs]),
                    "val_mean": statistics.fmean(r["val_accuracy"] for r in runs),
                    "wall_seconds": [r["wall_seconds"] for r in runs],
                    "config": {
                        k: v for k, v in runs[0].items() if k in ("backbone", "weights", "input_size", "head")
                    },
                    "reference": CHOLLET[name] if n == full else None,
                }
            )
    speed = None
    if measure_speed and "extract" in recipes:
        speed_file = out / "speed.json"
        if speed_file.is_file():
            speed = json.loads(speed_file.read_text())
        else:
            prepared_for(protocol.extract)
            speed = _measure_speed(protocol, splits, prepared, out, progress)
            speed_file.write_text(json.dumps(speed, indent=2))
    results = {
        "protocol": "cats_vs_dogs (Chollet: train 2000, val 1000, test 1000)",
        "machine": _machine(),
        "seeds": seeds,
        "curve_seeds": curve_seeds or seeds,
        "rows": rows,
        "speed": speed,
        "wall_seconds_this_invocation": time.perf_counter() - started,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "table.md").write_text(render(results))
    plot_curve(results, out / "curve.png")
    return results


def _cell(row: dict[str, Any]) -> str:
    seeds = row.get("seeds", 3)
    if seeds == 1:
        return f"{row['mean']:.3f} (1 seed)"
    return f"{row['mean']:.3f} ± {row['std']:.3f}" + (f" ({seeds} seeds)" if seeds != 3 else "")


def render(results: dict[str, Any]) -> str:
    rows = results["rows"]
    sizes = sorted({r["train_size"] for r in rows})
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    by = {(r["recipe"], r["train_size"]): r for r in rows}
    lines = [
        "# Cats vs dogs: scratch, feature extraction, fine-tuning",
        "",
        f"Machine: {results['machine']}. Test accuracy on the 1,000 test images, mean ± std over seeds "
        "(the count in brackets where it is not 3). Epochs and checkpoints are chosen on the 1,000 "
        "validation images only; test labels give the final number.",
        "",
        "## Full training set (2,000 images)",
        "",
        "| recipe | backbone (input) | test accuracy | Chollet's VGG16 |",
        "|---|---|---|---|",
    ]
    full = max(sizes)
    for name in recipes:
        r = by.get((name, full))
        if r:
            cfg = r["config"]
            lines.append(
                f"| {LABELS[name]} | {cfg['backbone']} {cfg['weights']} ({cfg['input_size']} px) | "
                f"{r['mean']:.4f} ± {r['std']:.4f} | {r['reference']} |"
            )
    lines += [
        "",
        "## Data efficiency: test accuracy against training-set size",
        "",
        "| recipe | " + " | ".join(str(s) for s in sizes) + " |",
        "|---" * (len(sizes) + 1) + "|",
    ]
    for name in recipes:
        cells = [_cell(by[(name, s)]) if (name, s) in by else "–" for s in sizes]
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    speed = results.get("speed")
    if speed:
        lines += [
            "",
            "## Speed",
            "",
            f"- Feature extraction: {speed['extraction_images_per_second']:.1f} images/s "
            f"({speed['extraction_timing']}, batch {speed['extraction_batch']}).",
            f"- Head training epoch on cached features {speed['head_epoch_seconds_cached']:.3f} s vs "
            f"{speed['head_epoch_seconds_recomputed']:.1f} s recomputing the features: "
            f"**{speed['head_training_speedup']:.0f}×** faster (median epoch of 2).",
        ]
    return "\n".join(lines) + "\n"


def plot_curve(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name in dict.fromkeys(r["recipe"] for r in results["rows"]):
        rows = sorted((r for r in results["rows"] if r["recipe"] == name), key=lambda r: r["train_size"])
        ax.errorbar(
            [r["train_size"] for r in rows],
            [r["mean"] for r in rows],
            yerr=[r["std"] for r in rows],
            marker="o",
            capsize=3,
            label=LABELS[name],
        )
    ax.set_xscale("log")
    ax.set_xlabel("training images (balanced cats/dogs)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.45, 1.0)
    ax.axhline(0.5, color="gray", lw=0.8, ls=":")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Transfer needs less data: cats vs dogs")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
