"""DANN on a pretrained backbone with frozen stages: the frozen prefix run once per image
(cached) against at every step — training speed, and that both train the same model.

MNIST → MNIST-M on EfficientNet-Lite0 (offline ImageNet weights), ``--unfreeze 1`` at 64 px,
on the first ``--images`` images of each training split and of source-test (the same subset
for both ways). Each way runs ``--epochs`` epochs of ``--steps`` steps of 64 + 64 images;
reports the median images/s over epochs, the prefix pass's seconds, the whole fit's seconds,
and the largest weight difference between the two models. Writes JSON and Markdown.

    python benchmarks/experiments/prefix_cache.py --out benchmarks/results/prefix_cache
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from transferkit import api
from transferkit.data.pairs import DomainSplit, load_pair
from transferkit.training import batches
from transferkit.training.device import describe_machine


def subset(split: DomainSplit | None, n: int) -> DomainSplit | None:
    return None if split is None else DomainSplit(split.images[:n], split.labels[:n])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000, help="images per split (default 4000)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="steps per epoch (default 30)")
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json and table.md")
    args = parser.parse_args(argv)

    pair = load_pair("mnist", "mnist_m", size=64)
    pair = replace(pair, source_train=subset(pair.source_train, args.images),
                   source_test=subset(pair.source_test, args.images),
                   target_train=subset(pair.target_train, args.images),
                   target_test=subset(pair.target_test, args.images))
    prefix_seconds: list[float] = []
    real_prefix = batches.prefix_outputs

    def timed_prefix(*a, **k):
        started = time.perf_counter()
        out = real_prefix(*a, **k)
        prefix_seconds.append(time.perf_counter() - started)
        return out

    batches.prefix_outputs = timed_prefix
    rows, models = {}, {}
    for way, budget in (("cached prefix", api.PREFIX_CACHE_BYTES), ("prefix at every step", 0)):
        api.PREFIX_CACHE_BYTES = budget
        prefix_seconds.clear()
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            adapter = api.DomainAdapter(method="dann", backbone="efficientnet_lite0", unfreeze=1,
                                        image_size=64, epochs=args.epochs, steps_per_epoch=args.steps,
                                        device="cpu", run_dir=Path(folder) / "run", progress=False)
            adapter.fit(pair)
        rows[way] = {
            "images_per_second_median": statistics.median(h["images_per_second"] for h in adapter.history_),
            "prefix_seconds": sum(prefix_seconds),
            "fit_seconds": time.perf_counter() - started,
            "inputs": adapter.results_["inputs"],
            "target_test_accuracy": adapter.results_["target_test_accuracy"],
        }
        models[way] = adapter.model_.state_dict()
        print(way, rows[way], file=sys.stderr)
    a, b = models.values()
    difference = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())
    result = {"pair": "mnist → mnist_m", "backbone": "efficientnet_lite0 (imagenet), --unfreeze 1, 64 px",
              "images_per_split": args.images, "epochs": args.epochs, "steps_per_epoch": args.steps,
              "batch": "64 + 64", "rows": rows, "max_weight_difference": difference,
              "machine": describe_machine(torch.device("cpu")), "threads": torch.get_num_threads(),
              "command": "python benchmarks/experiments/prefix_cache.py " + " ".join(sys.argv[1:])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# Frozen prefix cached or run at every step: DANN, {result['backbone']}",
             "", f"{result['machine']}, {result['threads']} threads; `{result['command']}`", "",
             "| inputs | images/s (median of epochs) | prefix pass (s) | whole fit (s) | target-test acc. |",
             "|---|---|---|---|---|"]
    for way, row in rows.items():
        lines.append(f"| {way} | {row['images_per_second_median']:.0f} | {row['prefix_seconds']:.1f} | "
                     f"{row['fit_seconds']:.1f} | {row['target_test_accuracy']:.4f} |")
    lines += ["", f"Largest difference of any weight between the two models: {difference:.2e}."]
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
