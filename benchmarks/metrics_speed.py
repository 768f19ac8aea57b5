"""Metric computation speed on a VisDrone-val-sized workload: 548 images x 500 detections, ~71 GTs each.

    python benchmarks/metrics_speed.py [--images 548] [--dets 500] [--gts 71] [--seed 0]

Times the COCO protocol (utils/eval/coco.evaluate and the full validator scoring) and the VisDrone
protocol (utils/eval/visdrone.evaluate, with ignored regions) on synthetic drone-like scenes: mostly
small boxes, detections jittered from the GTs plus clutter. Goal: each under 10 s on this CPU.
Prints the figures and writes benchmarks/results/metrics_speed.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.eval import coco as coco_eval
from utils.eval import visdrone as visdrone_eval  # noqa: E402
from utils.eval.metrics import BoxSet  # noqa: E402
from utils.eval.scoring import score_coco  # noqa: E402
from utils.log import setup_logging  # noqa: E402

logger = logging.getLogger("metrics_speed")
GOAL_S = 10.0
NUM_CLASSES = 10
IMAGE_HW = (1080, 1920)
CLUTTER_FRACTION = 0.4  # detections not drawn from any GT


def make_scene(num_images: int, dets_per_image: int, gts_per_image: int, seed: int) -> tuple[BoxSet, BoxSet]:
    """GTs (categories 1..10, 2 ignored regions per image) and detections (categories 1..10) in pixels."""
    rng = np.random.default_rng(seed)
    num_gt = rng.poisson(gts_per_image, num_images)
    gt_image = np.repeat(np.arange(num_images), num_gt)
    size = np.exp(rng.normal(np.log(22), 0.6, (len(gt_image), 2))).clip(4, 400)  # ~70% under 32 px
    top_left = rng.uniform(0, 1, (len(gt_image), 2)) * (np.array(IMAGE_HW[::-1]) - size)
    gt_boxes = np.c_[top_left, top_left + size]
    gt_cat = rng.integers(1, NUM_CLASSES + 1, len(gt_image))
    regions_image = np.repeat(np.arange(num_images), 2)
    region_xy = rng.uniform(0, 1500, (len(regions_image), 2))
    regions = np.c_[region_xy, region_xy + rng.uniform(50, 200, (len(regions_image), 2))]
    gts = BoxSet(np.r_[gt_image, regions_image], np.r_[gt_boxes, regions], np.r_[gt_cat, np.zeros(len(regions))],
                 ignore=np.r_[np.zeros(len(gt_image), bool), np.ones(len(regions), bool)])
    det_image = np.repeat(np.arange(num_images), dets_per_image)
    image_start = np.r_[0, np.cumsum(num_gt)[:-1]]
    source = image_start[det_image] + (rng.random(len(det_image)) * num_gt[det_image]).astype(np.int64)
    clutter = (rng.random(len(det_image)) < CLUTTER_FRACTION) | (num_gt[det_image] == 0)
    source = np.where(clutter, -1, source)  # (D,) the GT a detection was jittered from, -1 for clutter
    jitter = rng.normal(0, 0.12, (len(det_image), 4)) * np.tile(size[source], 2)
    det_boxes = np.where(source[:, None] >= 0, gt_boxes[source] + jitter,
                         np.tile(rng.uniform(0, 1800, (len(det_image), 2)), 2))
    det_boxes[:, 2:] = np.maximum(det_boxes[:, 2:], det_boxes[:, :2] + 3)  # clutter: small boxes
    det_cat = np.where(rng.random(len(det_image)) < 0.85, gt_cat[source], rng.integers(1, NUM_CLASSES + 1))
    dets = BoxSet(det_image, det_boxes, det_cat, score=rng.random(len(det_image)))
    return gts, dets


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=548)
    parser.add_argument("--dets", type=int, default=500)
    parser.add_argument("--gts", type=int, default=71)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "metrics_speed.json"))
    args = parser.parse_args()
    setup_logging()
    gts, dets = make_scene(args.images, args.dets, args.gts, args.seed)
    image_ids = np.arange(args.images)
    objects = gts.subset(gts.category > 0)
    coco_gts = BoxSet(objects.image, objects.boxes, objects.category - 1)
    coco_dets = BoxSet(dets.image, dets.boxes, dets.category - 1, score=dets.score)
    names = [f"class{i}" for i in range(NUM_CLASSES)]
    sizes = dict.fromkeys(range(args.images), IMAGE_HW)
    coco_s, coco = timed(coco_eval.evaluate, coco_gts, coco_dets, image_ids, np.arange(NUM_CLASSES), (1, 10, 100))
    scoring_s, _ = timed(score_coco, coco_dets, coco_gts, names, image_ids)
    visdrone_s, vis = timed(visdrone_eval.evaluate, gts, dets, image_ids, sizes)
    figures = {"images": args.images, "detections": len(dets), "ground_truths": len(objects),
               "small_fraction": float(np.mean(objects.area < 32**2)), "coco_evaluate_s": round(coco_s, 3),
               "coco_validator_scoring_s": round(scoring_s, 3), "visdrone_evaluate_s": round(visdrone_s, 3),
               "goal_s": GOAL_S, "coco_AP": coco.stats["AP"], "visdrone_AP": vis.stats["AP"],
               "machine": platform.processor() or platform.machine(), "python": platform.python_version()}
    for key, value in figures.items():
        logger.info("%-26s %s", key, value)
    within = max(coco_s, scoring_s, visdrone_s) < GOAL_S
    logger.info("goal (< %.0f s each): %s", GOAL_S, "met" if within else "MISSED")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
