"""Tests for utils/eval/plots.py: batch mosaics of labels and predictions, and the confusion matrix file."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from utils.eval.metrics import ConfusionMatrix
from utils.eval.plots import plot_batch, plot_confusion_matrix


def test_batch_mosaic_draws_boxes(tmp_path):
    images = torch.zeros(3, 3, 64, 64, dtype=torch.uint8)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.5, 0.5], [2, 0, 0.25, 0.25, 0.2, 0.2]])
    out = plot_batch(images, targets, ["a", "b"], tmp_path / "train_batch0.jpg")
    mosaic = cv2.imread(str(out))
    assert mosaic.shape == (128, 128, 3)
    assert mosaic[:64, :64].max() > 50  # image 0 has a box drawn on black
    assert mosaic[:64, 64:].max() < 50  # image 1 has none


def test_prediction_mosaic_skips_low_confidence(tmp_path):
    images = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    predictions = torch.tensor([[0, 1, 0.5, 0.5, 0.5, 0.5, 0.9], [1, 0, 0.5, 0.5, 0.5, 0.5, 0.1]])
    mosaic = cv2.imread(str(plot_batch(images, predictions, ["a", "b"], tmp_path / "val_batch0_pred.jpg")))
    assert mosaic[:64, :64].max() > 50 and mosaic[:64, 64:].max() < 50


def test_confusion_matrix_png(tmp_path):
    confusion = ConfusionMatrix(2)
    confusion.update(np.array([[0, 0, 10, 10.0]]), np.array([0.9]), np.array([1]), np.array([[0, 0, 10, 10.0]]),
                     np.array([1]))
    out = plot_confusion_matrix(confusion, ["a", "b"], tmp_path / "confusion_matrix.png")
    assert cv2.imread(str(out)) is not None
