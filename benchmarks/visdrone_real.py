"""C-BBL against CIoU on real VisDrone frames, fine-tuned from the real COCO yolov5n release.

    python benchmarks/visdrone_real.py                         # 6 configs x 3 seeds at 640 px, 2 at a time
    python benchmarks/visdrone_real.py --img 1024 --configs ciou cbbl_ciou --out benchmarks/results/visdrone_real_1024
    python benchmarks/visdrone_real.py --tile 640 --configs ciou cbbl_ciou \
        --out benchmarks/results/visdrone_real_tile640
    python benchmarks/visdrone_real.py --summary-only          # rewrite summary.csv, summary.md and the plots
    python benchmarks/visdrone_real.py --gradient-share --configs ciou cbbl   # why: the box term's gradient share
    python benchmarks/visdrone_real.py --inference-cost --configs cbbl_ciou cbbl_ciou_quality   # voting/quality cost
    python benchmarks/visdrone_real.py --rescore sliced --configs ciou cbbl_ciou \
        --out benchmarks/results/visdrone_real_sliced640   # the whole-frame 640 runs scored on 640 px slices
    python benchmarks/visdrone_real.py --rescore whole --tile 640 --configs ciou cbbl_ciou \
        --out benchmarks/results/visdrone_real_tile640_whole   # the tile runs scored on whole frames at 640 px
    python benchmarks/visdrone_real.py --regimes --configs ciou cbbl_ciou   # the regimes side by side (regimes.md)
    python benchmarks/visdrone_real.py --regimes --inference-cost --configs ciou cbbl_ciou   # and their time

What a YOLOv5 user does: train.py from ``yolov5n-coco-v6.1.pt`` on the real frames in ../shared (a working
copy under datasets/, labels by data/scripts/visdrone2yolo.py), YOLOv5's recipe (hyp.scratch-low SGD, nominal
batch 64, float32 as YOLOv5 on a CPU), whole frames; another --img or --tile trains for the same compute (images x
network pixels), its warmup scaled alike. Each (config, seed) is one train.py process (1 thread). A
killed study continues where it stopped: a run with a last.pt resumes from it, a finished run is only
evaluated, and every evaluated run appends its row to runs.csv at once. best.pt is then scored on the 73 val
frames under YOLOv5's metric, the COCO protocol and the official VisDrone protocol (ignored regions), from one
inference pass; for C-BBL runs also the Spearman correlation between each true positive's uncertainty and
1 - IoU with its ground truth.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    RESULTS_DIR,
    append_csv_row,
    header_lines,
    quiet_start,
    read_csv,
    summary_cell,
    welch_t,
    write_csv,
    write_json,
)
from utils.files import atomic_write_text  # noqa: E402

if TYPE_CHECKING:
    from utils.data.tiles import TileSettings

logger = logging.getLogger("benchmarks.visdrone_real")
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FRAMES = SHARED / "data" / "visdrone-real"
COCO_WEIGHTS = SHARED / "weights" / "yolov5n-coco-v6.1.pt"
SPLITS = ("VisDrone2019-DET-train", "VisDrone2019-DET-val")
# YOLOv5's fine-tuning recipe, and the two values of it a run may change (checked in the file before a change).
RECIPE = ROOT / "data" / "hyps" / "hyp.scratch-low.yaml"
RECIPE_WARMUP, RECIPE_BOX = 3.0, 0.05
# Configs that train another box gain: C-BBL's scaled to CIoU's share of the gradient at the start of fine-tuning,
# 0.05 / 1.56, the ratio of the two box terms' gradient norms at the head's inputs on seed 0 (--gradient-share; 1.45
# with its seeded head).
BOX_GAIN = {"cbbl_gain": 0.032}
# name -> train.py flags: the regression baseline; plain C-BBL (the paper's loss, no CIoU term) at the default grid;
# with the CIoU term (C-BBL's default since this study); plain at the paper's grid, with the box gain scaled
# (BOX_GAIN); the default scored by objectness x class x the quality branch's IoU estimate.
CONFIGS = {
    "ciou": [],
    "cbbl": ["--box-loss", "cbbl", "--cbbl-ciou", "0"],
    "cbbl_ciou": ["--box-loss", "cbbl", "--cbbl-ciou", "1.0"],
    "cbbl_paper": ["--box-loss", "cbbl", "--cbbl-ciou", "0", "--cbbl-grid", "in"],
    "cbbl_gain": ["--box-loss", "cbbl", "--cbbl-ciou", "0"],
    "cbbl_ciou_quality": ["--box-loss", "cbbl", "--cbbl-ciou", "1.0", "--cbbl-score", "quality"],
}
# plain config -> the configs that each differ from it by one setting. Each variant, and each voted (``*_vote``)
# column of the plain config and of its variants, gets Welch's t against the plain config: the C-BBL changes against
# the paper's loss, and the quality score, voting and both against C-BBL's default; a variant's voted columns also
# against the plain config's voted ones (the quality score on top of voting, C-BBL's inference default).
VARIANTS = {"cbbl": ("cbbl_ciou", "cbbl_paper", "cbbl_gain"), "cbbl_ciou": ("cbbl_ciou_quality",)}
# summary column -> (protocol, ValResults field or extra key)
METRICS = {
    "yolov5_map50": ("yolov5", "map50"), "yolov5_map50_95": ("yolov5", "map50_95"),
    "coco_ap": ("coco", "map50_95"), "coco_ap50": ("coco", "map50"), "coco_ap75": ("coco", "map75"),
    "coco_ap_small": ("coco", "ap_small"),
    "visdrone_ap": ("visdrone", "map50_95"), "visdrone_ap50": ("visdrone", "map50"),
    "visdrone_ap75": ("visdrone", "map75"), "visdrone_ar100": ("visdrone", "AR100"),
}
MAX_DET = {"yolov5": 300, "coco": 300, "visdrone": 500}  # each protocol's own default
# --inference-cost: detect.py end to end on the first COST_FRAMES val frames, at each COST_SIZES, COST_ROUNDS rounds.
COST_FRAMES, COST_SIZES, COST_ROUNDS = 16, (640, 1536), 9
TILE_OVERLAP = 0.25  # --tile runs: train.py's default overlap
BASE_IMG = 640  # every regime trains for the network pixels of --epochs whole-frame epochs at this size


@dataclass(frozen=True)
class Regime:
    """One way to train and score, as --regimes compares them."""

    results: str  # its study's results folder, beside --out
    runs: str  # its runs' folder, beside --project
    img: int  # the network size it trains and infers at
    rescore: str = ""  # RESCORE: its runs scored otherwise than they validate (a --rescore study of them)

    def detect_slicing(self) -> dict:
        """detect.py's slicing arguments for this regime (none: as the checkpoint says, --slice auto)."""
        if self.rescore == "sliced":
            return {"slice": [self.img, self.img], "overlap": TILE_OVERLAP}
        return {"slice": "off"} if self.rescore == "whole" else {}


