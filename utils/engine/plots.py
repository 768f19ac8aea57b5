"""Training plots: results.png from results.csv and label statistics (batch mosaics: utils/eval/plots.py).

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so importing this module changes
no global backend and it works headless.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from utils.files import checked_savefig

logger = logging.getLogger(__name__)

# results.png panels in YOLOv5's order (its plot_results draws columns 1-5, 8-10, 6-7 of results.csv).
RESULTS_PANELS = ("train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
                  "val/box_loss", "val/obj_loss", "val/cls_loss", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95")
SMOOTH_SIGMA = 3.0  # epochs: YOLOv5's smoothing line (gaussian_filter1d(y, sigma=3))


def _save(figure: Figure, path: Union[str, Path], dpi: int = 200) -> Path:
    FigureCanvasAgg(figure)
    return checked_savefig(figure, path, dpi=dpi)


def gaussian_smooth(values: np.ndarray, sigma: float = SMOOTH_SIGMA, truncate: float = 4.0) -> np.ndarray:
    """1-D Gaussian smoothing with mirrored ends: the dotted 'smooth' line YOLOv5 draws on results.png
    (scipy's ``gaussian_filter1d`` with its defaults, without needing scipy). A NaN (an epoch without
    validation) makes its neighbours within the kernel NaN too, so those points are simply not drawn."""
    values = np.asarray(values, dtype=np.float64)
    radius = int(truncate * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    if values.size == 0:
        return values
    cycle = np.r_[np.arange(values.size), np.arange(values.size)[::-1]]  # a b c | c b a, repeated as needed
    padded = values[cycle[np.arange(-radius, values.size + radius) % (2 * values.size)]]
    return np.convolve(padded, kernel, mode="valid")


def _read_results(csv_path: Path) -> pd.DataFrame:
    """results.csv (YOLOv5's padded fields) as a table; ValueError naming the file when it has no rows."""
    table = pd.read_csv(csv_path, skipinitialspace=True)
    table.columns = [column.strip() for column in table.columns]
    if table.empty or "epoch" not in table.columns:
        raise ValueError(f"{csv_path}: no epochs to plot (expected an 'epoch' column and at least one row)")
    return table


def _panel(figure: Figure, rows: int, cols: int, index: int, table: pd.DataFrame, column: str) -> None:
    axis = figure.add_subplot(rows, cols, index + 1)
    values = table[column].to_numpy(dtype=np.float64)
    axis.plot(table["epoch"], values, marker=".", label="results", linewidth=2, markersize=8)
    axis.plot(table["epoch"], gaussian_smooth(values), ":", label="smooth", linewidth=2)
    axis.set_title(column, fontsize=12)
    if index == 1:  # YOLOv5 puts the legend on its second panel
        axis.legend()


def plot_results(csv_path: Union[str, Path], save_path: Union[str, Path, None] = None) -> Path:
    """results.png as YOLOv5 draws it: its ten panels (losses, P, R, val losses, mAPs) over epochs, each with
    a dotted Gaussian-smoothed line. Our extra columns (LRs, AP_small, diag/*) go to results_diagnostics.png.

    Raises ValueError naming the file when it has no rows.
    """
    csv_path = Path(csv_path)
    table = _read_results(csv_path)
    figure = Figure(figsize=(12, 6), tight_layout=True)
    for index, column in enumerate(RESULTS_PANELS):
        if column in table.columns:
            _panel(figure, 2, 5, index, table, column)
    save_path = _save(figure, save_path or csv_path.with_name("results.png"))
    extras = [c for c in table.columns if c not in ("epoch", *RESULTS_PANELS)
              and pd.api.types.is_numeric_dtype(table[c])]
    if extras:
        plot_diagnostics(table, extras, save_path.with_name(f"{save_path.stem}_diagnostics.png"))
    return save_path


def plot_diagnostics(table: pd.DataFrame, columns: Sequence[str], save_path: Union[str, Path]) -> Path:
    """One panel per extra results.csv column, five to a row, in their own figure."""
    num_cols = 5
    num_rows = math.ceil(len(columns) / num_cols)
    figure = Figure(figsize=(3 * num_cols, 2.5 * num_rows), tight_layout=True)
    for index, column in enumerate(columns):
        axis = figure.add_subplot(num_rows, num_cols, index + 1)
        axis.plot(table["epoch"], table[column], marker=".", linewidth=1.5)
        axis.set_title(column, fontsize=9)
    return _save(figure, save_path)


def plot_labels(labels: Sequence[np.ndarray], names: Sequence[str], save_path: Union[str, Path]) -> Path:
    """Label statistics: instances per class, box centres, and box width/height (normalised) histograms.

    Args: labels: per image (n, 5) [class, cx, cy, w, h] normalised. names: class names by id.
    """
    all_labels = _stack_labels(labels)  # (M, 5)
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


def plot_label_correlogram(labels: Sequence[np.ndarray], save_path: Union[str, Path], bins: int = 50) -> Path:
    """labels_correlogram.jpg as YOLOv5 draws it (a corner pair plot of box x, y, width, height): histograms
    on the diagonal, 2-D histograms below it. Args: labels per image (n, 5) [class, cx, cy, w, h] normalised."""
    boxes = _stack_labels(labels)[:, 1:]  # (M, 4)
    names = ("x", "y", "width", "height")
    figure = Figure(figsize=(8, 8), tight_layout=True)
    for row in range(4):
        for col in range(row + 1):
            axis = figure.add_subplot(4, 4, row * 4 + col + 1)
            if row == col:
                axis.hist(boxes[:, col], bins=bins, range=(0, 1), color="tab:blue")
            else:
                axis.hist2d(boxes[:, col], boxes[:, row], bins=bins, range=[[0, 1], [0, 1]], cmap="Blues", cmin=1)
            axis.set_xlabel(names[col] if row == 3 else "")
            axis.set_ylabel(names[row] if col == 0 else "")
    return _save(figure, save_path)


def _stack_labels(labels: Sequence[np.ndarray]) -> np.ndarray:
    """Per-image (n, 5) label arrays -> one (M, 5) float64 array."""
    rows = [np.asarray(item, dtype=np.float64).reshape(-1, 5) for item in labels]
    return np.concatenate(rows, 0) if rows else np.zeros((0, 5))
