"""Tests for utils/boxes.py: conversions round-trip, IoU family properties, letterbox undo, the offset codec."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import random_boxes
from utils.boxes import (
    OFFSET_SPACES,
    aligned_iou,
    box_ioa,
    box_iou,
    clip_boxes,
    cxcywh_to_xyxy,
    cxcywhn_to_xyxy,
    decode_offsets,
    encode_offsets,
    scale_boxes_to_original,
    xyxy_to_cxcywh,
    xyxy_to_cxcywhn,
)


@settings(deadline=None, max_examples=30)
@given(st.integers(1, 20), st.integers(0, 1000))
def test_xyxy_cxcywh_round_trip(num, seed):
    boxes = random_boxes(num, seed=seed)
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes)), boxes)
    torch.testing.assert_close(xyxy_to_cxcywhn(cxcywhn_to_xyxy(boxes / 100, 640, 480), 640, 480), boxes / 100)


def test_conversions_accept_numpy():
    boxes = np.array([[10.0, 20.0, 30.0, 60.0]])
    np.testing.assert_allclose(xyxy_to_cxcywh(boxes), [[20.0, 40.0, 20.0, 40.0]])
    assert boxes[0, 0] == 10.0  # input untouched


@settings(deadline=None, max_examples=30)
@given(st.integers(1, 15), st.integers(1, 15), st.integers(0, 1000))
def test_box_iou_properties(n, m, seed):
    a, b = random_boxes(n, seed=seed), random_boxes(m, seed=seed + 1)
    iou = box_iou(a, b)
    assert iou.shape == (n, m)
    assert (iou >= 0).all() and (iou <= 1 + 1e-6).all()
    torch.testing.assert_close(iou, box_iou(b, a).T)
    torch.testing.assert_close(box_iou(a, a).diagonal(), torch.ones(n), atol=1e-5, rtol=0)


def test_box_iou_hand_case():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[50 / 150, 0.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(box_ioa(a, b), torch.tensor([[0.5, 0.0]]), atol=1e-6, rtol=0)


def test_aligned_iou_family():
    same = torch.tensor([[50.0, 50.0, 20.0, 10.0]])
    for kind in ("iou", "giou", "diou", "ciou"):
        torch.testing.assert_close(aligned_iou(same, same, kind), torch.ones(1), atol=1e-5, rtol=0)
    shifted = torch.tensor([[60.0, 50.0, 20.0, 10.0]])
    iou = aligned_iou(same, shifted, "iou")
    torch.testing.assert_close(iou, torch.tensor([100 / 300]), atol=1e-5, rtol=0)
    assert aligned_iou(same, shifted, "ciou") < aligned_iou(same, shifted, "diou") + 1e-6 < iou + 1e-6
    far = torch.tensor([[500.0, 500.0, 20.0, 10.0]])
    assert aligned_iou(same, far, "giou") < 0


def test_aligned_iou_rejects_unknown_kind():
    import pytest

    with pytest.raises(ValueError, match="eiou"):
        aligned_iou(torch.zeros(1, 4), torch.zeros(1, 4), "eiou")


def test_scale_boxes_undoes_letterbox():
    # a 200x100 (w x h) image letterboxed to 320x320: gain 1.6, pad_h = (320 - 160) / 2 = 80
    original = torch.tensor([[10.0, 10.0, 60.0, 40.0]])
    letterboxed = original * 1.6 + torch.tensor([0.0, 80.0, 0.0, 80.0])
    restored = scale_boxes_to_original(letterboxed.clone(), (320, 320), (100, 200))
    torch.testing.assert_close(restored, original)
    explicit = scale_boxes_to_original(letterboxed.clone(), (320, 320), (100, 200), ((1.6, 1.6), (0.0, 80.0)))
    torch.testing.assert_close(explicit, original)


def test_clip_boxes():
    boxes = torch.tensor([[-5.0, -5.0, 120.0, 50.0]])
    torch.testing.assert_close(clip_boxes(boxes, 40, 100), torch.tensor([[0.0, 0.0, 100.0, 40.0]]))


@settings(deadline=None, max_examples=40)
@given(dx=st.floats(-0.49, 1.49), dy=st.floats(-0.49, 1.49), rw=st.floats(0.26, 3.9), rh=st.floats(0.26, 3.9),
       space=st.sampled_from(OFFSET_SPACES))
def test_offset_spaces_round_trip(dx, dy, rw, rh, space):
    dxy, ratio = torch.tensor([[dx, dy]], dtype=torch.float64), torch.tensor([[rw, rh]], dtype=torch.float64)
    t = encode_offsets(dxy, ratio, space)  # (1, 4)
    back_dxy, back_ratio = decode_offsets(t, space)
    torch.testing.assert_close(back_dxy, dxy, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(back_ratio, ratio, rtol=1e-6, atol=1e-9)


def test_offset_zero_is_the_anchor_prior_in_both_spaces():
    for space in OFFSET_SPACES:
        dxy, ratio = decode_offsets(torch.zeros(4), space)
        torch.testing.assert_close(dxy, torch.full((2,), 0.5))
        torch.testing.assert_close(ratio, torch.ones(2))
    with pytest.raises(ValueError, match="offset space"):
        decode_offsets(torch.zeros(4), "log")
    with pytest.raises(ValueError, match="offset space"):
        encode_offsets(torch.zeros(2), torch.ones(2), "log")
