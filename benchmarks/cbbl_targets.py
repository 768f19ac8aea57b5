"""Logit-space C-BBL targets t* of real VisDrone boxes: histograms and the fraction clamped at +-alpha.

Reads the official annotations of the shared VisDrone sample (training labels: categories 1..10, score 1),
letterboxes every image to --img (long side = img, padded square, no augmentation), assigns the boxes the
YOLOv5 way (utils.assign.assign_level, anchor_t 4) on the TPH-YOLOv5 levels (strides 4/8/16/32, 4 anchors
each) for two anchor sets: the repository's data-free defaults (utils.anchors.default_anchors, what
models/yolov5l-xs-tph.yaml gets without data) and k-means anchors fitted on these labels at that size
(utils.anchors.kmean_anchors, what train.py computes). Writes benchmarks/results/cbbl_targets_<img>.png
and benchmarks/results/cbbl_targets.json, and prints the figures.

    python benchmarks/cbbl_targets.py [--sizes 640 1536] [--alpha 4]
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, header_lines, write_json  # noqa: E402
from utils.anchors import default_anchors, kmean_anchors  # noqa: E402
from utils.assign import assign_level  # noqa: E402
from utils.cbbl import encode_offsets  # noqa: E402
from utils.data.visdrone import read_annotation, to_yolo_labels  # noqa: E402
from utils.head import HeadConfig  # noqa: E402
from utils.log import setup_logging  # noqa: E402

logger = logging.getLogger("cbbl_targets")
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "visdrone-sample"
TPH_STRIDES = torch.tensor([4.0, 8.0, 16.0, 32.0])
ANCHORS_PER_LEVEL = 4
ANCHOR_T = 4.0
COORDS = ("x", "y", "w", "h")


def load_sample(sample: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Per image (n, 5) normalised labels [cls, cx, cy, w, h] and (N, 2) original [w, h] (from manifest.csv)."""
    manifest = sample / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found: point --sample at the shared VisDrone sample")
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    labels, shapes = [], []
    for row in rows:
        width, height = int(row["width"]), int(row["height"])
        annotation = read_annotation(sample / "annotations" / f"{Path(row['file']).stem}.txt")
        labels.append(to_yolo_labels(annotation, width, height))
        shapes.append((width, height))
    return labels, np.array(shapes, dtype=np.float64)


def letterboxed_targets(labels: list[np.ndarray], shapes: np.ndarray, imgsz: int) -> torch.Tensor:
    """(M, 6) targets [img, cls, cx, cy, w, h] normalised to the padded imgsz x imgsz network input."""
    rows = []
    for index, (label, (width, height)) in enumerate(zip(labels, shapes)):
        gain = imgsz / max(width, height)
        pad = (imgsz - width * gain) / 2, (imgsz - height * gain) / 2
        boxes = label[:, 1:5] * np.array([width, height, width, height]) * gain  # (n, 4) cxcywh pixels
        boxes[:, 0] += pad[0]
        boxes[:, 1] += pad[1]
        rows.append(np.concatenate([np.full((len(label), 1), index), label[:, :1], boxes / imgsz], 1))
    return torch.tensor(np.concatenate(rows), dtype=torch.float32)


def offset_labels(targets: torch.Tensor, anchors_px: torch.Tensor, imgsz: int) -> tuple[torch.Tensor, int]:
    """Raw logit-space labels (P, 4) of all positives over the levels, and the number of unmatched GTs."""
    matched = torch.zeros(len(targets), dtype=torch.bool)
    labels = []
    for level, stride in enumerate(TPH_STRIDES.tolist()):
        grid = int(round(imgsz / stride))
        assigned = assign_level(targets, anchors_px[level] / stride, (grid, grid), ANCHOR_T)
        matched[assigned.gt] = True
        labels.append(encode_offsets(assigned.box[:, :2], assigned.box[:, 2:] / assigned.anchor_wh, "logit"))
    return torch.cat(labels), int((~matched).sum())


