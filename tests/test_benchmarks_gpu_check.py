"""benchmarks/gpu_check.sh --dry-run: the one-command GPU check runs end to end on CPU and writes its JSON and table.

No timing is asserted: the dry run checks the plumbing and the output format (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_json_and_markdown(tmp_path):
    out = tmp_path / "gpu_check"
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    payload = json.loads(out.with_suffix(".json").read_text())
    assert payload["dry_run"] is True and payload["environment"]["torch"]
    assert payload["notes"] and "no reference" in payload["notes"][0]
    rows = payload["rows"]
    expected = {(head, task) for head in ("regress", "cbbl") for task in ("train_step_amp", "val", "detect_b1")}
    assert {(row["head"], row["task"]) for row in rows} == expected
    assert all(row["impl"] == "ours" and row["images_per_s"] > 0 and row["peak_mem_gb"] is None for row in rows)
    train = [row for row in rows if row["task"] == "train_step_amp"]
    assert all(row["step_s"] > 0 and row["batch"] == 2 for row in train)
    table = out.with_suffix(".md").read_text().splitlines()
    assert table[0].startswith("| impl | model | head | task |")
    assert len([line for line in table if line.startswith("| ours")]) == 6


def test_gpu_check_rejects_unknown_arguments():
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--bogus"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "--bogus" in done.stderr
