"""The one loop against the two loops it replaced: the same weights, no slower.

Runs the same short runs with the source of an older commit (``--old``, extracted with
``git archive``) and with this checkout, alternately, ``--repeats`` times each:

- adaptation: DANN (with a weight average) and CDAN+E on MNIST → MNIST-M, 2 epochs of 8 steps —
  the SHA-256 of the trained weights and the per-epoch metrics; then DANN and Source-only,
  3 epochs of 150 steps — images/s (median over epochs);
- recipes: scratch, extract, finetune (cached views, and ``--views 0``) and a two-stage finetune
  with an MLP head and patience 1, on a generated two-class photo folder — the SHA-256 of the
  saved model, the per-epoch validation accuracy and loss, the selected epochs.

    python benchmarks/experiments/no_regression.py --old 639dc9c --out benchmarks/results/no_regression
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository: benchmarks/experiments/ is two down

CHILD = r'''
import hashlib, json, statistics, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])  # tests/, for the fake photo folder
import torch
from fakes import write_two_class_data
from safetensors.torch import load_file
from transferkit.api import DomainAdapter
from transferkit.cli import main

def digest(state):
    return hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()[:16]

UNTIMED = ("seconds", "images_per_second", "data_fraction", "source_val_loss")
out = {"weights": {}, "speed": {}}
tmp = Path(tempfile.mkdtemp())
for method in ("dann", "cdan"):
    a = DomainAdapter(method=method, epochs=2, steps_per_epoch=8, device="cpu", run_dir=tmp / method,
                      progress=False, ema_decay=0.99 if method == "dann" else None)
    a.fit("mnist", "mnist_m")
    history = [{k: v for k, v in h.items() if k not in UNTIMED} for h in a.history_]
    out["weights"]["adapt " + method] = [digest(a.model_.state_dict()), history]
for method in ("dann", "source_only"):
    a = DomainAdapter(method=method, epochs=3, steps_per_epoch=150, device="cpu",
                      run_dir=tmp / ("s" + method), progress=False)
    a.fit("mnist", "mnist_m")
    out["speed"][method] = statistics.median(h["images_per_second"] for h in a.history_)
photos = write_two_class_data(tmp / "photos", {"train": 24, "val": 8, "test": 8})
small = ["--backbone", "small_convnet", "--weights", "random", "--image-size", "48"]
runs = {
    "scratch": ["scratch", "--image-size", "48", "--epochs", "3", "--batch-size", "8"],
    "extract": ["extract", *small, "--epochs", "3", "--batch-size", "8"],
    "finetune (cached views)": ["finetune", *small, "--epochs", "2", "--finetune-epochs", "2",
                                "--batch-size", "8", "--views", "2"],
    "finetune (--views 0)": ["finetune", *small, "--epochs", "2", "--finetune-epochs", "2",
                             "--batch-size", "8", "--views", "0"],
    "finetune (mlp, patience 1)": ["finetune", *small, "--epochs", "4", "--finetune-epochs", "3",
                                   "--batch-size", "5", "--head", "mlp", "--patience", "1",
                                   "--unfreeze", "1"],
}
for name, args in runs.items():
    d = tmp / name.replace(" ", "_")
    assert main([*args, "--data", f"folder:{photos}", "--device", "cpu", "--quiet", "--out", str(d)]) == 0
    lines = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    metrics = json.loads((d / "metrics.json").read_text())
    model = load_file(str(d / "model.safetensors"))
    out["weights"]["recipe " + name] = [digest(model),
        [[line["val_accuracy"], round(line["val_loss"], 6)] for line in lines],
        [[s["name"], s["best_epoch"], s["epochs_run"]] for s in metrics["stages"]]]
    out.setdefault("models", {})[name] = str(d / "model.safetensors")
print(json.dumps(out))
'''


def run_child(src: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(ROOT / "tests")], env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default="639dc9c", help="the commit to compare with (default 639dc9c)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    old_src = Path(tempfile.mkdtemp())
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.old, "src"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old_src)], input=archive, check=True)
    results: dict[str, list[dict]] = {"old": [], "new": []}
    for _ in range(args.repeats):
        results["old"].append(run_child(old_src / "src"))
        results["new"].append(run_child(ROOT / "src"))
    import torch
    from safetensors.torch import load_file

    old, new = results["old"][0], results["new"][0]
    rows = []
    for name, (old_digest, *old_rest) in old["weights"].items():
        new_digest, *new_rest = new["weights"][name]
        difference = ""
        if old_digest != new_digest and name.startswith("recipe "):
            a = load_file(old["models"][name.removeprefix("recipe ")])
            b = load_file(new["models"][name.removeprefix("recipe ")])
            difference = f"{max(float((a[k].float() - b[k].float()).abs().max()) for k in a):.1e}"
        rows.append((name, old_digest == new_digest, old_rest == new_rest, difference))
    speed = {way: {m: [r["speed"][m] for r in results[way]] for m in old["speed"]} for way in results}
    summary = {"old": args.old, "weights": rows, "images_per_second": speed,
               "machine": _machine(), "threads": torch.get_num_threads(),
               "command": "python benchmarks/experiments/no_regression.py " + " ".join(sys.argv[1:])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [f"# The one loop against commit {args.old}'s two loops", "",
             f"{summary['machine']}; `{summary['command']}`", "",
             "| run | same weights (SHA-256) | same per-epoch metrics and selected epochs "
             "| largest weight difference |",
             "|---|---|---|---|"]
    lines += [f"| {n} | {'yes' if w else 'no'} | {'yes' if m else 'no'} | {d or '0'} |"
              for n, w, m, d in rows]
    lines += ["", "| MNIST → MNIST-M, 150 steps × 3 epochs | old images/s | new images/s |", "|---|---|---|"]
    for method in speed["old"]:
        lines.append(f"| {method} | {' / '.join(f'{v:.0f}' for v in speed['old'][method])} | "
                     f"{' / '.join(f'{v:.0f}' for v in speed['new'][method])} |")
    lines += ["", f"Medians: old {statistics.median(sum(speed['old'].values(), [])):.0f}, new "
              f"{statistics.median(sum(speed['new'].values(), [])):.0f} images/s (runs alternated)."]
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _machine() -> str:
    import torch

    from transferkit.training.device import describe_machine

    return describe_machine(torch.device("cpu"))


if __name__ == "__main__":
    raise SystemExit(main())