# --rescore: score finished runs on --img slices of the full frames (overlap TILE_OVERLAP), as --tile runs are
# scored, or on whole frames at --img
RESCORE = ("sliced", "whole")
# --regimes: the first is the baseline the others are compared with. The rescored regimes tell tile training and
# sliced inference apart: the whole-frame runs sliced, and the tile runs on whole frames.
REGIMES = {"whole 640": Regime("visdrone_real", "visdrone_real", 640),
           "whole 640, sliced": Regime("visdrone_real_sliced640", "visdrone_real", 640, rescore="sliced"),
           "tile 640": Regime("visdrone_real_tile640", "visdrone_real_tile640", 640),
           "tile 640, whole": Regime("visdrone_real_tile640_whole", "visdrone_real_tile640", 640, rescore="whole"),
           "whole 1024": Regime("visdrone_real_1024", "visdrone_real_1024", 1024)}
REGIME_METRICS = ("yolov5_map50", "yolov5_map50_95", "coco_ap_small", "visdrone_ap")
# --regimes tests every regime against whole-frame training at the baseline size and at the largest one trained
REGIME_REFERENCES = ("whole 640", "whole 1024")


def regime_t_column(metric: str, against: str) -> str:
    """regimes.csv's column of ``metric``'s Welch t against the regime ``against`` (``yolov5_map50_t_vs_whole640``)."""
    return f"{metric}_t_vs_{against.replace(' ', '')}"


def prepare_data(work: Path) -> Path:
    """A working copy of the real frames under ``work`` (images linked, annotations copied, YOLO labels made by
    the project's converter) and its dataset YAML; ../shared is only read."""
    for split in SPLITS:
        source, target = FRAMES / split, work / split
        target.mkdir(parents=True, exist_ok=True)
        if not (target / "images").exists():
            (target / "images").symlink_to(source / "images", target_is_directory=True)
        if not (target / "annotations").is_dir():
            shutil.copytree(source / "annotations", target / "annotations")
        if not (target / "labels").is_dir():
            subprocess.run([sys.executable, str(ROOT / "data" / "scripts" / "visdrone2yolo.py"), "--src", str(target)],
                           check=True, cwd=ROOT)
    data = work / "visdrone-real.yaml"
    names = "[pedestrian, people, bicycle, car, van, truck, tricycle, awning-tricycle, bus, motor]"
    data.write_text(f"path: {work}\ntrain: {SPLITS[0]}/images\nval: {SPLITS[1]}/images\nnc: 10\nnames: {names}\n",
                    encoding="utf-8")
    return data


@functools.cache
def images_per_epoch(data: Path, img: int, tile: int) -> int:
    """Training images one epoch draws: the train frames, or with ``tile`` the windows cut from them."""
    from utils.data.dataset import TiledImagesAndLabels
    from utils.data.tiles import TileSettings

    frames = data.parent / SPLITS[0] / "images"
    if not tile:
        return len(list(frames.glob("*.jpg")))
    return len(TiledImagesAndLabels(str(frames), img, TileSettings(tile, TILE_OVERLAP), augment=True, nc=10))


def matched_epochs(args: argparse.Namespace, data: Path) -> int:
    """Epochs that see the network pixels of --epochs whole-frame epochs at BASE_IMG (equal training compute:
    images x network pixels; a tile and a letterboxed frame are both --img at the network), so that the regimes
    (whole frames at 640 or 1024 px, tiles) compare at one training budget."""
    frames, images = (images_per_epoch(data, args.img, tile) for tile in (0, args.tile))
    return max(1, round(args.epochs * frames / images * (BASE_IMG / args.img) ** 2))


