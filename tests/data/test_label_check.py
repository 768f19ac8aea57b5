"""Tests for utils/data/label_check.py: each bad label line is dropped with its line number and reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.data.label_check import EDGE_TOLERANCE, parse_label_line, parse_label_text


@pytest.mark.parametrize("line,reason", [
    ("0 0.5 0.5 0.1", "expected 5 columns"),
    ("0 0.5 0.5 0.1 0.1 0.3", "expected 5 columns"),
    ("0 0.1 0.1 0.2 0.1 0.2 0.2 0.3", "polygon with an odd number of coordinates"),
    ("0 0.1 0.1 0.2 0.1 0.2 nan", "non-finite"),
    ("0 0.1 0.1 1.5 0.1 0.2 0.2", "lies outside the image"),
    ("car 0.5 0.5 0.1 0.1", "non-number"),
    ("0 nan 0.5 0.1 0.1", "non-finite"),
    ("1.5 0.5 0.5 0.1 0.1", "not a non-negative integer"),
    ("-1 0.5 0.5 0.1 0.1", "not a non-negative integer"),
    ("7 0.5 0.5 0.1 0.1", ">= nc=5"),
    ("0 0.5 0.5 0 0.1", "non-positive box size"),
    ("0 0.5 0.5 0.1 -0.2", "non-positive box size"),
    ("0 1.2 0.5 0.1 0.1", "outside the image"),
    ("0 0.5 0.5 1.5 0.1", "outside the image"),
])
def test_bad_lines_give_a_reason(line, reason):
    values, message = parse_label_line(line, nc=5)
    assert values is None and reason in message


def test_good_and_blank_lines():
    assert parse_label_line("3 0.5 0.25 0.1 0.2", nc=5) == ([3.0, 0.5, 0.25, 0.1, 0.2], "")
    assert parse_label_line("   ", nc=5) == (None, "")
    assert parse_label_line("9 0.5 0.5 0.1 0.1", nc=None)[0] is not None


def test_text_drops_bad_lines_clips_overshoot_and_removes_duplicates():
    text = "0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n\n1 abc 0.5 0.1 0.1\n2 0.998 0.5 0.01 0.1\n9 0.5 0.5 0.1 0.1\n"
    labels, messages = parse_label_text(text, "x.txt", nc=5)
    assert labels.shape == (2, 5)
    assert any(m.startswith("x.txt:4:") and "non-number" in m for m in messages)
    assert any(m.startswith("x.txt:6:") and "nc=5" in m for m in messages)
    assert any("1 duplicate" in m for m in messages)
    assert len(messages) == 3
    clipped = labels[1]  # edge 1.003 clipped to 1: cx = (0.993 + 1) / 2
    np.testing.assert_allclose(clipped[1:], [0.9965, 0.5, 0.007, 0.1], atol=1e-6)


@given(st.floats(0.05, 0.95), st.floats(0.05, 0.95), st.floats(0.001, 0.1), st.floats(0.001, 0.1))
@settings(deadline=None, max_examples=30)
def test_boxes_inside_pass_unchanged(cx, cy, w, h):
    labels, messages = parse_label_text(f"1 {cx} {cy} {w} {h}", "y.txt", nc=2)
    assert messages == []
    np.testing.assert_allclose(labels[0], [1, cx, cy, w, h], atol=1e-6)


def test_overshoot_beyond_tolerance_is_dropped():
    width = 0.2
    inside = 1 - width / 2 + EDGE_TOLERANCE / 2
    outside = 1 - width / 2 + EDGE_TOLERANCE * 2
    assert parse_label_line(f"0 {inside} 0.5 {width} 0.1", nc=1)[0] is not None
    assert parse_label_line(f"0 {outside} 0.5 {width} 0.1", nc=1)[0] is None


def test_polygon_lines_become_yolov5s_boxes():
    """YOLOv5 segment labels were all dropped; YOLOv5 v7.0 reads them as the boxes of their points.
    The reference is YOLOv5's own verify_image_label (fixtures/make_polygon_reference.py)."""
    reference = json.loads((Path(__file__).parent / "fixtures" / "polygon_labels_yolov5.json").read_text())
    labels, messages = parse_label_text("\n".join(reference["lines"]), "im.txt", nc=3)
    assert messages == []
    np.testing.assert_array_equal(labels, np.array(reference["labels"], np.float32))  # the same float32 numbers


def test_a_polygon_and_a_box_line_in_one_file_are_each_read_by_their_columns():
    labels, messages = parse_label_text("0 0.1 0.2 0.3 0.2 0.2 0.4\n1 0.5 0.5 0.2 0.2\n", "mixed.txt", nc=2)
    assert messages == []
    np.testing.assert_allclose(labels, [[0, 0.2, 0.3, 0.2, 0.2], [1, 0.5, 0.5, 0.2, 0.2]], atol=1e-7)
