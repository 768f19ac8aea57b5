"""Training plots: results.png from results.csv, label statistics, and mosaics of training batches.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so importing this module changes
no global backend and it works headless.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import cv2
import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from utils.annotate import draw_detections
from utils.boxes import cxcywhn_to_xyxy
from utils.files import checked_imwrite, checked_savefig

logger = logging.getLogger(__name__)

MAX_MOSAIC_IMAGES = 16
MAX_MOSAIC_SIDE = 1280  # pixels: larger mosaics are scaled down to keep files small


def _save(figure: Figure, path: Union[str, Path]) -> Path:
    FigureCanvasAgg(figure)
    return checked_savefig(figure, path, dpi=150)


def plot_results(csv_path: Union[str, Path], save_path: Union[str, Path, None] = None) -> Path:
    """One panel per numeric results.csv column against epoch -> results.png next to the CSV.

    Raises ValueError naming the file when it has no rows.
    """
    csv_path = Path(csv_path)
    table = pd.read_csv(csv_path)
    table.columns = [column.strip() for column in table.columns]
    if table.empty or "epoch" not in table.columns:
        raise ValueError(f"{csv_path}: no epochs to plot (expected an 'epoch' column and at least one row)")
    columns = [c for c in table.columns if c != "epoch" and pd.api.types.is_numeric_dtype(table[c])]
    num_cols = 5
    num_rows = max(math.ceil(len(columns) / num_cols), 1)
    figure = Figure(figsize=(3 * num_cols, 2.5 * num_rows), tight_layout=True)
    for index, column in enumerate(columns):
        axis = figure.add_subplot(num_rows, num_cols, index + 1)
        axis.plot(table["epoch"], table[column], marker=".", linewidth=1.5)
        axis.set_title(column, fontsize=9)
    return _save(figure, save_path or csv_path.with_name("results.png"))


def plot_labels(labels: Sequence[np.ndarray], names: Sequence[str], save_path: Union[str, Path]) -> Path:
    """Label statistics: instances per class, box centres, and box width/height (normalised) histograms.

    Args: labels: per image (n, 5) [class, cx, cy, w, h] normalised. names: class names by id.
    """
    rows = [np.asarray(item, dtype=np.float64).reshape(-1, 5) for item in labels]
    all_labels = np.concatenate(rows, 0) if rows else np.zeros((0, 5))  # (M, 5)
    counts = np.bincount(all_labels[:, 0].astype(int), minlength=len(names))
    figure = Figure(figsize=(10, 8), tight_layout=True)
    axis = figure.add_subplot(2, 2, 1)
    axis.bar(range(len(counts)), counts)
    axis.set_xticks(range(len(counts)), [str(n) for n in list(names) + [""] * (len(counts) - len(names))],
                    rotation=90, fontsize=7)
    axis.set_ylabel("instances")
    axis = figure.add_subplot(2, 2, 2)
    axis.hist2d(all_labels[:, 1], all_labels[:, 2], bins=50, range=[[0, 1], [0, 1]], cmap="Blues")
    axis.set_xlabel("x")
    axis.set_ylabel("y")
    axis = figure.add_subplot(2, 2, 3)
    axis.hist2d(all_labels[:, 3], all_labels[:, 4], bins=50, cmap="Blues")
    axis.set_xlabel("width")
    axis.set_ylabel("height")
    axis = figure.add_subplot(2, 2, 4)
    axis.hist(np.sqrt(all_labels[:, 3] * all_labels[:, 4]), bins=50)
    axis.set_xlabel("sqrt(w*h) (fraction of the image)")
    return _save(figure, save_path)


def plot_batch(images: torch.Tensor, targets: torch.Tensor, names: Sequence[str], save_path: Union[str, Path],
               max_images: int = MAX_MOSAIC_IMAGES) -> Path:
    """A grid of the batch's images with their target boxes drawn, as JPEG.

    Args: images uint8 (B, 3, H, W) RGB; targets (M, 6) [image, class, cx, cy, w, h] normalised.
    """
    images = images[:max_images].detach().cpu()
    num_images, _, height, width = images.shape
    grid_side = math.ceil(math.sqrt(num_images))
    scale = min(1.0, MAX_MOSAIC_SIDE / (grid_side * max(height, width)))
    cell_h, cell_w = math.ceil(height * scale), math.ceil(width * scale)
    mosaic = np.full((grid_side * cell_h, grid_side * cell_w, 3), 255, dtype=np.uint8)
    targets = targets.detach().cpu()
    for index in range(num_images):
        image_bgr = np.ascontiguousarray(images[index].permute(1, 2, 0).numpy()[..., ::-1])  # (H, W, 3) BGR
        image_bgr = cv2.resize(image_bgr, (cell_w, cell_h), interpolation=cv2.INTER_AREA)
        rows = targets[targets[:, 0] == index]
        boxes = cxcywhn_to_xyxy(rows[:, 2:6], cell_w, cell_h)
        image_bgr = draw_detections(image_bgr, boxes, rows[:, 1].long(), None, names)
        top, left = (index // grid_side) * cell_h, (index % grid_side) * cell_w
        mosaic[top:top + cell_h, left:left + cell_w] = image_bgr
    return checked_imwrite(save_path, mosaic)
