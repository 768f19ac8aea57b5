"""Tests for utils/data/yolo_txt.py: the one YOLO txt row writer (label files and --save-txt rows)."""

from __future__ import annotations

import numpy as np

from utils.data.yolo_txt import LABEL_FORMAT, prediction_txt, yolo_txt


def test_label_rows_keep_six_decimals_and_integer_classes():
    text = yolo_txt(np.array([3.0, 0.0]), np.array([[0.5, 0.25, 0.1, 1 / 3], [1.0, 0.0, 2e-7, 0.125]]), LABEL_FORMAT)
    assert text == "3 0.500000 0.250000 0.100000 0.333333\n0 1.000000 0.000000 0.000000 0.125000\n"
    assert yolo_txt(np.zeros(0), np.zeros((0, 4)), LABEL_FORMAT) == ""


def test_prediction_rows_are_percent_g_of_float32_cxcywhn_then_extra_columns():
    boxes = np.array([[10.0, 20.0, 30.0, 60.0]])  # cx 20 cy 40 w 20 h 40 in a 300 x 200 (h, w) image
    text = prediction_txt(boxes, np.array([2]), (300, 200), [np.array([0.5]), np.array([1 / 3])])
    assert text == "2 0.1 0.133333 0.1 0.133333 0.5 0.333333\n"
    assert prediction_txt(boxes, np.array([2]), (300, 200)) == "2 0.1 0.133333 0.1 0.133333\n"
