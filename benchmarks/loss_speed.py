"""Cost of the C-BBL box term against the CIoU term on the same batch (issue 4 goal: C-BBL <= 1.10x CIoU).

Builds a Detect head (3 levels, strides 8/16/32, YOLOv5 anchors) on a synthetic batch at --img with
VisDrone-like boxes (log-uniform 4..200 px), assigns once, then times forward + backward of
``ComputeLoss.box_term`` on the same positives for each box-loss mode, and the whole loss call as well,
modes interleaved round by round (the machine may be shared); ratios to CIoU use the minimum over rounds
(the least disturbed figure) and, as a check, the medians.
Prints the figures and writes benchmarks/results/loss_speed.json.

    python benchmarks/loss_speed.py [--img 640] [--batch 8] [--objects 70] [--repeats 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, header_lines, write_json  # noqa: E402
from models.detect import Detect  # noqa: E402
from utils.assign import assign_level  # noqa: E402
from utils.head import HeadConfig  # noqa: E402
from utils.hyp import load_hyp  # noqa: E402
from utils.log import setup_logging  # noqa: E402
from utils.loss import ComputeLoss, LossSettings  # noqa: E402

logger = logging.getLogger("loss_speed")
YOLOV5_ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]
STRIDES = (8.0, 16.0, 32.0)
NUM_CLASSES = 10
MODES = ("ciou", "l1", "smooth_l1", "cbbl")


class HeadOnly(nn.Module):
    """Just a Detect head: the loss only reads ``model.detect``."""

    def __init__(self, head: dict):
        super().__init__()
        self.detect = Detect(NUM_CLASSES, YOLOV5_ANCHORS, [1] * len(STRIDES), head)
        self.detect.set_stride(torch.tensor(STRIDES))


def synthetic_targets(batch: int, objects: int, imgsz: int, seed: int = 0) -> torch.Tensor:
    """(batch*objects, 6) targets, box sides log-uniform in 4..200 px, centres uniform."""
    generator = torch.Generator().manual_seed(seed)
    count = batch * objects
    sides = torch.exp(torch.empty(count, 2).uniform_(1.386, 5.298, generator=generator)) / imgsz  # ln 4 .. ln 200
    centres = torch.rand(count, 2, generator=generator)
    image_idx = torch.arange(batch).repeat_interleave(objects).float()
    classes = torch.randint(0, NUM_CLASSES, (count,), generator=generator).float()
    return torch.cat([image_idx[:, None], classes[:, None], centres, sides], 1)


def mode_steps(mode: str, args: argparse.Namespace, targets: torch.Tensor) -> tuple[int, Callable, Callable]:
    """(level-0 positives, box-term step, whole-loss step) for one mode; each step is forward + backward."""
    hyp = load_hyp(box_loss=mode)
    model = HeadOnly(HeadConfig.from_hyp(hyp, args.img))
    loss_fn = ComputeLoss(model, LossSettings.from_hyp(hyp), args.img)
    detect = model.detect
    generator = torch.Generator().manual_seed(1)
    preds = [torch.randn(args.batch, detect.na, args.img // int(s), args.img // int(s), detect.no,
                         generator=generator).requires_grad_() for s in STRIDES]
    assigned = assign_level(targets, detect.anchors[0], tuple(preds[0].shape[2:4]), hyp.anchor_t)
    raw_box = torch.randn(len(assigned.gt), detect.box_channels, generator=generator).requires_grad_()

    def box_step() -> None:
        raw_box.grad = None
        _, loss = loss_fn.box_term(raw_box, assigned)
        loss.backward()

    def full_step() -> None:
        for pred in preds:
            pred.grad = None  # a training step hands the gradient on; it never accumulates a head-sized buffer
        total, _ = loss_fn(preds, targets)
        total.backward()

    return len(assigned.gt), box_step, full_step


def interleaved_ms(steps: dict[str, Callable], repeats: int) -> dict[str, list[float]]:
    """Milliseconds per call of each step, modes interleaved round by round so load changes hit all alike."""
    times: dict[str, list[float]] = {mode: [] for mode in steps}
    for round_idx in range(repeats + 2):
        for mode, step in steps.items():
            start = time.perf_counter()
            step()
            if round_idx >= 2:  # two warm-up rounds
                times[mode].append(1e3 * (time.perf_counter() - start))
    return times


def summarise(box_ms: dict[str, list[float]], full_ms: dict[str, list[float]], positives: int) -> list[dict]:
    """Per mode: min and median ms, and ratios to CIoU (of the mins: the least disturbed by a shared machine)."""
    rows = []
    for mode in box_ms:
        row = {"mode": mode, "positives_level0": positives}
        for name, times in (("box_term", box_ms), ("full_loss", full_ms)):
            row[f"{name}_min_ms"], row[f"{name}_median_ms"] = min(times[mode]), statistics.median(times[mode])
            row[f"{name}_vs_ciou"] = min(times[mode]) / min(times["ciou"])
            row[f"{name}_median_vs_ciou"] = statistics.median(times[mode]) / statistics.median(times["ciou"])
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img", type=int, default=640)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--objects", type=int, default=70, help="ground truths per image (VisDrone mean ~71)")
    parser.add_argument("--repeats", type=int, default=200, help="rounds of the box-term timing (whole loss: /10)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    setup_logging(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = vars(args)
    for line in header_lines(settings):
        logger.info(line)
    targets = synthetic_targets(args.batch, args.objects, args.img)
    built = {mode: mode_steps(mode, args, targets) for mode in MODES}
    box_ms = interleaved_ms({mode: steps[1] for mode, steps in built.items()}, args.repeats)
    full_ms = interleaved_ms({mode: steps[2] for mode, steps in built.items()}, max(3, args.repeats // 10))
    rows = summarise(box_ms, full_ms, built["ciou"][0])
    for row in rows:
        logger.info("%-9s P=%d box term min %.3f ms (%.2fx CIoU; medians %.2fx)  whole loss min %.1f ms (%.2fx; "
                    "medians %.2fx)", row["mode"], row["positives_level0"], row["box_term_min_ms"],
                    row["box_term_vs_ciou"], row["box_term_median_vs_ciou"], row["full_loss_min_ms"],
                    row["full_loss_vs_ciou"], row["full_loss_median_vs_ciou"])
    goal = "cbbl box_term_vs_ciou <= 1.10 (ratio of minimum times)"
    path = write_json(RESULTS_DIR / "loss_speed.json",
                      {"settings": settings, "header": header_lines({}), "rows": rows, "goal": goal})
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
