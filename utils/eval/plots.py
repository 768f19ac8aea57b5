"""Validation plots: PR, F1, P and R curves and the confusion matrix, as PNG files (matplotlib, Agg)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from utils.eval.metrics import RECALL_POINTS, ConfusionMatrix, PRCurves
from utils.files import checked_savefig

logger = logging.getLogger(__name__)

# Above this many classes the legend lists only the mean curve.
MAX_LEGEND_CLASSES = 20


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
    """The (nc + 1)^2 matrix as a heat map, columns normalised to the true-class totals when ``normalize``."""
    plt = _pyplot()
    matrix = confusion.matrix.astype(np.float64)
    if normalize:
        matrix = matrix / np.maximum(matrix.sum(0, keepdims=True), 1)  # (nc+1, nc+1), columns sum to 1
    labels = list(names[: confusion.nc]) + ["background"]
    size = max(6, 0.4 * len(labels) + 3)
    fig, ax = plt.subplots(1, 1, figsize=(size, size * 0.8), tight_layout=True)
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax)
    ticks = np.arange(len(labels))
    show_labels = len(labels) <= MAX_LEGEND_CLASSES * 3
    ax.set_xticks(ticks, labels if show_labels else [], rotation=90)
    ax.set_yticks(ticks, labels if show_labels else [])
    ax.set(xlabel="True", ylabel="Predicted", title="Confusion matrix" + (" (normalised)" if normalize else ""))
    checked_savefig(fig, path, dpi=150)
    plt.close(fig)
    return path
