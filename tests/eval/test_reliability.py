"""Tests for utils/eval/reliability.py: the true positives' IoU, the out-of-fold reliability table and plot."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from utils.eval.metrics import BoxSet
from utils.eval.plots import plot_reliability
from utils.eval.reliability import (
    expected_calibration_error,
    out_of_fold_expected_iou,
    reliability_table,
    spearman,
    true_positive_ious,
)


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
