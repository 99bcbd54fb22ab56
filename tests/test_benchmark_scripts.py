"""The analysis scripts of ``benchmarks/``, run as a user runs them, on small made-up runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "benchmarks"


def test_paired_seeds_pairs_a_report_row_with_run_folders(tmp_path):
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"rows": [
        {"source": "a", "target": "b", "method": "dann", "seeds": [0, 1, 2],
         "accuracies": [0.70, 0.72, 0.74]},
        {"source": "a", "target": "b", "method": "other", "status": "data missing"}]}))
    for seed, accuracy in enumerate([0.75, 0.78, 0.77]):
        run = tmp_path / "vada" / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"target_test_accuracy": accuracy}))

    def paired(*args):
        return subprocess.run([sys.executable, str(SCRIPTS / "paired_seeds.py"), *args],
                              capture_output=True, text=True)

    done = paired(f"{report}#a:b:dann", str(tmp_path / "vada"))
    assert done.returncode == 0, done.stderr
    assert "| 1 | 0.7200 | 0.7800 | +0.0600 |" in done.stdout
    assert "difference +0.0467 ± 0.0153 (std), 3/3 seeds higher" in done.stdout
    missing = paired(f"{report}#a:b:other", str(tmp_path / "vada"))
    assert missing.returncode != 0 and "no measured row a → b, other" in missing.stderr
    malformed = paired(f"{report}#dann", str(tmp_path / "vada"))
    assert malformed.returncode != 0 and "REPORT.json#SOURCE:TARGET:METHOD" in malformed.stderr


def test_every_recorded_benchmark_command_names_a_script_that_exists():
    """README, docs and the committed results run scripts by path: a moved script moves them too."""
    command = re.compile(r"\b(?:python3?|bash)\s+(benchmarks/[\w/]+\.(?:py|sh))\b")
    texts = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"),
             *(path for path in SCRIPTS.rglob("*") if path.suffix in {".md", ".json", ".py", ".sh"})]
    named = {(match.group(1), text.relative_to(ROOT).as_posix())
             for text in texts for match in command.finditer(text.read_text(encoding="utf-8"))}
    assert len(named) > 20  # the pattern still finds the commands
    assert [pair for pair in sorted(named) if not (ROOT / pair[0]).is_file()] == []
