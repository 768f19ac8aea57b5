"""Tests for utils/cbbl/calibration.py: the isotonic entropy -> expected IoU map."""

from __future__ import annotations

import numpy as np

from utils.cbbl.calibration import (
    CHECKPOINT_KEY,
    MIN_CALIBRATION_BOXES,
    UncertaintyCalibration,
    isotonic_non_increasing,
)


def test_isotonic_pools_each_rise_into_its_weighted_mean():
    knots_x, knots_y = isotonic_non_increasing(np.array([3.0, 1.0, 2.0, 4.0]), np.array([0.3, 0.5, 0.7, 0.1]))
    np.testing.assert_allclose(knots_x, [1.5, 3.0, 4.0])  # x sorted: (1, .5) (2, .7) rise -> pooled at .6
    np.testing.assert_allclose(knots_y, [0.6, 0.3, 0.1])
    x = np.linspace(0, 1, 8)
    np.testing.assert_allclose(isotonic_non_increasing(x, 1 - x)[1], 1 - x)  # already monotone: untouched


def test_isotonic_fit_is_monotone_and_keeps_the_mean_on_random_data():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 2, 500)
    y = 0.9 - 0.3 * x + rng.normal(0, 0.1, 500)
    knots_x, knots_y = isotonic_non_increasing(x, y)
    assert (np.diff(knots_x) > 0).all() and (np.diff(knots_y) <= 1e-12).all()
    order = np.argsort(x)
    slope, intercept = np.polyfit(x, y, 1)  # a non-increasing line is one of the fits isotonic chooses among
    assert slope < 0 and len(knots_y) < 500
    assert ((y[order] - np.interp(x[order], knots_x, knots_y)) ** 2).sum() <= ((y - (slope * x + intercept)) ** 2).sum()


def test_calibration_round_trips_and_needs_enough_boxes():
    rng = np.random.default_rng(2)
    entropy = rng.uniform(0.2, 1.5, 200)
    calibration = UncertaintyCalibration.fit(entropy, 0.95 - 0.3 * entropy)
    assert UncertaintyCalibration.from_dict(calibration.to_dict()) == calibration
    np.testing.assert_allclose(calibration.expected_iou(np.array([0.5, 1.0])), [0.8, 0.65], atol=0.01)
    assert UncertaintyCalibration.fit(entropy[: MIN_CALIBRATION_BOXES - 1], entropy[: MIN_CALIBRATION_BOXES - 1]) \
        is None and UncertaintyCalibration.from_dict(None) is None


def test_a_checkpoint_carries_its_calibration_under_one_key():
    calibration = UncertaintyCalibration((0.2, 1.0), (0.9, 0.5), 40)
    assert UncertaintyCalibration.of_checkpoint({CHECKPOINT_KEY: calibration.to_dict()}) == calibration
    assert UncertaintyCalibration.of_checkpoint({"model": {}}) is None
