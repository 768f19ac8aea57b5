"""Tests for utils/eval/reliability.py: the entropy -> expected IoU calibration and its reliability table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from utils.eval.metrics import BoxSet
from utils.eval.plots import plot_reliability
from utils.eval.reliability import (
    MIN_CALIBRATION_BOXES,
    UncertaintyCalibration,
    expected_calibration_error,
    isotonic_non_increasing,
    out_of_fold_expected_iou,
    reliability_table,
    spearman,
    true_positive_ious,
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


def test_spearman_matches_pandas_with_ties():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 5, 60).astype(float), rng.normal(size=60)
    assert spearman(a, b) == pytest.approx(pd.Series(a).corr(pd.Series(b), method="spearman"), abs=1e-12)
    assert np.isnan(spearman(a[:2], b[:2]))


def test_true_positive_ious_take_the_best_same_class_ground_truth():
    gts = BoxSet([0, 0, 1], [[0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30]], [0, 1, 0])
    dets = BoxSet([0, 1, 1], [[0, 0, 10, 5], [20, 20, 30, 25], [0, 0, 1, 1]], [0, 0, 0], score=[0.9, 0.8, 0.1])
    rows, ious = true_positive_ious(dets, gts, np.array([True, True, False]))
    np.testing.assert_array_equal(rows, [0, 1])
    np.testing.assert_allclose(ious, [0.5, 0.5])  # the class-1 box that matches det 0 exactly does not count


def test_calibration_round_trips_and_needs_enough_boxes():
    rng = np.random.default_rng(2)
    entropy = rng.uniform(0.2, 1.5, 200)
    calibration = UncertaintyCalibration.fit(entropy, 0.95 - 0.3 * entropy)
    assert UncertaintyCalibration.from_dict(calibration.to_dict()) == calibration
    np.testing.assert_allclose(calibration.expected_iou(np.array([0.5, 1.0])), [0.8, 0.65], atol=0.01)
    assert UncertaintyCalibration.fit(entropy[: MIN_CALIBRATION_BOXES - 1], entropy[: MIN_CALIBRATION_BOXES - 1]) \
        is None and UncertaintyCalibration.from_dict(None) is None


def test_out_of_fold_prediction_is_calibrated_and_raw_entropy_is_not(tmp_path):
    rng = np.random.default_rng(3)
    entropy = rng.uniform(0.2, 1.5, 2000)
    measured = np.clip(0.95 - 0.3 * entropy + rng.normal(0, 0.05, 2000), 0, 1)
    predicted = out_of_fold_expected_iou(entropy, measured, rng.integers(0, 50, 2000))
    table = reliability_table(predicted, measured)
    assert len(table) == 10 and sum(row["boxes"] for row in table) == 2000
    assert expected_calibration_error(table) < 0.02
    assert expected_calibration_error(reliability_table(1 - entropy, measured)) > 0.1
    plot_reliability(table, expected_calibration_error(table), tmp_path / "reliability.png")
    assert (tmp_path / "reliability.png").stat().st_size > 0
    assert out_of_fold_expected_iou(entropy[:30], measured[:30], np.zeros(30, int)) is None  # one half empty
