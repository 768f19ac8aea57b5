"""Kill train.py, val.py and detect.py with SIGKILL at random moments, then check that every output left
behind is complete: each checkpoint loads, each image decodes, each JSON parses, each label file has whole
rows, each cache loads, results.csv has whole rows. A killed training run must also --resume to the end.

    python tests/kill_soak.py --kills 12            # ~10 minutes on 2 busy cores
    python tests/kill_soak.py --kills 60 --seed 3

Runs in a temporary folder on a tiny synthetic set (yolov5n, --img 64, CPU). Kill moments are drawn
uniformly over each command's measured unkilled duration, so kills land while starting, training, saving,
validating and writing. Writes benchmarks/results/kill_soak.json (figures for docs/robustness.md).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import RESULTS_DIR, environment, write_json  # noqa: E402
from utils.checkpoint import load_checkpoint  # noqa: E402
from utils.data.synthetic import generate_dataset  # noqa: E402
from utils.files import TEMP_SUFFIX  # noqa: E402

TRAIN_ARGS = ["--img", "64", "--batch", "8", "--nbs", "8", "--workers", "0", "--cfg", "models/yolov5n.yaml",
              "--epochs", "3", "--noautoanchor", "--seed", "0"]
LABEL_COLUMNS = (5, 6, 7)  # YOLO txt: class + box, + conf, + C-BBL uncertainty


def commands(work: Path, data: Path, weights: Path) -> dict[str, list[str]]:
    """The three CLIs with every output switched on, writing under ``work``."""
    return {
        "train": ["train.py", *TRAIN_ARGS, "--data", str(data), "--project", str(work / "train")],
        "val": ["val.py", "--weights", str(weights), "--data", str(data), "--img", "64", "--workers", "0",
                "--save-txt", "--save-conf", "--save-json", "--project", str(work / "val")],
        "detect": ["detect.py", "--weights", str(weights), "--source", str(data.parent / "data" / "images" / "val"),
                   "--imgsz", "64", "--conf-thres", "0.01", "--save-txt", "--save-conf", "--save-crop",
                   "--project", str(work / "detect")],
    }


def run_cli(argv: list[str], kill_after: float | None = None) -> tuple[float, bool]:
    """Run one CLI; SIGKILL it after ``kill_after`` seconds. Returns (seconds, whether it was killed)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        process.wait(timeout=kill_after)
        killed = False
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed = True
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if not killed and process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:1])} failed unkilled (exit {process.returncode}): {stderr[-2000:]}")
    return time.perf_counter() - start, killed


CHECKED_SUFFIXES = (".pt", ".jpg", ".png", ".json", ".txt", ".csv", ".cache", ".yaml")


def check_file(path: Path) -> str:
    """'' when the output (one of CHECKED_SUFFIXES) is complete, else why not."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".pt":
            load_checkpoint(path)
        elif suffix in (".jpg", ".png"):
            if cv2.imread(str(path)) is None:
                return "image does not decode"
        elif suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif suffix == ".txt" and path.parent.name == "labels":
            text = path.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):
                return "last row cut"
            if any(len(line.split()) not in LABEL_COLUMNS for line in text.splitlines()):
                return "a row has the wrong number of columns"
        elif suffix == ".csv":
            rows = [line.split(",") for line in path.read_text(encoding="utf-8").splitlines()]
            if any(len(row) != len(rows[0]) for row in rows):
                return "a row has the wrong number of columns"
        elif suffix == ".cache":
            with np.load(path, allow_pickle=False) as cache:
                cache["key"]
        elif suffix == ".yaml":
            yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception as error:  # any failure to read is what this script looks for
        return f"{type(error).__name__}: {error}"
    return ""


def check_outputs(work: Path) -> tuple[Counter, list[str], int]:
    """(files checked per suffix, problems, stale temporary files) under ``work``."""
    checked, problems, temps = Counter(), [], 0
    for path in sorted(work.rglob("*")):
        if not path.is_file() or (path.suffix.lower() not in CHECKED_SUFFIXES and not path.name.startswith(".")):
            continue
        if path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX):
            temps += 1
            continue
        problem = check_file(path)
        checked[path.suffix.lower()] += 1
        if problem:
            problems.append(f"{path}: {problem}")
    return checked, problems, temps


def latest_last_pt(work: Path) -> Path | None:
    candidates = sorted((work / "train").glob("*/weights/last.pt"), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None


def soak(kills: int, seed: int, work: Path) -> dict:
    rng = np.random.default_rng(seed)
    root = generate_dataset(work / "data", 16, 8, size=96, seed=0)
    data = work / "soak.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val",
                                    "names": ["car", "truck", "pedestrian", "bicycle", "bus"]}))
    durations = {"train": run_cli(["train.py", *TRAIN_ARGS, "--data", str(data), "--project",
                                   str(work / "weights")])[0]}
    weights = work / "weights" / "exp" / "weights" / "last.pt"
    argvs = commands(work, data, weights)
    for name in ("val", "detect"):
        durations[name], _ = run_cli(argvs[name])
    killed, resumed, problems_over_time = Counter(), 0, []
    for index in range(kills):
        name = str(rng.choice(list(argvs)))
        argv = argvs[name]
        last = latest_last_pt(work)
        if name == "train" and last is not None and int(load_checkpoint(last)["epoch"]) + 1 < 3:
            argv = ["train.py", "--resume", str(last)]  # continue the killed run, and kill it again
        moment = float(rng.uniform(0.2, 1.0) * durations[name])
        _, was_killed = run_cli(argv, kill_after=moment)
        killed[name] += was_killed
        _, problems, _ = check_outputs(work)
        problems_over_time.append(len(problems))
        print(f"{index + 1}/{kills}: {name} killed={was_killed} at {moment:.1f}s, problems so far {len(problems)}",
              flush=True)
    last = latest_last_pt(work)
    if last is not None and int(load_checkpoint(last)["epoch"]) + 1 < 3:
        run_cli(["train.py", "--resume", str(last)])  # every killed run can still be finished
        resumed += 1
    checked, problems, temps = check_outputs(work)
    return {"kills_requested": kills, "killed": dict(killed), "unkilled_seconds": durations,
            "files_checked": dict(checked), "files_checked_total": sum(checked.values()), "problems": problems,
            "stale_temp_files": temps, "final_resume_runs": resumed, "seed": seed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=12, help="how many runs to start and kill")
    parser.add_argument("--seed", type=int, default=0, help="seed of the command choice and kill moments")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as temp:
        work = args.keep or Path(temp)
        figures = soak(args.kills, args.seed, work)
    figures["wall_seconds"] = round(time.perf_counter() - start, 1)
    path = write_json(RESULTS_DIR / "kill_soak.json", {"environment": environment(), **figures})
    print(json.dumps(figures, indent=2))
    print(f"written {path}")
    sys.exit(1 if figures["problems"] else 0)


if __name__ == "__main__":
    main()
