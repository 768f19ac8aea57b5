"""Training hooks that record the run: results.csv, TensorBoard (when installed) and plots.

results.csv has one row per completed epoch (0-based ``epoch`` column). Rows are appended and
fsynced; on resume, rows from the resumed epoch on (and any half-written line) are dropped first,
so a killed and resumed run has no gaps and no duplicates.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from utils.engine.hooks import Hook
from utils.engine.plots import plot_batch, plot_labels, plot_results
from utils.files import append_csv_rows, atomic_write_text

logger = logging.getLogger(__name__)

NUM_BATCH_PLOTS = 3  # train_batch0..2.jpg: the first batches show what augmentation produced
EXCLUDED_COLUMNS = ("fitness",)  # kept in the metrics dict for hooks, not a YOLOv5 results.csv column
COLUMN_GROUPS = ("metrics/", "val/", "lr/", "diag/")  # YOLOv5's column order, then our diagnostics


def epoch_row(trainer: Any) -> dict[str, float]:
    """The results.csv row of the epoch just finished: epoch, train losses, then the hooks' metrics."""
    row: dict[str, float] = {"epoch": trainer.epoch}
    row.update({f"train/{term}_loss": value for term, value in trainer.mean_losses.items()})
    for prefix in COLUMN_GROUPS:
        row.update({key: value for key, value in trainer.metrics.items() if key.startswith(prefix)})
    row.update({key: value for key, value in trainer.metrics.items() if key not in row and key not in EXCLUDED_COLUMNS})
    return row


def truncate_results(path: Path, first_dropped_epoch: int) -> int:
    """Keep the header and complete rows with epoch < ``first_dropped_epoch``; returns the rows kept.

    Rewritten through a temporary file and a rename, so a kill here loses nothing.
    """
    if not path.is_file():
        return 0
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        return 0
    header, kept = rows[0], []
    for row in rows[1:]:
        if len(row) == len(header) and row[0].strip().isdigit() and int(row[0]) < first_dropped_epoch:
            kept.append(row)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *kept])
    atomic_write_text(path, buffer.getvalue())
    return len(kept)


class ResultsCsvHook(Hook):
    """Append one row per epoch to results.csv; the header is fixed by the first row written."""

    name = "results_csv"

    def __init__(self, path: Path):
        self.path = Path(path)

    def before_train(self, trainer: Any) -> None:
        if trainer.start_epoch > 0:
            kept = truncate_results(self.path, trainer.start_epoch)
            logger.info("resuming %s after %d complete epoch row(s)", self.path, kept)
        else:
            self.path.unlink(missing_ok=True)

    def after_epoch(self, trainer: Any) -> None:
        row = epoch_row(trainer)
        existing = self._header()
        header = existing or list(row)
        values = [_format(row.get(column, "")) for column in header]
        append_csv_rows(self.path, [values] if existing else [header, values])

    def _header(self) -> Optional[list[str]]:
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return None
        with open(self.path, newline="", encoding="utf-8") as f:
            return next(csv.reader(f), None)


def _format(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


class TensorBoardHook(Hook):
    """Scalars of each epoch row to TensorBoard, when ``torch.utils.tensorboard`` can be imported."""

    name = "tensorboard"

    def __init__(self, log_dir: Path):
        self.log_dir, self.writer = Path(log_dir), None

    def before_train(self, trainer: Any) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: the CSV still has everything
            logger.info("TensorBoard not installed; skipping its logs (pip install tensorboard)")
            return
        self.writer = SummaryWriter(str(self.log_dir))
        logger.info("TensorBoard: tensorboard --logdir %s", self.log_dir.parent)

    def after_epoch(self, trainer: Any) -> None:
        if self.writer is not None:
            for key, value in epoch_row(trainer).items():
                if key != "epoch":
                    self.writer.add_scalar(key, value, trainer.epoch)

    def after_train(self, trainer: Any) -> None:
        if self.writer is not None:
            self.writer.close()


class PlotsHook(Hook):
    """labels.jpg before training, train_batch{0,1,2}.jpg from the first batches, results.png at the end."""

    name = "plots"

    def __init__(self, save_dir: Path, names: Sequence[str], labels: Sequence[Any]):
        self.save_dir, self.names, self.labels = Path(save_dir), list(names), labels

    def before_train(self, trainer: Any) -> None:
        if trainer.start_epoch == 0:
            plot_labels(self.labels, self.names, self.save_dir / "labels.jpg")

    def after_step(self, trainer: Any) -> None:
        batch_index = trainer.iteration - trainer.start_epoch * trainer.num_batches
        if batch_index < NUM_BATCH_PLOTS:
            images, targets, _paths = trainer.batch
            plot_batch(images, targets, self.names, self.save_dir / f"train_batch{batch_index}.jpg")

    def after_train(self, trainer: Any) -> None:
        csv_path = self.save_dir / "results.csv"
        if csv_path.is_file() and csv_path.stat().st_size:
            plot_results(csv_path)
