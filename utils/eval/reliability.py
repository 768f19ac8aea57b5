"""How well the C-BBL uncertainty reads as expected IoU, measured by val.py on a validation set.

The map itself (entropy -> expected IoU, isotonic) is utils/cbbl/calibration.py. Reliability (predicted vs
measured IoU, binned) is scored out of fold: the images are split in two, each half is predicted by the map
fitted on the other, so the plot does not grade a map on the boxes it was fitted to.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from utils.cbbl.calibration import UncertaintyCalibration
from utils.eval.metrics import BoxSet
from utils.eval.yolov5 import pairwise_iou

RELIABILITY_BINS = 10  # equal-count bins of the predicted IoU in the plot and its CSV


def true_positive_ious(dets: BoxSet, gts: BoxSet, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, iou): the detections marked correct and each one's IoU with its best same-class ground truth."""
    rows = np.flatnonzero(correct)
    ious = np.zeros(len(rows))
    for image in np.unique(dets.image[rows]):
        in_image = rows[dets.image[rows] == image]
        targets = gts.image == image
        overlap = pairwise_iou(dets.boxes[in_image], gts.boxes[targets])  # (n, g)
        same_class = dets.category[in_image][:, None] == gts.category[targets][None, :]
        ious[np.searchsorted(rows, in_image)] = np.where(same_class, overlap, 0.0).max(1, initial=0.0)
    return rows, ious


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); nan below 3 points."""
    if len(a) < 3:
        return float("nan")
    return float(np.corrcoef(_average_ranks(np.asarray(a)), _average_ranks(np.asarray(b)))[0, 1])


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(sorted_values[1:] != sorted_values[:-1]) + 1]
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = np.repeat((starts + ends - 1) / 2.0, ends - starts)
    return ranks


def out_of_fold_expected_iou(entropy: np.ndarray, iou: np.ndarray, image: np.ndarray) -> Optional[np.ndarray]:
    """Each box's expected IoU from the map fitted on the other half of the images (even / odd image ids);
    None when a half has too few boxes to fit."""
    halves = image % 2 == 0
    predicted = np.zeros(len(entropy))
    for held_out in (halves, ~halves):
        calibration = UncertaintyCalibration.fit(entropy[~held_out], iou[~held_out])
        if calibration is None:
            return None
        predicted[held_out] = calibration.expected_iou(entropy[held_out])
    return predicted


def reliability_table(predicted: np.ndarray, measured: np.ndarray, bins: int = RELIABILITY_BINS) -> list[dict]:
    """Equal-count bins of ``predicted``: per bin its box count, mean predicted and mean measured IoU."""
    order = np.argsort(predicted, kind="stable")
    rows = []
    for members in np.array_split(order, min(bins, len(order))):
        if len(members):
            rows.append({"boxes": int(len(members)), "predicted_iou": round(float(predicted[members].mean()), 4),
                         "measured_iou": round(float(measured[members].mean()), 4)})
    return rows


def reliability_csv(table: list[dict]) -> str:
    """The table as CSV text (header, one row per bin)."""
    columns = ("boxes", "predicted_iou", "measured_iou")
    return "\n".join([",".join(columns)] + [",".join(str(row[c]) for c in columns) for row in table]) + "\n"


def expected_calibration_error(table: list[dict]) -> float:
    """Box-weighted mean |predicted - measured| over the bins of :func:`reliability_table`."""
    total = sum(row["boxes"] for row in table)
    return sum(row["boxes"] * abs(row["predicted_iou"] - row["measured_iou"]) for row in table) / max(total, 1)


def uncertainty_summary(dets: BoxSet, gts: BoxSet, state50: np.ndarray, entropy: np.ndarray) -> dict[str, Any]:
    """What val.py reports of a C-BBL model's uncertainty: the mean of its true and false positives (IoU .5),
    its rank correlation with 1 - IoU of the true positives, and, with enough of them, the out-of-fold
    reliability table, its calibration error, the rank correlation of the out-of-fold expected IoU with the
    measured one (the isotonic map can tie ranks, so it is measured, not assumed equal) and the map fitted on all
    of them (what a checkpoint stores)."""
    tp, fp = entropy[state50 == 1], entropy[state50 == 0]
    summary: dict[str, Any] = {"tp": float(tp.mean()) if len(tp) else float("nan"),
                               "fp": float(fp.mean()) if len(fp) else float("nan")}
    rows, ious = true_positive_ious(dets, gts, state50 == 1)
    summary["spearman_vs_1-iou"] = spearman(entropy[rows], 1 - ious)
    predicted = out_of_fold_expected_iou(entropy[rows], ious, dets.image[rows])
    if predicted is not None:
        summary["reliability"] = reliability_table(predicted, ious)
        summary["calibration_error"] = expected_calibration_error(summary["reliability"])
        summary["spearman_calibrated"] = spearman(predicted, ious)
        summary["calibration"] = UncertaintyCalibration.fit(entropy[rows], ious).to_dict()
    return summary
