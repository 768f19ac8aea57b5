"""Tests for utils/engine/plots.py: files are written, readable, and bad input is named."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from utils.engine.plots import plot_batch, plot_labels, plot_results


def test_results_png_from_csv(tmp_path):
    csv_path = tmp_path / "results.csv"
    csv_path.write_text("epoch,train/box_loss,metrics/mAP_0.5,val/box_loss\n0,0.5,0.1,nan\n1,0.4,0.2,nan\n")
    out = plot_results(csv_path)
    assert out == tmp_path / "results.png" and cv2.imread(str(out)) is not None


def test_results_without_rows_is_an_error(tmp_path):
    csv_path = tmp_path / "results.csv"
    csv_path.write_text("epoch,train/box_loss\n")
    with pytest.raises(ValueError, match="results.csv"):
        plot_results(csv_path)


def test_labels_plot_handles_empty_images(tmp_path):
    labels = [np.array([[0, 0.5, 0.5, 0.1, 0.2], [2, 0.2, 0.3, 0.05, 0.05]]), np.zeros((0, 5))]
    out = plot_labels(labels, ["a", "b", "c"], tmp_path / "labels.jpg")
    assert cv2.imread(str(out)) is not None


def test_batch_mosaic_draws_boxes(tmp_path):
    images = torch.zeros(3, 3, 64, 64, dtype=torch.uint8)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.5, 0.5], [2, 0, 0.25, 0.25, 0.2, 0.2]])
    out = plot_batch(images, targets, ["a", "b"], tmp_path / "train_batch0.jpg")
    mosaic = cv2.imread(str(out))
    assert mosaic.shape == (128, 128, 3)
    assert mosaic[:64, :64].max() > 50  # image 0 has a box drawn on black
    assert mosaic[:64, 64:].max() < 50  # image 1 has none
