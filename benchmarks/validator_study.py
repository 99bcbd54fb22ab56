"""How well does each label-free validator choose among adapted models? An analysis with the
target labels, for a development pair only: it chooses nothing on an evaluation pair.

    python benchmarks/validator_study.py RUN [RUN ...] --out DIR [--sample 5000]

Each RUN is a finished `transferkit adapt` folder; its candidates are the epochs it kept
(`--keep-epochs`: RUN/epochs/epoch-K.safetensors), else its model. Every candidate is scored
by each validator of `transferkit.validators` on the same sample of target training images
(no target label), and by source-test accuracy (the usual label-free baseline), beside its
target-test accuracy. Reported, for each validator:

- Spearman's ρ between its score and target-test accuracy over all candidates;
- the accuracy lost by its pick against the best candidate (the oracle pick), over all
  candidates (choosing a setting or method) and within each run (choosing an epoch; the mean
  over runs).

Writes DIR/validators.json (every candidate's scores) and DIR/validators.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from scipy.stats import spearmanr


def candidates(run: Path) -> list[tuple[str, Path]]:
    kept = sorted((run / "epochs").glob("epoch-*.safetensors"),
                  key=lambda p: int(p.stem.split("-")[1]))
    if kept:
        return [(p.stem, p) for p in kept]
    return [("model", run / "model.safetensors")]


def score_run(run: Path, sample: int) -> list[dict]:
    from safetensors.torch import load_file

    from transferkit.api import DomainAdapter
    from transferkit.training.loop import evaluate
    from transferkit.validators import VALIDATORS, model_scores, sample_indices

    adapter = DomainAdapter.load(run, progress=False)
    pair, model = adapter.pair_, adapter.model_
    if pair.target_test is None:
        raise SystemExit(f"{run}: its target has no test labels; the study needs a development pair")
    chosen = sample_indices(len(pair.target_train.images), sample)
    images = pair.target_train.images[chosen]
    rows = []
    for name, path in candidates(run):
        model.load_state_dict(load_file(str(path)))
        model.eval()
        scores = model_scores(model, pair, images, (*VALIDATORS, "source_accuracy"))
        rows.append({"run": str(run), "candidate": name, "scores": scores,
                     "target_test_accuracy": evaluate(model, pair.target_test, pair)})
        print(f"{run} {name}: target {rows[-1]['target_test_accuracy']:.4f} "
              + " ".join(f"{k} {v:.4f}" for k, v in scores.items()), file=sys.stderr)
    return rows


def summarize(rows: list[dict]) -> dict[str, dict]:
    names = list(rows[0]["scores"])
    best = max(r["target_test_accuracy"] for r in rows)
    runs = sorted({r["run"] for r in rows})
    summary = {}
    for name in names:
        values = [r["scores"][name] for r in rows]
        accuracies = [r["target_test_accuracy"] for r in rows]
        rho = spearmanr(values, accuracies).statistic if len(rows) > 2 else float("nan")
        pick = max(rows, key=lambda r: r["scores"][name])
        within = []
        for run in runs:
            mine = [r for r in rows if r["run"] == run]
            chosen = max(mine, key=lambda r: r["scores"][name])
            within.append(max(r["target_test_accuracy"] for r in mine) - chosen["target_test_accuracy"])
        summary[name] = {"spearman_rho": float(rho),
                         "pick": f"{Path(pick['run']).name} {pick['candidate']}",
                         "lost_over_all": best - pick["target_test_accuracy"],
                         "lost_within_runs_mean": statistics.mean(within)}
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished adapt run folders")
    parser.add_argument("--out", type=Path, required=True, help="folder for the results")
    parser.add_argument("--sample", type=int, default=5000,
                        help="target training images scored per candidate (default %(default)s)")
    args = parser.parse_args(argv)
    rows = [row for run in args.runs for row in score_run(run, args.sample)]
    if len(rows) < 3:
        parser.error("give runs with at least three candidates between them")
    summary = summarize(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/validator_study.py " + " ".join(sys.argv[1:])
    (args.out / "validators.json").write_text(json.dumps(
        {"command": command, "candidates": rows, "summary": summary}, indent=2))
    lines = [f"# Label-free validators on {len(rows)} candidates of {len(args.runs)} runs", "",
             f"`{command}`", "",
             "| validator | Spearman ρ with target accuracy | pick over all | accuracy lost "
             "(all) | accuracy lost choosing an epoch (mean over runs) |", "|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['spearman_rho']:+.2f} | {s['pick']} | "
                     f"{s['lost_over_all']:.4f} | {s['lost_within_runs_mean']:.4f} |")
    lines += ["", "| run | candidate | target test | "
              + " | ".join(summary) + " |", "|---|---|---|" + "---|" * len(summary)]
    for r in rows:
        lines.append(f"| {Path(r['run']).name} | {r['candidate']} | {r['target_test_accuracy']:.4f} | "
                     + " | ".join(f"{r['scores'][n]:.4f}" for n in summary) + " |")
    (args.out / "validators.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
