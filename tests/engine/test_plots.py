"""Tests for utils/engine/plots.py: files are written, readable, and bad input is named."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from utils.engine.plots import RESULTS_PANELS, gaussian_smooth, plot_label_correlogram, plot_labels, plot_results
from utils.engine.writers import format_line


def test_results_png_from_csv(tmp_path):
    csv_path = tmp_path / "results.csv"
    csv_path.write_text("epoch,train/box_loss,metrics/mAP_0.5,val/box_loss\n0,0.5,0.1,nan\n1,0.4,0.2,nan\n")
    out = plot_results(csv_path)
    assert out == tmp_path / "results.png" and cv2.imread(str(out)) is not None
    assert not (tmp_path / "results_diagnostics.png").exists(), "no extra columns, no diagnostics figure"


def test_results_png_reads_yolov5_padding_and_plots_extras_apart(tmp_path):
    csv_path = tmp_path / "results.csv"
    rows = [["epoch", *RESULTS_PANELS, "x/lr0", "diag/gt_total"]]
    rows += [[epoch, *[0.1 * epoch] * 10, math.nan, 3.0] for epoch in range(4)]
    csv_path.write_text("".join(format_line(row) for row in rows))
    assert csv_path.read_text().startswith(" " * 15 + "epoch,")
    plot_results(csv_path)
    results = cv2.imread(str(tmp_path / "results.png"))
    diagnostics = cv2.imread(str(tmp_path / "results_diagnostics.png"))
    assert results.shape[:2] == (1200, 2400), "YOLOv5's 12x6 in figure at 200 dpi"
    assert diagnostics.shape[:2] == (500, 3000), "one row of panels for the two extra columns"


def test_smoothing_matches_scipy_gaussian_filter1d():
    values = np.random.default_rng(0).random(40)
    assert np.allclose(gaussian_smooth(np.full(7, 2.5)), 2.5), "a constant series is unchanged"
    assert gaussian_smooth(values).std() < values.std() / 2
    ndimage = pytest.importorskip("scipy.ndimage")
    for length in (1, 2, 5, 13, 40):
        np.testing.assert_allclose(gaussian_smooth(values[:length]), ndimage.gaussian_filter1d(values[:length], 3),
                                   atol=1e-12)


def test_label_correlogram(tmp_path):
    labels = [np.random.default_rng(1).random((30, 5)), np.zeros((0, 5))]
    out = plot_label_correlogram(labels, tmp_path / "labels_correlogram.jpg")
    assert cv2.imread(str(out)) is not None


def test_results_without_rows_is_an_error(tmp_path):
    csv_path = tmp_path / "results.csv"
    csv_path.write_text("epoch,train/box_loss\n")
    with pytest.raises(ValueError, match="results.csv"):
        plot_results(csv_path)


def test_labels_plot_handles_empty_images(tmp_path):
    labels = [np.array([[0, 0.5, 0.5, 0.1, 0.2], [2, 0.2, 0.3, 0.05, 0.05]]), np.zeros((0, 5))]
    out = plot_labels(labels, ["a", "b", "c"], tmp_path / "labels.jpg")
    assert cv2.imread(str(out)) is not None
