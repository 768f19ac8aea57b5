"""Training hooks that record the run: results.csv, TensorBoard events and plots, in the run folder.

results.csv has one row per completed epoch (0-based ``epoch`` column) in YOLOv5 v7.0's layout: its
14 columns first, in its order and names, each field right-aligned in 20 characters (``%20s`` names,
``%20.5g`` values), so YOLOv5's positional ``plot_results`` and scripts reading ``x/lr0`` work; our
extras (``metrics/AP_small``, ``diag/*``) follow. Rows are appended and fsynced; on resume, rows from
the resumed epoch on (and any half-written line) are dropped first, so a killed and resumed run has
no gaps and no duplicates.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import cv2

from utils.engine.plots import plot_label_correlogram, plot_labels, plot_results
from utils.engine.trainer import Hook, Trainer
from utils.eval.plots import plot_batch
from utils.files import append_text, atomic_write_text

logger = logging.getLogger(__name__)

# Plots logged to TensorBoard as images at the end of training (YOLOv5's list, plus our diagnostics figure).
TENSORBOARD_IMAGES = ("results.png", "results_diagnostics.png", "confusion_matrix.png", "F1_curve.png",
                      "PR_curve.png", "P_curve.png", "R_curve.png")
NUM_BATCH_PLOTS = 3  # train_batch0..2.jpg: the first batches show what augmentation produced
EXCLUDED_COLUMNS = ("fitness",)  # kept in the metrics dict for hooks, not a YOLOv5 results.csv column
# YOLOv5 v7.0's results.csv columns, in order: 'epoch' + Loggers.keys in utils/loggers/__init__.py
# (https://github.com/ultralytics/yolov5/blob/v7.0/utils/loggers/__init__.py).
YOLOV5_COLUMNS = ("epoch", "train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision",
                  "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss",
                  "val/cls_loss", "x/lr0", "x/lr1", "x/lr2")
YOLOV5_GROUPS = ("train/", "metrics/", "val/", "x/")  # extras in these groups come before ours (diag/*)
FIELD_WIDTH = 20  # YOLOv5 writes '%20s,' names and '%20.5g,' values


def epoch_row(trainer: Trainer) -> dict[str, float]:
    """The results.csv row of the epoch just finished: YOLOv5's columns (NaN when absent), then our extras."""
    values: dict[str, float] = {"epoch": trainer.epoch}
    values.update({f"train/{term}_loss": value for term, value in trainer.mean_losses.items()})
    values.update({key: value for key, value in trainer.metrics.items() if key not in EXCLUDED_COLUMNS})
    row = {column: values.pop(column, math.nan) for column in YOLOV5_COLUMNS}
    extras = sorted(values, key=lambda key: not key.startswith(YOLOV5_GROUPS))  # e.g. metrics/AP_small before diag/*
    return {**row, **{key: values[key] for key in extras}}


def read_results(path: Path) -> tuple[list[str], list[list[str]]]:
    """results.csv -> (column names, rows of fields), both with YOLOv5's padding stripped."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [[field.strip() for field in row] for row in csv.reader(f)]
    return (rows[0], rows[1:]) if rows else ([], [])


def format_line(fields: Sequence[Any]) -> str:
    """One results.csv line as YOLOv5 writes it: each field right-aligned in FIELD_WIDTH characters."""
    return ",".join(f"{field:>{FIELD_WIDTH}.5g}" if isinstance(field, (int, float)) else f"{field:>{FIELD_WIDTH}}"
                    for field in fields) + "\n"


def truncate_results(path: Path, first_dropped_epoch: int) -> int:
    """Keep the header and complete rows with epoch < ``first_dropped_epoch``; returns the rows kept.

    Rewritten through a temporary file and a rename, so a kill here loses nothing.
    """
    if not path.is_file():
        return 0
    header, rows = read_results(path)
    if not header:
        return 0
    kept = [row for row in rows
            if len(row) == len(header) and row[0].isdigit() and int(row[0]) < first_dropped_epoch]
    atomic_write_text(path, "".join(format_line(row) for row in [header, *kept]))
    return len(kept)


class ResultsCsvHook(Hook):
    """Append one row per epoch to results.csv; the header is fixed by the first row written."""

    name = "results_csv"

    def __init__(self, path: Path):
        self.path = Path(path)

    def before_train(self, trainer: Trainer) -> None:
        if trainer.start_epoch > 0:
            kept = truncate_results(self.path, trainer.start_epoch)
            logger.info("resuming %s after %d complete epoch row(s)", self.path, kept)
        else:
            self.path.unlink(missing_ok=True)

    def after_epoch(self, trainer: Trainer) -> None:
        row = epoch_row(trainer)
        existing = self._header()
        header = existing or list(row)
        lines = [] if existing else [format_line(header)]
        append_text(self.path, "".join([*lines, format_line([row.get(column, math.nan) for column in header])]))

    def _header(self) -> Optional[list[str]]:
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return None
        return read_results(self.path)[0] or None


class TensorBoardHook(Hook):
    """TensorBoard events in the run folder, as YOLOv5 writes them: each epoch's results.csv values as
    scalars, and at the end the result plots as images (``tensorboard --logdir runs/train``)."""

    name = "tensorboard"

    def __init__(self, log_dir: Path):
        self.log_dir, self.writer = Path(log_dir), None

    def before_train(self, trainer: Trainer) -> None:
        try:  # a dependency (requirements.txt), but a missing one must not stop training
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.warning("TensorBoard not installed; no events written (pip install tensorboard)")
            return
        self.writer = SummaryWriter(str(self.log_dir))
        logger.info("TensorBoard: tensorboard --logdir %s, view at http://localhost:6006/", self.log_dir.parent)

    def after_epoch(self, trainer: Trainer) -> None:
        if self.writer is not None:
            for key, value in epoch_row(trainer).items():
                if key != "epoch":
                    self.writer.add_scalar(key, value, trainer.epoch)

    def after_train(self, trainer: Trainer) -> None:
        if self.writer is None:
            return
        for name in TENSORBOARD_IMAGES:
            path = self.log_dir / name  # absent with --noplots or --noval
            image = cv2.imread(str(path)) if path.is_file() else None
            if image is not None:
                self.writer.add_image(Path(name).stem, image[..., ::-1], trainer.epoch, dataformats="HWC")
        self.writer.close()


class PlotsHook(Hook):
    """labels.jpg and labels_correlogram.jpg before training, train_batch{0,1,2}.jpg from the first batches,
    results.png (and results_diagnostics.png) at the end."""

    name = "plots"

    def __init__(self, save_dir: Path, names: Sequence[str], labels: Sequence[Any]):
        self.save_dir, self.names, self.labels = Path(save_dir), list(names), labels

    def before_train(self, trainer: Trainer) -> None:
        if trainer.start_epoch == 0:
            plot_labels(self.labels, self.names, self.save_dir / "labels.jpg")
            plot_label_correlogram(self.labels, self.save_dir / "labels_correlogram.jpg")

    def after_step(self, trainer: Trainer) -> None:
        batch_index = trainer.iteration - trainer.start_epoch * trainer.num_batches
        if batch_index < NUM_BATCH_PLOTS:
            images, targets, _paths = trainer.batch
            plot_batch(images, targets, self.names, self.save_dir / f"train_batch{batch_index}.jpg")

    def after_train(self, trainer: Trainer) -> None:
        csv_path = self.save_dir / "results.csv"
        if csv_path.is_file() and csv_path.stat().st_size:
            plot_results(csv_path)
