"""Validation plots: PR, F1, P and R curves and the confusion matrix (PNG, matplotlib Agg), and batch mosaics
with labels or predictions drawn (JPEG; training's train_batch*.jpg and validation's val_batch*_{labels,pred}.jpg).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import cv2
import numpy as np
import torch

from utils.annotate import draw_detections
from utils.boxes import cxcywhn_to_xyxy
from utils.eval.metrics import RECALL_POINTS, ConfusionMatrix, PRCurves
from utils.files import checked_imwrite, checked_savefig

logger = logging.getLogger(__name__)

# Above this many classes the legend lists only the mean curve.
MAX_LEGEND_CLASSES = 20
MAX_MOSAIC_IMAGES = 16
MAX_MOSAIC_SIDE = 1280  # pixels: larger mosaics are scaled down to keep files small
MAX_ANNOTATED_CLASSES = 30  # confusion-matrix cells show their values below this many classes (YOLOv5's limit)
MIN_ANNOTATED_VALUE = 0.005  # smaller cells are left blank rather than shown as 0.00
MOSAIC_CONF = 0.25  # predictions drawn on val_batch*_pred.jpg have at least this confidence (as YOLOv5's)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _curve_figure(x: np.ndarray, ys: np.ndarray, labels: list[str], mean_label: str, xlabel: str, ylabel: str,
                  path: Path) -> None:
    """One PNG: a thin line per class (rows of ``ys`` (k, n)) and a thick mean line."""
    plt = _pyplot()
    fig, ax = plt.subplots(1, 1, figsize=(9, 6), tight_layout=True)
    show_legend = len(ys) <= MAX_LEGEND_CLASSES
    for row, label in zip(ys, labels):
        ax.plot(x, row, linewidth=1, label=label if show_legend else None)
    if len(ys):
        ax.plot(x, ys.mean(0), linewidth=3, color="blue", label=mean_label)
    ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    checked_savefig(fig, path, dpi=150)
    plt.close(fig)


def plot_curves(curves: PRCurves, names: list[str], save_dir: Path) -> list[Path]:
    """PR_curve.png, F1_curve.png, P_curve.png, R_curve.png in ``save_dir``; returns their paths."""
    labels = [names[c] if c < len(names) else str(c) for c in curves.classes]
    best = int(np.argmin(abs(curves.conf_points - curves.best_conf)))
    mean_f1 = curves.f1_curve.mean(0)[best] if len(curves.classes) else 0.0
    ap50 = curves.pr_curve.mean(1)  # (k,) 101-point AP50 per class
    pr_labels = [f"{label} {ap:.3f}" for label, ap in zip(labels, ap50)]
    outputs = {
        "PR_curve.png": (RECALL_POINTS, curves.pr_curve, pr_labels, f"all classes {ap50.mean() if len(ap50) else 0:.3f}"
                         " mAP@0.5", "Recall", "Precision"),
        "F1_curve.png": (curves.conf_points, curves.f1_curve, labels,
                         f"all classes {mean_f1:.2f} at {curves.best_conf:.3f}", "Confidence", "F1"),
        "P_curve.png": (curves.conf_points, curves.p_curve, labels, "all classes", "Confidence", "Precision"),
        "R_curve.png": (curves.conf_points, curves.r_curve, labels, "all classes", "Confidence", "Recall"),
    }
    paths = []
    for file_name, args in outputs.items():
        _curve_figure(*args, save_dir / file_name)
        paths.append(save_dir / file_name)
    return paths


def plot_confusion_matrix(confusion: ConfusionMatrix, names: list[str], path: Path, normalize: bool = True) -> Path:
    """The (nc + 1)^2 matrix as a heat map, columns normalised to the true-class totals when ``normalize``;
    below MAX_ANNOTATED_CLASSES classes each cell shows its value (blank under 0.005, as YOLOv5 leaves them)."""
    plt = _pyplot()
    matrix = confusion.matrix.astype(np.float64)
    if normalize:
        matrix = matrix / np.maximum(matrix.sum(0, keepdims=True), 1)  # (nc+1, nc+1), columns sum to 1
    matrix[matrix < MIN_ANNOTATED_VALUE] = np.nan  # blank, not "0.00"
    labels = list(names[: confusion.nc]) + ["background"]
    size = max(6, 0.4 * len(labels) + 3)
    fig, ax = plt.subplots(1, 1, figsize=(size, size * 0.8), tight_layout=True)
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax)
    ticks = np.arange(len(labels))
    show_labels = len(labels) <= MAX_LEGEND_CLASSES * 3
    ax.set_xticks(ticks, labels if show_labels else [], rotation=90)
    ax.set_yticks(ticks, labels if show_labels else [])
    if confusion.nc < MAX_ANNOTATED_CLASSES:
        for (row, col), value in np.ndenumerate(matrix):
            if not np.isnan(value):
                ax.text(col, row, f"{value:.2f}" if normalize else f"{value:.0f}", ha="center", va="center",
                        fontsize=8, color="white" if value > 0.5 * np.nanmax(matrix) else "black")
    ax.set(xlabel="True", ylabel="Predicted", title="Confusion matrix" + (" (normalised)" if normalize else ""))
    checked_savefig(fig, path, dpi=150)
    plt.close(fig)
    return path


def plot_batch(images: torch.Tensor, targets: torch.Tensor, names: Sequence[str], save_path: Union[str, Path],
               max_images: int = MAX_MOSAIC_IMAGES, conf_thres: float = MOSAIC_CONF) -> Path:
    """A grid of the batch's images with their boxes drawn, as JPEG.

    Args: images uint8 (B, 3, H, W) RGB; targets (M, 6) [image, class, cx, cy, w, h] normalised labels, or
    (M, 7) predictions with a confidence column (those under ``conf_thres`` are not drawn).
    """
    images = images[:max_images].detach().cpu()
    num_images, _, height, width = images.shape
    grid_side = math.ceil(math.sqrt(num_images))
    scale = min(1.0, MAX_MOSAIC_SIDE / (grid_side * max(height, width)))
    cell_h, cell_w = math.ceil(height * scale), math.ceil(width * scale)
    mosaic = np.full((grid_side * cell_h, grid_side * cell_w, 3), 255, dtype=np.uint8)
    targets = targets.detach().cpu().float()
    has_conf = targets.shape[1] > 6
    if has_conf:
        targets = targets[targets[:, 6] >= conf_thres]
    for index in range(num_images):
        image_bgr = np.ascontiguousarray(images[index].permute(1, 2, 0).numpy()[..., ::-1])  # (H, W, 3) BGR
        image_bgr = cv2.resize(image_bgr, (cell_w, cell_h), interpolation=cv2.INTER_AREA)
        rows = targets[targets[:, 0] == index]
        boxes = cxcywhn_to_xyxy(rows[:, 2:6], cell_w, cell_h)
        image_bgr = draw_detections(image_bgr, boxes, rows[:, 1].long(), rows[:, 6] if has_conf else None, names)
        top, left = (index // grid_side) * cell_h, (index % grid_side) * cell_w
        mosaic[top:top + cell_h, left:left + cell_w] = image_bgr
    return checked_imwrite(save_path, mosaic)


def plot_study(csv_path: Path, save_path: Path) -> Path:
    """study.png from val.py --task study's CSV: mAP50-95 against image size and against inference time."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    column = {name: np.array([float(row[name]) for row in rows]) for name in ("imgsz", "mAP50-95", "t_inference_ms")}
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), tight_layout=True)
    for axis, x, xlabel in ((axes[0], column["imgsz"], "image size (px)"),
                            (axes[1], column["t_inference_ms"], "inference (ms/img)")):
        axis.plot(x, column["mAP50-95"] * 100, ".-", linewidth=2, markersize=8)
        axis.set(xlabel=xlabel, ylabel="mAP50-95 (%)")
        axis.grid(alpha=0.2)
    checked_savefig(fig, save_path, dpi=200)
    plt.close(fig)
    return save_path


def plot_reliability(table: list[dict], calibration_error: float, path: Path, title: str = "") -> None:
    """Predicted vs measured IoU per bin (utils/eval/reliability.py's table), with the diagonal a calibrated
    model lies on."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(4.5, 4.5), tight_layout=True)
    axis.plot([0, 1], [0, 1], color="0.7", linestyle="--", label="calibrated")
    axis.plot([row["predicted_iou"] for row in table], [row["measured_iou"] for row in table], "o-",
              label=f"ECE {calibration_error:.3f}")
    axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted IoU (out of fold)", ylabel="measured IoU of the TPs",
             title=title or "C-BBL uncertainty reliability")
    axis.legend(loc="upper left")
    checked_savefig(figure, path, dpi=150)
    plt.close(figure)