def recipe(work: Path, warmup_epochs: float, box: float) -> str:
    """--hyp of a run: YOLOv5's hyp.scratch-low.yaml, or a copy under ``work`` with another warmup_epochs or box gain
    (written each time: ../shared and data/hyps are only read)."""
    if (warmup_epochs, box) == (RECIPE_WARMUP, RECIPE_BOX):
        return RECIPE.name
    text = RECIPE.read_text(encoding="utf-8")
    for old, new in ((f"\nwarmup_epochs: {RECIPE_WARMUP}\n", f"\nwarmup_epochs: {warmup_epochs:g}\n"),
                     (f"\nbox: {RECIPE_BOX} ", f"\nbox: {box:g} ")):
        if old not in text:
            raise ValueError(f"{RECIPE} no longer has {old.strip()!r}: update benchmarks/visdrone_real.py's RECIPE_*")
        text = text.replace(old, new)
    return str(atomic_write_text(work / f"{RECIPE.stem}.warmup{warmup_epochs:g}.box{box:g}.yaml", text))


def train_command(args: argparse.Namespace, data: Path, config: str, seed: int, run_dir: Path) -> list[str]:
    """train.py's command line for one run, or its --resume when the run already has a last.pt."""
    last = run_dir / "weights" / "last.pt"
    if last.is_file():
        return [sys.executable, str(ROOT / "train.py"), "--resume", str(last)]
    tiles = ["--tile", str(args.tile), "--tile-overlap", str(TILE_OVERLAP)] if args.tile else []
    # a regime trained for fewer epochs (equal compute) warms up for the recipe's share of its training
    hyp = recipe(args.work, RECIPE_WARMUP * args.train_epochs / args.epochs, BOX_GAIN.get(config, RECIPE_BOX))
    return [sys.executable, str(ROOT / "train.py"), "--weights", str(COCO_WEIGHTS), "--data", str(data),
            "--img", str(args.img), "--epochs", str(args.train_epochs), "--batch", str(args.batch), *tiles,
            "--hyp", hyp, "--nbs", "64", "--no-amp", "--seed", str(seed), "--workers", "1",
            "--noplots", "--device", "cpu", "--project", str(run_dir.parent), "--name", run_dir.name, "--exist-ok",
            *CONFIGS[config]]


def trained_epochs(run_dir: Path) -> int:
    return len(read_csv(run_dir / "results.csv"))


def finished(run_dir: Path) -> bool:
    """Whether the run trained all the epochs it was started with (its opt.yaml) and has its best.pt (which a
    run in progress has too)."""
    import yaml

    opt = run_dir / "opt.yaml"
    if not opt.is_file() or not (run_dir / "weights" / "best.pt").is_file():
        return False
    return trained_epochs(run_dir) >= int(yaml.safe_load(opt.read_text(encoding="utf-8"))["epochs"])


