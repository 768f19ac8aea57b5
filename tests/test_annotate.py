"""Tests for utils/annotate.py: labels sit outside boxes, thin lines, inputs stay untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.annotate import (
    class_color,
    crop_box,
    default_thickness,
    draw_detections,
    label_origin,
    label_text,
    save_feature_maps,
)

NAMES = ["car", "pedestrian"]


def blank(height=120, width=160):
    return np.zeros((height, width, 3), dtype=np.uint8)


def test_draws_on_a_copy_with_a_label_above_the_box():
    image = blank()
    out = draw_detections(image, np.array([[40.0, 50.0, 60.0, 70.0]]), np.array([0]), np.array([0.87]), NAMES)
    assert image.max() == 0, "the input image must not change"
    assert out[50, 50].any(), "top edge of the box drawn"
    assert not out[52:68, 42:58].any(), "the label or lines never cover the object inside the box"
    assert out[:50, 40:80].any(), "the label sits above the box"
    assert not out[72:, :].any(), "nothing below the box (1 px of anti-aliasing)"


def test_label_goes_below_a_box_at_the_top_edge():
    out = draw_detections(blank(), torch.tensor([[40.0, 0.0, 60.0, 20.0]]), torch.tensor([1]), None, NAMES)
    assert not out[2:18, 42:58].any()
    assert out[21:40, 40:80].any(), "no room above: the label is below the box"


def test_hide_labels_draws_only_the_box_with_thin_lines():
    out = draw_detections(blank(), np.array([[40.0, 50.0, 60.0, 70.0]]), np.array([0]), np.array([0.5]), NAMES,
                          hide_labels=True)
    assert not out[:45].any() and not out[75:].any()
    assert default_thickness(out.shape) == 1 and default_thickness((4000, 6000)) > 1


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="2 boxes but 1 classes"):
        draw_detections(blank(), np.zeros((2, 4)), np.array([0]), None, NAMES)


def test_label_text_and_colors():
    assert label_text(0, 0.871, NAMES) == "car 0.87"
    assert label_text(1, 0.5, NAMES, hide_conf=True) == "pedestrian"
    assert label_text(7, None, NAMES) == "7"
    assert class_color(0) != class_color(1) and class_color(3) == class_color(3)


@settings(deadline=None, max_examples=40)
@given(y1=st.integers(0, 180), height=st.integers(1, 60), text_w=st.integers(5, 80), text_h=st.integers(5, 15))
def test_label_never_overlaps_the_box_interior(y1, height, text_w, text_h):
    image_shape = (300, 200)
    box = (50, y1, 90, min(y1 + height, 240))
    left, top, above = label_origin(box, (text_w, text_h), 3, image_shape)
    label_bottom = top + text_h + 3 + 1
    assert label_bottom <= box[1] or top > box[3], "label outside the box"
    assert above == (label_bottom <= box[1])
    assert 0 <= left and left + text_w < image_shape[1]


def test_crop_box_is_clipped_to_the_image():
    image = np.arange(100 * 100 * 3, dtype=np.uint8).reshape(100, 100, 3)
    assert crop_box(image, (40, 40, 60, 50), gain=1.0, pad=0).shape == (10, 20, 3)
    assert crop_box(image, (0, 0, 10, 10)).shape[:2] == (20, 20)


def test_save_feature_maps_writes_one_png_per_4d_layer(tmp_path):
    layers = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten())
    written = save_feature_maps(layers, lambda: layers(torch.rand(1, 3, 16, 16)), tmp_path)
    assert [p.name for p in written] == ["stage0_Conv2d.png", "stage1_ReLU.png"]
    assert all(p.is_file() for p in written)