def anchor_sets(targets: torch.Tensor, imgsz: int) -> dict[str, torch.Tensor]:
    """(nl, A, 2) pixel anchors: the data-free defaults and k-means on these labels at this size."""
    wh = (targets[:, 4:6] * imgsz).numpy()
    fitted = kmean_anchors(wh, len(TPH_STRIDES) * ANCHORS_PER_LEVEL, thr=ANCHOR_T)  # sorted by area
    return {"default": default_anchors(TPH_STRIDES, ANCHORS_PER_LEVEL),
            "kmeans": torch.tensor(fitted, dtype=torch.float32).view(len(TPH_STRIDES), ANCHORS_PER_LEVEL, 2)}


def summarise(labels: torch.Tensor, unmatched: int, num_gt: int, alpha: float) -> dict:
    """Counts and clamped fractions (|t*| > alpha) per coordinate and overall."""
    beyond = labels.abs() > alpha  # (P, 4)
    summary = {"gt": num_gt, "gt_unmatched": unmatched, "gt_unmatched_frac": unmatched / max(num_gt, 1),
               "positives": len(labels), "clamped_frac": float(beyond.float().mean()) if len(labels) else 0.0}
    for index, name in enumerate(COORDS):
        summary[f"clamped_frac_{name}"] = float(beyond[:, index].float().mean()) if len(labels) else 0.0
        summary[f"min_{name}"] = float(labels[:, index].min()) if len(labels) else 0.0
    return summary


def plot(histograms: dict[str, torch.Tensor], imgsz: int, alpha: float, path: Path) -> None:
    """One panel per anchor set: histograms of the centre (x, y) and size (w, h) labels, +-alpha marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(histograms), figsize=(6 * len(histograms), 4), squeeze=False)
    bins = np.linspace(-2 * alpha, 2 * alpha, 81)
    for axis, (name, labels) in zip(axes[0], histograms.items()):
        clipped = labels.clamp(-2 * alpha, 2 * alpha).numpy()  # beyond the plot: piled on its ends
        axis.hist(clipped[:, :2].ravel(), bins=bins, alpha=0.6, label="centre x, y")
        axis.hist(clipped[:, 2:].ravel(), bins=bins, alpha=0.6, label="size w, h")
        for edge in (-alpha, alpha):
            axis.axvline(edge, color="k", linestyle="--", linewidth=1)
        clamped = float((labels.abs() > alpha).float().mean()) if len(labels) else 0.0
        axis.set_title(f"{name} anchors, img {imgsz}: {len(labels)} positives, {100 * clamped:.2f}% beyond +-{alpha:g}")
        axis.set_xlabel("logit-space label t*")
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[640, 1536])
    parser.add_argument("--alpha", type=float, default=HeadConfig.alpha)
    parser.add_argument("--sample", type=Path, default=SAMPLE)
    args = parser.parse_args()
    setup_logging(0)
    for line in header_lines({"sizes": args.sizes, "alpha": args.alpha, "sample": str(args.sample)}):
        logger.info(line)
    labels, shapes = load_sample(args.sample)
    results = {}
    for imgsz in args.sizes:
        targets = letterboxed_targets(labels, shapes, imgsz)
        histograms = {}
        for name, anchors in anchor_sets(targets, imgsz).items():
            offsets, unmatched = offset_labels(targets, anchors, imgsz)
            histograms[name] = offsets
            summary = summarise(offsets, unmatched, len(targets), args.alpha)
            summary["anchors_px"] = [[round(v, 1) for v in level.flatten().tolist()] for level in anchors]
            results[f"{imgsz}_{name}"] = summary
            logger.info("img %d %-7s anchors: %d GTs, %.1f%% unmatched, %d positives, %.2f%% of labels beyond "
                        "+-%g (x %.2f%%, y %.2f%%, w %.2f%%, h %.2f%%)", imgsz, name, summary["gt"],
                        100 * summary["gt_unmatched_frac"], summary["positives"], 100 * summary["clamped_frac"],
                        args.alpha, *(100 * summary[f"clamped_frac_{c}"] for c in COORDS))
        plot(histograms, imgsz, args.alpha, RESULTS_DIR / f"cbbl_targets_{imgsz}.png")
    path = write_json(RESULTS_DIR / "cbbl_targets.json", {"settings": {"sizes": args.sizes, "alpha": args.alpha},
                                                           "header": header_lines({}), "results": results})
    logger.info("wrote %s and cbbl_targets_<img>.png", path)


if __name__ == "__main__":
    main()
