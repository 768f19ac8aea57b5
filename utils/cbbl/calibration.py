"""The C-BBL uncertainty as the expected IoU of a box with its object: an isotonic map fitted by val.py.

The head's raw uncertainty (mean entropy of the four side distributions, in nats) ranks boxes by how well they
are placed but has no unit. Expected IoU has one, and the one YOLOv5 users think in: objectness is trained
towards IoU and AP counts a box at IoU 0.5 .. 0.95, so "expected IoU 0.62" says whether a box clears a
threshold (a corner error in pixels would not: the same error is fatal to a 10 px pedestrian and harmless to a
bus). The map is the isotonic (monotone non-increasing) regression of true positives' measured IoU on their
entropy: no parametric form assumed, order kept. Training fits it on its final validation and stores it in
best.pt under CHECKPOINT_KEY; detect.py, the hub model and exports then report expected IoU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

CHECKPOINT_KEY = "uncertainty_calibration"
MIN_CALIBRATION_BOXES = 20  # fewer true positives than this: no map (the column stays raw entropy)


def isotonic_non_increasing(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool-adjacent-violators fit of y on x, non-increasing in x: (knots_x, knots_y), one knot per block
    (the block's mean x and mean y), knots_x increasing, knots_y non-increasing."""
    order = np.argsort(x, kind="stable")
    means_x, means_y, weights = [], [], []
    for value_x, value_y in zip(np.asarray(x, float)[order], np.asarray(y, float)[order]):
        means_x.append(value_x)
        means_y.append(value_y)
        weights.append(1.0)
        while len(means_y) > 1 and means_y[-2] < means_y[-1]:  # a rise violates non-increasing: pool
            weight = weights[-2] + weights[-1]
            means_x[-2] = (means_x[-2] * weights[-2] + means_x[-1] * weights[-1]) / weight
            means_y[-2] = (means_y[-2] * weights[-2] + means_y[-1] * weights[-1]) / weight
            weights[-2] = weight
            del means_x[-1], means_y[-1], weights[-1]
    return np.array(means_x), np.array(means_y)


@dataclass(frozen=True)
class UncertaintyCalibration:
    """Entropy -> expected IoU: a non-increasing piecewise-linear map through the isotonic fit's knots."""

    entropy: tuple[float, ...]
    iou: tuple[float, ...]
    num_boxes: int

    @classmethod
    def fit(cls, entropy: np.ndarray, iou: np.ndarray) -> Optional[UncertaintyCalibration]:
        """The map fitted to true positives' (entropy, IoU); None with fewer than MIN_CALIBRATION_BOXES."""
        if len(entropy) < MIN_CALIBRATION_BOXES:
            return None
        knots_x, knots_y = isotonic_non_increasing(entropy, iou)
        return cls(tuple(float(v) for v in knots_x), tuple(float(v) for v in knots_y), len(entropy))

    def expected_iou(self, entropy: np.ndarray) -> np.ndarray:
        """Expected IoU of boxes with this raw uncertainty (constant beyond the fitted range)."""
        return np.interp(entropy, self.entropy, self.iou)

    def to_dict(self) -> dict[str, Any]:
        return {"entropy": list(self.entropy), "iou": list(self.iou), "num_boxes": self.num_boxes}

    @classmethod
    def from_dict(cls, values: Optional[dict[str, Any]]) -> Optional[UncertaintyCalibration]:
        if not values:
            return None
        return cls(tuple(float(v) for v in values["entropy"]), tuple(float(v) for v in values["iou"]),
                   int(values["num_boxes"]))

    @classmethod
    def of_checkpoint(cls, checkpoint: dict[str, Any]) -> Optional[UncertaintyCalibration]:
        """The map a checkpoint stores (None for checkpoints without one: regression, foreign, older)."""
        return cls.from_dict(checkpoint.get(CHECKPOINT_KEY))
