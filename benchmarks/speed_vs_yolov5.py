"""Speed against the reference implementation (Ultralytics' YOLOv5 from PyPI), same machine, one run.

    python benchmarks/speed_vs_yolov5.py                      # yolov5s and yolov5n, all tasks
    python benchmarks/speed_vs_yolov5.py --cfg yolov5n --tasks infer nms

Our side runs in this process; theirs runs in its own venv (``--ref-python``, see docs/benchmarks.md)
through benchmarks/_reference_yolov5.py, on the very same inputs written to a temp folder: training
batch, NMS candidates, predictions for the metrics, YOLO-format images for the loader. Prints a table
and writes benchmarks/results/speed_vs_yolov5.{csv,json}; ratio = ours / theirs (< 1: ours faster).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import speed_inputs  # noqa: E402
from benchmarks.common import RESULTS_DIR, header_lines, time_call, write_csv, write_json  # noqa: E402
from utils.head import HeadConfig  # noqa: E402
from utils.hyp import load_hyp  # noqa: E402
from utils.log import setup_logging  # noqa: E402

logger = logging.getLogger("benchmarks.speed_vs_yolov5")
ROOT = Path(__file__).resolve().parents[1]
REFERENCE_SCRIPT = Path(__file__).resolve().parent / "_reference_yolov5.py"
RESULT_PREFIX = "RESULT_JSON: "
NUM_CLASSES = 10  # VisDrone's
TASKS = ("train_step", "infer", "nms", "dataloader", "metrics")


def build_ours(cfg: str, box_loss: str, imgsz: int):
    """Our Model from models/<cfg>.yaml with the head the hyp asks for, and its hyp."""
    from models.yolo import Model

    hyp = load_hyp(None, box_loss=box_loss)
    torch.manual_seed(0)
    return Model(ROOT / "models" / f"{cfg}.yaml", nc=NUM_CLASSES, head=HeadConfig.from_hyp(hyp, imgsz)), hyp


def ours_train_step(args: argparse.Namespace, cfg: str, box_loss: str, channels_last: bool) -> dict:
    """Forward + loss + backward on the shared batch, as trainer.train_step does it (fp32 on CPU)."""
    from utils.loss import ComputeLoss

    batch = torch.load(args.inputs / "train_batch.pt", weights_only=True)
    model, hyp = build_ours(cfg, box_loss, args.img)
    criterion = ComputeLoss(model.train(), hyp, imgsz=args.img)
    images = batch["images"].float() / 255  # (B, 3, H, W)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss, _ = criterion(model(images), batch["targets"])
        loss.backward()

    return time_call(step, args.warmup, args.repeats)


def ours_infer(args: argparse.Namespace, cfg: str, box_loss: str, channels_last: bool) -> dict:
    """Batch-1 latency per size: eval, Conv+BN fused, inference_mode (as detect/val run the model)."""
    model, _ = build_ours(cfg, box_loss, args.img)
    model = model.fuse().eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    results = {}
    for size in args.infer_sizes:
        image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        if channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            results[str(size)] = time_call(lambda image=image: model(image), args.warmup, args.repeats)
    return results


def ours_nms(args: argparse.Namespace) -> dict:
    """utils.nms.non_max_suppression on the shared candidates, per named setting (val, detect)."""
    from utils.nms import non_max_suppression

    candidates = torch.load(args.inputs / "nms_candidates.pt", weights_only=True)
    settings = torch.load(args.inputs / "nms_settings.pt", weights_only=True)

    results = {}
    for name, setting in settings.items():
        def run(setting=setting) -> list:
            return non_max_suppression(candidates, nc=NUM_CLASSES, **setting)

        results[name] = {**time_call(run, args.warmup, args.repeats), "kept": int(run()[0].shape[0])}
    return results


def ours_dataloader(args: argparse.Namespace) -> dict:
    """Images per second through our mosaic training loader on the shared images (same hyps as theirs)."""
    from utils.data.augment import AugmentSettings
    from utils.data.dataset import create_dataloader

    loader, _ = create_dataloader(str(args.images), args.img, args.batch, 32, augmentation=AugmentSettings.from_hyp(),
                                  augment=True,
                                  workers=args.workers, shuffle=True, seed=0)
    return speed_inputs.drain_loader(loader, args.loader_batches)


def ours_metrics(args: argparse.Namespace) -> dict:
    """utils.eval.coco.evaluate (what our val reports: mAP50, mAP50-95, AP by area) on the shared predictions."""
    from utils.eval.coco import evaluate
    from utils.eval.metrics import BoxSet

    data = np.load(args.inputs / "metric_inputs.npz")
    preds, labels = data["preds"], data["labels"]  # (P, 7) [img, xyxy, conf, cls], (L, 6) [img, cls, xyxy]
    dets = BoxSet(preds[:, 0], preds[:, 1:5], preds[:, 6], score=preds[:, 5])
    gts = BoxSet(labels[:, 0], labels[:, 2:6], labels[:, 1])
    image_ids, categories = np.arange(int(data["num_images"])), np.arange(NUM_CLASSES)

    def run():
        return evaluate(gts, dets, image_ids, categories, max_dets=(1, 10, 300))

    timing = time_call(run, args.warmup, args.repeats)
    ap = run().class_ap()
    timing["map50_95"] = float(ap[ap > -1].mean())
    ap50 = run().class_ap(0)
    timing["map50"] = float(ap50[ap50 > -1].mean())
    return timing


def run_reference(args: argparse.Namespace, task: str, cfg: str) -> dict:
    """Run one task of _reference_yolov5.py in the reference venv; its RESULT_JSON line as a dict."""
    command = [str(args.ref_python), str(REFERENCE_SCRIPT), task, "--inputs", str(args.inputs), "--cfg", cfg,
               "--nc", str(NUM_CLASSES), "--img", str(args.img), "--batch", str(args.batch),
               "--sizes", *map(str, args.infer_sizes), "--images", str(args.images),
               "--batches", str(args.loader_batches), "--workers", str(args.workers),
               "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--threads", str(torch.get_num_threads())]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tempfile.gettempdir())
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise RuntimeError(f"reference task {task} ({cfg}) failed with exit code {done.returncode}:\n{tail}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def reference_version(ref_python: Path) -> str:
    """The installed version of the ``yolov5`` package in the reference venv."""
    done = subprocess.run([str(ref_python), "-c", "import importlib.metadata as m; print(m.version('yolov5'))"],
                          capture_output=True, text=True, cwd=tempfile.gettempdir())
    return done.stdout.strip() or f"unknown ({done.stderr.strip()[-200:]})"


def measure_model_tasks(args: argparse.Namespace, cfg: str) -> list[dict]:
    """Training step and inference rows for one architecture: theirs, ours regression, ours C-BBL."""
    rows = []
    variants = [(box_loss, layout) for layout in ((False, True) if args.channels_last else (False,))
                for box_loss in ("ciou", "cbbl")]
    if "train_step" in args.tasks:
        theirs = run_reference(args, "train_step", cfg)
        for box_loss, layout in variants:
            ours = ours_train_step(args, cfg, box_loss, layout)
            rows.append(_row(f"train_step b{args.batch} {args.img}px", cfg, box_loss, layout, ours, theirs))
    if "infer" in args.tasks:
        theirs_by_size = run_reference(args, "infer", cfg)
        for box_loss, layout in variants:
            ours_by_size = ours_infer(args, cfg, box_loss, layout)
            for size in map(str, args.infer_sizes):
                rows.append(_row(f"infer b1 {size}px", cfg, box_loss, layout, ours_by_size[size],
                                 theirs_by_size[size]))
    return rows


def _row(task: str, cfg: str, box_loss: str, channels_last: bool, ours: dict, theirs: dict, **extra) -> dict:
    """One result row from two timings (median_s, min_s); logs it at once with the 1-min load at that moment.

    The ratio of the minima is given too: on a shared CPU the minimum is the least disturbed repeat.
    """
    head = {"cbbl": "cbbl", "-": "-"}.get(box_loss, "regress")
    ours_s, theirs_s = ours["median_s"], theirs["median_s"]
    row = {"task": task, "model": cfg, "our_head": head, "channels_last": channels_last, "ours_s": round(ours_s, 5),
           "theirs_s": round(theirs_s, 5), "ratio_ours_theirs": round(ours_s / theirs_s, 3),
           "ours_min_s": round(ours["min_s"], 5), "theirs_min_s": round(theirs["min_s"], 5),
           "ratio_min": round(ours["min_s"] / theirs["min_s"], 3), "load_1min": round(os.getloadavg()[0], 2), **extra}
    logger.info("%-44s %-8s head=%-7s cl=%-5s ours %9.4f s  theirs %9.4f s  ratio %.3f  load %.1f", task, cfg, head,
                channels_last, ours_s, theirs_s, row["ratio_ours_theirs"], row["load_1min"])
    return row


def merge_rounds(rounds: list[list[dict]]) -> list[dict]:
    """One row per measurement over all rounds: min of the minima, median of the round medians, ratios of both.

    Each round times both sides of a task back to back, so a load change between rounds hits both.
    """
    merged = []
    for same in zip(*rounds):
        ours_s = statistics.median(row["ours_s"] for row in same)
        theirs_s = statistics.median(row["theirs_s"] for row in same)
        ours_min, theirs_min = min(row["ours_min_s"] for row in same), min(row["theirs_min_s"] for row in same)
        merged.append({**same[0], "rounds": len(same), "ours_s": ours_s, "theirs_s": theirs_s,
                       "ratio_ours_theirs": round(ours_s / theirs_s, 3), "ours_min_s": ours_min,
                       "theirs_min_s": theirs_min, "ratio_min": round(ours_min / theirs_min, 3),
                       "ratio_min_per_round": " ".join(str(row["ratio_min"]) for row in same),
                       "load_1min": " ".join(str(row["load_1min"]) for row in same)})
    return merged


def measure_shared_tasks(args: argparse.Namespace) -> list[dict]:
    """NMS, loader and metric rows (independent of the architecture)."""
    rows = []
    if "nms" in args.tasks:
        ours, theirs = ours_nms(args), run_reference(args, "nms", "yolov5s")
        for name in ours:
            rows.append(_row(f"nms {args.nms_candidates} rows, {name} settings", "-", "-", False,
                             ours[name], theirs[name], ours_kept=ours[name]["kept"],
                             theirs_kept=theirs[name]["kept"]))
    if "dataloader" in args.tasks:
        ours, theirs = ours_dataloader(args), run_reference(args, "dataloader", "yolov5s")
        ours_s, theirs_s = 1 / ours["images_per_s"], 1 / theirs["images_per_s"]
        rows.append(_row(f"dataloader mosaic b{args.batch} {args.img}px (s/image)", "-", "-", False,
                         {"median_s": ours_s, "min_s": ours_s}, {"median_s": theirs_s, "min_s": theirs_s},
                         ours_images_per_s=round(ours["images_per_s"], 2),
                         theirs_images_per_s=round(theirs["images_per_s"], 2)))
    if "metrics" in args.tasks:
        ours, theirs = ours_metrics(args), run_reference(args, "metrics", "yolov5s")
        rows.append(_row(f"metrics {args.metric_images} images", "-", "-", False, ours,
                         theirs, ours_map50=round(ours["map50"], 4), theirs_map50=round(theirs["map50"], 4),
                         ours_map50_95=round(ours["map50_95"], 4), theirs_map50_95=round(theirs["map50_95"], 4)))
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Speed of our detector against Ultralytics' YOLOv5 (PyPI)")
    parser.add_argument("--cfg", nargs="+", default=["yolov5s", "yolov5n"], help="architectures (models/<cfg>.yaml)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--img", type=int, default=640, help="training / loader image size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--infer-sizes", type=int, nargs="+", default=[640, 1536])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per side per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternate both sides this many times (shared CPU)")
    parser.add_argument("--nms-candidates", type=int, default=25200, help="rows of the candidate tensor (640 px)")
    parser.add_argument("--metric-images", type=int, default=500)
    parser.add_argument("--loader-batches", type=int, default=8)
    parser.add_argument("--channels-last", action="store_true", help="also time our model in channels-last layout")
    parser.add_argument("--workers", type=int, default=0, help="loader workers, same on both sides")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads on both sides (0 = torch's default); use 1 on a shared, busy CPU")
    parser.add_argument("--ref-python", type=Path, default=Path("/work/refenv/bin/python"),
                        help="python of the venv with `pip install yolov5`")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "speed_vs_yolov5")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.ref_python.is_file():
        logger.error("reference python %s not found: create it with `python -m venv --system-site-packages "
                     "/work/refenv && /work/refenv/bin/pip install yolov5` or pass --ref-python", args.ref_python)
        return 2
    settings = {"reference": f"yolov5 {reference_version(args.ref_python)} (PyPI), random weights from its YAMLs",
                **{key: str(value) for key, value in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="speed_vs_yolov5_") as tmp:
        args.inputs = Path(tmp)
        args.images = speed_inputs.write_all(args.inputs, args, NUM_CLASSES)
        rounds = []
        for index in range(args.rounds):
            logger.info("round %d of %d", index + 1, args.rounds)
            rows = measure_shared_tasks(args)
            for cfg in args.cfg:
                rows += measure_model_tasks(args, cfg)
            rounds.append(rows)
    rows = merge_rounds(rounds)
    for row in rows:
        logger.info("%-44s %-8s head=%-7s ours min %9.4f s  theirs min %9.4f s  ratio(min) %.3f  ratio(median) %.3f",
                    row["task"], row["model"], row["our_head"], row["ours_min_s"], row["theirs_min_s"],
                    row["ratio_min"], row["ratio_ours_theirs"])
    header = header_lines(settings)
    logger.info("\n".join(header))
    write_csv(args.out.with_suffix(".csv"), rows)
    write_json(args.out.with_suffix(".json"), {"header": header, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