def run_training(args: argparse.Namespace, data: Path, config: str, seed: int, run_dir: Path) -> None:
    """Train (or resume) one run in its own 1-thread process; its wall time accumulates in <run>.time.json."""
    timer_file = run_dir.parent / f"{run_dir.name}.time.json"
    spent = json.loads(timer_file.read_text())["wall_s"] if timer_file.is_file() else 0.0
    if finished(run_dir):
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = train_command(args, data, config, seed, run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(run_dir.parent / f"{run_dir.name}.log", "a", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        while True:
            try:
                code = process.wait(timeout=60)
                break
            except subprocess.TimeoutExpired:  # keep the wall time of a run that a session end may kill
                write_json(timer_file, {"wall_s": round(spent + time.perf_counter() - start, 1)})
    write_json(timer_file, {"wall_s": round(spent + time.perf_counter() - start, 1)})
    if code != 0:
        raise RuntimeError(f"train.py exited {code}: see {run_dir.parent / (run_dir.name + '.log')}")


def first_per_image(collected, limit: int):
    """The collection with each image's first ``limit`` detections (NMS order = a smaller --max-det)."""
    image = collected.dets.image
    starts = np.r_[0, np.flatnonzero(image[1:] != image[:-1]) + 1]
    position = np.arange(len(image)) - np.repeat(starts, np.diff(np.r_[starts, len(image)]))
    keep = position < limit
    return replace(collected, dets=collected.dets.subset(keep), det_extra=collected.det_extra[keep])


def scored_row(collected, names: list[str], suffix: str = "") -> dict:
    """METRICS of one collection, each protocol scoring its own --max-det first detections per image."""
    from utils.eval.scoring import PROTOCOLS

    scored = {protocol: PROTOCOLS[protocol].score(first_per_image(collected, limit), names)[0]
              for protocol, limit in MAX_DET.items()}
    return {name + suffix: round(float(scored[protocol].get(key, scored[protocol].get("extra", {}).get(
        key, float("nan")))), 5) for name, (protocol, key) in METRICS.items()}


def scoring_window(rescore: str, img: int, trained_tile: TileSettings | None) -> tuple[int, float]:
    """(window, overlap) of the slices a run is scored on, window 0 for whole frames: a --tile run as val.py --slice
    auto scores it (its trained tile), any other on whole frames, unless --rescore says otherwise."""
    if rescore:
        return (img, TILE_OVERLAP) if rescore == "sliced" else (0, 0.0)
    return (trained_tile.window, trained_tile.overlap) if trained_tile else (0, 0.0)


def evaluate(args: argparse.Namespace, data: Path, config: str, seed: int, run_dir: Path) -> dict:
    """best.pt on the val frames under the three protocols (one inference pass) and the uncertainty check; a
    C-BBL run also with variance voting (``--cbbl-fusion``, columns ``*_vote``)."""
    import torch

    from utils.data.config import load_data_config
    from utils.data.dataset import create_dataloader
    from utils.eval.reliability import spearman, true_positive_ious
    from utils.eval.validator import Slicing, collect, collect_sliced
    from utils.eval.yolov5 import evaluate as yolov5_evaluate
    from utils.infer.runtime import load_backend

    config_dict = load_data_config(str(data), splits=("val",))
    backend = load_backend([str(run_dir / "weights" / "best.pt")], torch.device("cpu"))
    loader, _ = create_dataloader(config_dict["val"], args.img, 16, backend.stride, rect=True, pad=0.5, workers=0)
    detection = {"conf_thres": 0.001, "iou_thres": 0.6, "max_det": max(MAX_DET.values())}
    window, overlap = scoring_window(args.rescore, args.img, backend.trained_tile)

    def collected_with(fusion: bool):
        if not window:
            return collect(backend, loader, config_dict["nc"], cbbl_fusion=fusion, **detection)
        slicing = Slicing((window, window), overlap, args.img)
        return collect_sliced(backend, loader.dataset, config_dict["nc"], slicing, cbbl_fusion=fusion, **detection)

    collected = collected_with(False)
    row = {**scored_row(collected, config_dict["names"]),
           "infer_ms_per_frame": round(sum(collected.speed_ms.values()), 1)}
    if collected.det_extra.shape[1] and backend.decode_side_variance(True):
        backend.decode_only_above(detection["conf_thres"])
        voted = collected_with(True)
        row.update(scored_row(voted, config_dict["names"], "_vote"),
                   infer_ms_per_frame_vote=round(sum(voted.speed_ms.values()), 1))
        backend.decode_side_variance(False)
    if collected.det_extra.shape[1]:
        yolo = first_per_image(collected, MAX_DET["yolov5"])
        correct = yolov5_evaluate(yolo.dets, yolo.gts, np.arange(len(yolo.image_paths))).correct[:, 0]
        rows, ious = true_positive_ious(yolo.dets, yolo.gts, correct)
        uncertainty, error = yolo.det_extra[rows, 0], 1 - ious
        row["spearman_unc_vs_1-iou"] = round(spearman(uncertainty, error), 4)
        write_csv(args.out / "tp_uncertainty" / f"{config}_s{seed}.csv",
                  [{"uncertainty": round(float(u), 5), "one_minus_iou": round(float(e), 5)}
                   for u, e in zip(uncertainty, error)])
    return row


def study_one(args: argparse.Namespace, data: Path, config: str, seed: int) -> None:
    """Train (unless --rescore), evaluate and record one (config, seed); a failure is recorded, not raised."""
    run_dir = args.project / f"{config}_s{seed}"
    row = {"config": config, "seed": seed, "img": args.img, "epochs": args.train_epochs,
           **({"tile": args.tile} if args.tile else {}), **({"rescore": args.rescore} if args.rescore else {})}
    try:
        if not args.rescore:
            run_training(args, data, config, seed, run_dir)
        figures = evaluate(args, data, config, seed, run_dir)
        status, error = "ok", ""
    except (RuntimeError, ValueError, OSError) as err:
        figures, status, error = {}, "failed", str(err).splitlines()[0][:200]
        logger.error("%s seed %d failed: %s", config, seed, error)
    timer_file = run_dir.parent / f"{run_dir.name}.time.json"
    wall = json.loads(timer_file.read_text())["wall_s"] if timer_file.is_file() else ""
    if (run_dir / "results.csv").is_file():
        write_csv(args.out / "curves" / f"{config}_s{seed}.csv", read_csv(run_dir / "results.csv"))
    append_csv_row(args.out / "runs.csv", {**row, "status": status, "error": error, **figures,  # locks the folder
                                           "epochs_done": trained_epochs(run_dir), "train_wall_s": wall})
    logger.info("%s seed %d: %s %s", config, seed, status, figures)


def summarize(rows: list[dict]) -> list[dict]:
    """Per config: seeds, mean and sample std of every metric, Welch's t against ciou (voting's ``*_vote``
    columns too: each head as it infers by default); for the C-BBL variants (VARIANTS, and the ``*_vote``
    columns) also Welch's t against their plain config."""
    ok = [row for row in rows if row["status"] == "ok"]
    columns = [*METRICS, "spearman_unc_vs_1-iou", *(f"{name}_vote" for name in METRICS)]

    def values(config: str, name: str) -> list[float]:
        return [float(row[name]) for row in ok if row["config"] == config and row.get(name, "") not in ("", "nan")]

    summary = []
    for config in CONFIGS:
        entry = {"config": config, "seeds_ok": sum(row["config"] == config for row in ok)}
        for name in columns:
            mine, metric = values(config, name), name.removesuffix("_vote")
            entry[f"{name}_mean"] = round(statistics.mean(mine), 5) if mine else ""
            entry[f"{name}_std"] = round(statistics.stdev(mine), 5) if len(mine) > 1 else ""
            entry[f"{name}_t_vs_ciou"] = (round(welch_t(mine, values("ciou", metric)), 2)  # CIoU has no voting
                                          if config != "ciou" and metric in METRICS and mine else "")
            for plain, variants in VARIANTS.items():
                compared = config in variants or (config == plain and name != metric)
                entry[f"{name}_t_vs_{plain}"] = (round(welch_t(mine, values(plain, metric)), 2)
                                                 if compared and metric in METRICS and mine else "")
                if name != metric:
                    entry[f"{name}_t_vs_{plain}_vote"] = (round(welch_t(mine, values(plain, name)), 2)
                                                          if config in variants and mine else "")
        summary.append(entry)
    return summary


def markdown_tables(summary: list[dict]) -> str:
    """summary.md: every config with finished seeds under each METRICS (mean +- std, Welch t against CIoU, then
    against its plain config), and the same with variance voting (t against CIoU, then each plain config it is
    compared to)."""
    plains = [f"t_vs_{plain}" for plain in VARIANTS]
    header = "| config | seeds | " + " | ".join(METRICS) + " | spearman_unc_vs_1-iou |"
    lines = ["Mean +- std over seeds (t against ciou / against the plain config, VARIANTS).", "", header,
             "|" + " --- |" * (len(METRICS) + 3)]
    for entry in summary:
        if entry["seeds_ok"]:
            cells = [summary_cell(entry, name, ["t_vs_ciou", *plains], 4) for name in METRICS]
            spearman = summary_cell(entry, "spearman_unc_vs_1-iou", [], 3)
            lines.append(f"| {entry['config']} | {entry['seeds_ok']} | {' | '.join(cells)} | {spearman} |")
    lines += ["", "With variance voting (`--cbbl-fusion`), t against ciou, then the plain configs in VARIANTS order, "
              "then their voted columns.", "",
              "| config | " + " | ".join(METRICS) + " |", "|" + " --- |" * (len(METRICS) + 1)]
    for entry in summary:
        if entry.get(f"{next(iter(METRICS))}_vote_mean", "") != "":
            cells = [summary_cell(entry, f"{name}_vote", ["t_vs_ciou", *plains, *(f"{t}_vote" for t in plains)], 4)
                     for name in METRICS]
            lines.append(f"| {entry['config']} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def plot_results(out_dir: Path) -> None:
    """curves.png: val mAP50-95 (YOLOv5's metric) per epoch, mean over seeds; uncertainty.png: TP scatter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7, 4.5))
    for config in CONFIGS:
        curves = [c for c in (read_csv(p) for p in sorted((out_dir / "curves").glob(f"{config}_s*.csv"))) if c]
        if curves:
            length = min(len(c) for c in curves)
            mean = [statistics.mean(float(c[i]["metrics/mAP_0.5:0.95"]) for c in curves) for i in range(length)]
            axis.plot(range(length), mean, marker="o", markersize=3, label=f"{config} (n={len(curves)})")
    axis.set(xlabel="epoch", ylabel="val mAP50-95 (YOLOv5 metric)", title="real VisDrone val, mean over seeds")
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png", dpi=110)
    plt.close(fig)
    points = sorted((out_dir / "tp_uncertainty").glob("*_s0.csv"))
    if points:
        fig, axes = plt.subplots(1, len(points), figsize=(4.5 * len(points), 4), squeeze=False)
        for axis, path in zip(axes[0], points):
            rows = read_csv(path)
            axis.scatter([float(r["one_minus_iou"]) for r in rows], [float(r["uncertainty"]) for r in rows], s=2,
                         alpha=0.3)
            axis.set(xlabel="1 - IoU with ground truth", ylabel="C-BBL uncertainty (nats)", title=path.stem)
        fig.tight_layout()
        fig.savefig(out_dir / "uncertainty.png", dpi=110)
        plt.close(fig)


def gradient_share(args: argparse.Namespace, data: Path) -> list[dict]:
    """Each loss term's gradient (with its training gain) at the features the head's final convolutions read, on
    4 fixed batches of train frames, for each config's seed-0 run at its start (COCO weights transferred into the
    run's own head: its fitted grid and anchors) and trained (best.pt): the box term's share and its cosine with
    objectness + class (negative: it pulls the shared features against detection)."""
    import dataclasses

    import torch

    from models.yolo import Model, model_from_checkpoint
    from utils.checkpoint import load_checkpoint
    from utils.data.dataset import create_dataloader
    from utils.engine.transfer import transfer_weights
    from utils.hyp import load_hyp
    from utils.loss import ComputeLoss, LossSettings

    terms, rows = ("box", "obj", "cls"), []
    loader, _ = create_dataloader(str(data.parent / SPLITS[0] / "images"), args.img, args.batch, 32, workers=0)
    batches = [(images.float() / 255, targets) for (images, targets, _, _), _ in zip(loader, range(4))]
    for config in args.configs:
        checkpoint = load_checkpoint(args.project / f"{config}_s0" / "weights" / "best.pt")
        trained = model_from_checkpoint(checkpoint, use_ema=False)
        torch.manual_seed(0)  # the fresh head the run started from: any draw, the same each time
        start = Model(checkpoint["model_yaml"])
        transfer_weights(start, load_checkpoint(COCO_WEIGHTS), f"--weights {COCO_WEIGHTS}")
        start.detect.anchors.copy_(trained.detect.anchors)
        settings = LossSettings.from_hyp(load_hyp(checkpoint["hyp"]))
        for state, model in (("start", start), ("trained", trained)):
            features: list[torch.Tensor] = []
            for conv in model.detect.m:
                conv.register_forward_pre_hook(lambda _module, inputs, seen=features: seen.append(inputs[0]))
            criteria = {term: ComputeLoss(model, dataclasses.replace(settings, **{
                other: 0.0 for other in terms if other != term}), imgsz=args.img) for term in terms}
            model.train().apply(lambda m: m.eval() if isinstance(m, torch.nn.BatchNorm2d) else None)
            sums = dict.fromkeys((*terms, "dot", "rest"), 0.0)
            for images, targets in batches:
                features.clear()
                raw = model(images)
                grads = {term: torch.cat([g.flatten() for g in torch.autograd.grad(
                    criteria[term](raw, targets)[0], features, retain_graph=True)]) for term in terms}
                rest = grads["obj"] + grads["cls"]
                for term in terms:
                    sums[term] += float(grads[term].square().sum())
                sums["dot"], sums["rest"] = sums["dot"] + float(grads["box"] @ rest), sums["rest"] + float(rest @ rest)
            norms = {term: sums[term] ** 0.5 for term in terms}
            rows.append({"run": f"{config}_s0", "state": state, **{f"grad_{t}": round(norms[t], 6) for t in terms},
                         "box_share": round(norms["box"] / sum(norms.values()), 4),
                         "cos_box_vs_obj_cls": round(sums["dot"] / (sums["box"] * sums["rest"]) ** 0.5, 4)})
            logger.info("%s", rows[-1])
    return rows


@dataclass(frozen=True)
class Timed:
    """One detect.py setting that --inference-cost times, and the (variant, img) its time is divided by."""

    variant: str
    weights: Path
    img: int
    vote: bool
    plain: tuple[str, int]
    slicing: dict = field(default_factory=dict)  # detect.py's slicing arguments (Regime.detect_slicing)


def first_finished(project: Path, config: str, seeds: list[int]) -> Path | None:
    """best.pt of ``config``'s first seed (in ``seeds`` order) whose run finished under ``project``."""
    return next((project / f"{config}_s{seed}" / "weights" / "best.pt" for seed in seeds
                 if finished(project / f"{config}_s{seed}")), None)


def voting_variants(args: argparse.Namespace) -> list[Timed]:
    """Each C-BBL config's first finished run at each COST_SIZES, plain and with variance voting
    (``--cbbl-fusion``), divided by its plain twin's plain time (VARIANTS: ``cbbl_ciou_quality``'s quality branch
    against ``cbbl_ciou``) where that ran, else by its own."""
    runs = {config: first_finished(args.project, config, args.seeds) for config in args.configs if config != "ciou"}
    runs = {config: weights for config, weights in runs.items() if weights}
    if not runs:
        raise ValueError(f"no finished C-BBL run of {args.configs} under {args.project}")
    twin = {variant: plain for plain, variants in VARIANTS.items() for variant in variants}
    plain = {config: twin[config] if twin.get(config) in runs else config for config in runs}
    return [Timed(f"{config} vote" if vote else config, weights, size, vote, (plain[config], size))
            for size in COST_SIZES for config, weights in runs.items() for vote in (False, True)]


def regime_variants(args: argparse.Namespace) -> list[Timed]:
    """Each config's first finished run in each of REGIMES at its own size, sliced or not as the regime is scored,
    divided by the same config's whole-frame 640 run."""
    baseline = next(iter(REGIMES))
    variants = [Timed(f"{name} {config}", weights, regime.img, False, (f"{baseline} {config}", REGIMES[baseline].img),
                      regime.detect_slicing())
                for name, regime in REGIMES.items() for config in args.configs
                if (weights := first_finished(args.project.parent / regime.runs, config, args.seeds))]
    timed = {(variant.variant, variant.img) for variant in variants}
    variants = [variant for variant in variants if variant.plain in timed]
    if not variants:
        raise ValueError(f"no finished whole-frame 640 run of {args.configs} under {args.project.parent}")
    return variants


def inference_cost(args: argparse.Namespace, data: Path, variants: list[Timed]) -> list[dict]:
    """detect.py's wall time per frame, end to end (read, letterbox, forward, NMS; its defaults), on the first
    COST_FRAMES val frames, for each variant. Interleaved rounds after an untimed one: each round times every
    variant once; the ratio to its plain variant is taken per round."""
    from detect import run as detect_run

    frames = args.work / "cost_frames"
    frames.mkdir(exist_ok=True)
    for image in sorted((data.parent / SPLITS[1] / "images").glob("*.jpg"))[:COST_FRAMES]:
        if not (frames / image.name).exists():
            (frames / image.name).symlink_to(image.resolve())
    seconds: dict[tuple[str, int], list[float]] = {}
    for timed_round in range(COST_ROUNDS + 1):  # round 0 warms up (first imports, allocator, page cache): untimed
        for variant in variants:
            start = time.perf_counter()
            detect_run(weights=str(variant.weights), source=str(frames), imgsz=variant.img, cbbl_fusion=variant.vote,
                       nosave=True, project=str(args.work / "cost_runs"), exist_ok=True, **variant.slicing)
            if timed_round:
                seconds.setdefault((variant.variant, variant.img), []).append(time.perf_counter() - start)
    rows = []
    for variant in variants:
        times = seconds[variant.variant, variant.img]
        ratios = [t / base for t, base in zip(times, seconds[variant.plain])]
        rows.append({"variant": variant.variant, "weights": str(variant.weights), "img": variant.img,
                     "frames": COST_FRAMES,
                     "ms_per_frame_median": round(1e3 * statistics.median(times) / COST_FRAMES, 1),
                     "ratio_to_plain_median": round(statistics.median(ratios), 3),
                     "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
                     "plain": variant.plain[0], "load_1min": round(os.getloadavg()[0], 2)})
        logger.info("%s", rows[-1])
    return rows


def mean_of(rows: list[dict], name: str, scale: float, digits: int) -> float | str:
    """Mean of a column over the rows that have it (rows from before it was recorded have ''), scaled."""
    values = [float(row[name]) * scale for row in rows if row.get(name, "") != ""]
    return round(statistics.mean(values), digits) if values else ""


def compare_regimes(args: argparse.Namespace, data: Path) -> list[dict]:
    """The regimes table from the REGIMES studies' runs.csv: per regime and config over seeds, each REGIME_METRICS
    mean, std and Welch t against the same config in each of REGIME_REFERENCES (regime_t_column); the
    training compute relative to whole frames at 640 (epochs x images x network pixels, mean over seeds); training
    hours and the val pass's ms per frame. A config scored also with variance voting (C-BBL's inference default)
    gets a second row, ``<config> vote``, tested against the voted rows."""
    def compute(row: dict) -> int:
        img = int(row["img"])
        return int(row["epochs"]) * images_per_epoch(data, img, int(row.get("tile") or 0)) * img ** 2

    def scored(rows: list[dict], config: str, suffix: str) -> list[dict]:
        return [row for row in rows if row["config"] == config and row.get(f"yolov5_map50{suffix}")]

    studies = {name: [row for row in read_csv(args.out.parent / regime.results / "runs.csv") if row["status"] == "ok"]
               for name, regime in REGIMES.items()}
    baseline_regime = next(iter(REGIMES))
    table = []
    for regime, rows in studies.items():
        for config, suffix in [(config, suffix) for config in CONFIGS if config in args.configs
                               for suffix in ("", "_vote")]:
            mine, base = scored(rows, config, suffix), scored(studies[baseline_regime], config, suffix)
            if not mine:
                continue
            entry = {"regime": regime, "config": config + suffix.replace("_", " "), "seeds_ok": len(mine),
                     "train_compute_vs_whole640": round(statistics.mean(map(compute, mine)) / statistics.mean(
                         map(compute, base)), 2) if base else "",
                     "train_h_mean": mean_of(mine, "train_wall_s", 1 / 3600, 2),
                     "val_ms_per_frame_mean": mean_of(mine, f"infer_ms_per_frame{suffix}", 1, 1)}
            for name in REGIME_METRICS:
                values = [float(row[name + suffix]) for row in mine]
                entry[f"{name}_mean"] = round(statistics.mean(values), 5)
                entry[f"{name}_std"] = round(statistics.stdev(values), 5) if len(values) > 1 else ""
                for against in REGIME_REFERENCES:
                    reference = [float(row[name + suffix]) for row in scored(studies[against], config, suffix)]
                    entry[regime_t_column(name, against)] = (round(welch_t(values, reference), 2)
                                                             if regime != against and reference else "")
            table.append(entry)
    return table


def regimes_markdown(table: list[dict], cost: list[dict]) -> str:
    """regimes.md: the regimes table as the README shows it (mean +- std, t against each of REGIME_REFERENCES,
    '-' where a side has too few seeds or is the row itself) with detect.py's time per frame from ``cost``
    (``regimes_inference_cost.csv``; plain NMS, so a voted row shows its plain twin's time)."""
    timed = {row["variant"]: row for row in cost}
    references = " / ".join(REGIME_REFERENCES)
    lines = [f"Mean +- std over seeds (Welch t against {references}); detect.py ms per frame, median of interleaved "
             "rounds (ratio to whole 640).", "",
             "| regime | config | seeds | train h | " + " | ".join(REGIME_METRICS) + " | detect.py ms / frame |",
             "|" + " --- |" * (len(REGIME_METRICS) + 5)]
    for entry in table:
        cells = []
        for name in REGIME_METRICS:
            ts = [entry[regime_t_column(name, against)] for against in REGIME_REFERENCES]
            shown = [f"{float(t):+.1f}" if t != "" and not math.isnan(float(t)) else "-" for t in ts]
            t_part = f" (t {' / '.join(shown)})" if set(shown) != {"-"} else ""
            cells.append(summary_cell(entry, name, [], 4) + t_part)
        time_row = timed.get(f"{entry['regime']} {entry['config'].removesuffix(' vote')}")
        time_cell = (f"{time_row['ms_per_frame_median']} ({float(time_row['ratio_to_plain_median']):.1f}x)"
                     if time_row else "-")
        lines.append(f"| {entry['regime']} | {entry['config']} | {entry['seeds_ok']} | {entry['train_h_mean']} | "
                     f"{' | '.join(cells)} | {time_cell} |")
    return "\n".join(lines) + "\n"


def pending_runs(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(config, seed) pairs without an 'ok' row, seed-major so a cut-short study has every config at equal seeds;
    with --rescore only the finished runs (the others are said and left for a later call)."""
    done = {(row["config"], int(row["seed"])) for row in read_csv(args.out / "runs.csv") if row["status"] == "ok"}
    pending = [(config, seed) for seed in args.seeds for config in args.configs if (config, seed) not in done]
    if not args.rescore:
        return pending
    unfinished = [pair for pair in pending if not finished(args.project / f"{pair[0]}_s{pair[1]}")]
    if unfinished:
        logger.info("--rescore: not finished yet under %s, left for later: %s", args.project,
                    " ".join(f"{config}_s{seed}" for config, seed in unfinished))
    return [pair for pair in pending if pair not in unfinished]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="C-BBL vs CIoU on real VisDrone frames (resumable)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--img", type=int, default=640)
    parser.add_argument("--epochs", type=int, default=30, help="whole-frame epochs at 640 px; another --img or a "
                        "--tile trains the epochs of the same compute (images x network pixels)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tile", type=int, default=0, help="train on --tile windows (overlap 0.25), validated sliced "
                        "(0 = whole frames)")
    parser.add_argument("--rescore", choices=RESCORE, default="",
                        help="train nothing: score the finished runs of --project on --img slices of the full frames "
                             "(overlap 0.25), as --tile runs are scored, or on whole frames at --img")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at once (1 thread each)")
    parser.add_argument("--summary-only", action="store_true", help="train nothing: rewrite summary and plots")
    parser.add_argument("--gradient-share", action="store_true",
                        help="train nothing: the loss terms' gradient shares of each config's finished seed-0 run")
    parser.add_argument("--inference-cost", action="store_true",
                        help="train nothing: detect.py's time per frame with and without variance voting and the "
                             "quality branch, interleaved (inference_cost.csv)")
    parser.add_argument("--regimes", action="store_true",
                        help="train nothing: compare the REGIMES studies (whole frames at 640 and those runs "
                             "scored sliced, tiles at 640 and those runs scored on whole frames, whole frames at 1024; "
                             "--out/regimes.csv; with --inference-cost, their time per frame)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "visdrone_real")
    parser.add_argument("--work", type=Path, default=ROOT / "datasets" / "visdrone-real",
                        help="working copy of the frames (git-ignored)")
    parser.add_argument("--project", type=Path, default=None,
                        help="run folders (default runs/visdrone_real/<out>; with --rescore, the runs of the regime "
                             "it rescores)")
    args = parser.parse_args(argv)
    rescored = [regime.runs for regime in REGIMES.values() if args.rescore and regime.rescore == args.rescore]
    args.project = args.project or ROOT / "runs" / "visdrone_real" / (rescored[0] if rescored else args.out.name)
    args.train_epochs = args.epochs
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_start(logger, 1)
    if not FRAMES.is_dir() or not COCO_WEIGHTS.is_file():
        logger.error("needs the real frames and weights in %s (not shipped with the project)", SHARED)
        return 2
    if args.gradient_share:
        write_csv(args.out / "gradient_share.csv", gradient_share(args, prepare_data(args.work)))
        return 0
    if args.inference_cost:
        data = prepare_data(args.work)
        variants = regime_variants(args) if args.regimes else voting_variants(args)
        name = "regimes_inference_cost.csv" if args.regimes else "inference_cost.csv"
        write_csv(args.out / name, inference_cost(args, data, variants))
        return 0
    if args.regimes:
        table = compare_regimes(args, prepare_data(args.work))
        write_csv(args.out / "regimes.csv", table)
        cost = read_csv(args.out / "regimes_inference_cost.csv")  # [] until --regimes --inference-cost ran
        atomic_write_text(args.out / "regimes.md", regimes_markdown(table, cost))
        return 0
    if not args.summary_only:
        write_json(args.out / "settings.json", {"header": header_lines({k: str(v) for k, v in vars(args).items()})})
        data = prepare_data(args.work)
        args.train_epochs = matched_epochs(args, data)
        if args.train_epochs != args.epochs:
            logger.info("--img %d%s: %d epochs see the network pixels of %d whole-frame epochs at %d px", args.img,
                        f" --tile {args.tile}" if args.tile else "", args.train_epochs, args.epochs, BASE_IMG)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for future in [pool.submit(study_one, args, data, config, seed) for config, seed in pending_runs(args)]:
                future.result()
    summary = summarize(read_csv(args.out / "runs.csv"))
    write_csv(args.out / "summary.csv", summary)
    atomic_write_text(args.out / "summary.md", markdown_tables(summary))
    plot_results(args.out)
    for entry in summary:
        logger.info("%-11s n=%d  yolov5 mAP50-95 %s +- %s (t %s)  coco AP %s  visdrone AP %s", entry["config"],
                    entry["seeds_ok"], entry["yolov5_map50_95_mean"], entry["yolov5_map50_95_std"],
                    entry["yolov5_map50_95_t_vs_ciou"], entry["coco_ap_mean"], entry["visdrone_ap_mean"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
