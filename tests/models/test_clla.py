"""models/clla.py: TPH-YOLOv5++'s CLLADetect (4 inputs, 3 levels; P3 predicted through cross-layer attention)."""

from __future__ import annotations

import math

import pytest
import torch

from models.clla import CLLA, CLLADetect

ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]


def test_levels_shapes_and_bias_priors():
    head = CLLADetect(nc=4, anchors=ANCHORS, ch=[8, 16, 32, 64])
    head.set_stride(torch.tensor([8.0, 16.0, 32.0]))
    head.initialize_biases()
    assert head.prediction_convs()[0] is head.det.det and len(head.m) == 2
    objectness = [conv.bias.view(head.na, head.no)[:, 4] for conv in head.prediction_convs()]
    for bias, stride in zip(objectness, (8, 16, 32)):
        torch.testing.assert_close(bias, torch.full((3,), math.log(8 / (640 / stride) ** 2)))
    features = [torch.rand(2, 8, 32, 40), torch.rand(2, 16, 16, 20), torch.rand(2, 32, 8, 10), torch.rand(2, 64, 4, 5)]
    _, raw = head.train()(features)
    assert [tuple(level.shape) for level in raw] == [(2, 3, 16, 20, 9), (2, 3, 8, 10, 9), (2, 3, 4, 5, 9)]


def test_sparse_decode_reads_the_clla_fused_features_like_the_dense_one():
    torch.manual_seed(0)
    head = CLLADetect(nc=4, anchors=ANCHORS, ch=[8, 16, 32, 64], head={"box_loss": "cbbl"}).eval()
    head.set_stride(torch.tensor([8.0, 16.0, 32.0]))
    features = [torch.rand(2, 8, 32, 40), torch.rand(2, 16, 16, 20), torch.rand(2, 32, 8, 10), torch.rand(2, 64, 4, 5)]
    with torch.no_grad():
        dense, _ = head(features)
        head.decode_conf = 0.4
        sparse, _ = head(features)
    kept = dense[..., 4] * dense[..., 5:9].amax(-1) > 0.4  # rows NMS at 0.4 can keep (objectness ~0.5 here)
    assert 0 < int(kept.sum()) < kept.numel()
    torch.testing.assert_close(sparse[kept], dense[kept], rtol=1e-6, atol=1e-5)
    assert (sparse[~kept][:, :4] != dense[~kept][:, :4]).any()  # the others were not decoded


def test_clla_weighs_the_least_similar_fine_cell_most():
    """TPH's scoring: softmax over 2 * mean - score, so the 2x2 cell least like the query gets most weight."""
    attention = CLLA(1)
    with torch.no_grad():
        for linear in (attention.q, attention.k, attention.v):
            linear.weight.fill_(1.0)
            linear.bias.zero_()
    fine = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2): one coarse cell's 4 fine cells
    coarse = torch.ones(1, 1, 1, 1)
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])  # v = k = fine; q = 1
    scores = values / 2  # q . k / RANGE
    weights = (2 * scores.mean() - scores).softmax(0)
    assert weights.argmax() == 0
    expected = ((weights * values).sum() + 1.0) / 2  # (attended + coarse) / 2
    torch.testing.assert_close(attention(fine, coarse).view(()), expected)


def test_wrong_number_of_inputs_is_named():
    with pytest.raises(ValueError, match="one more input than levels"):
        CLLADetect(nc=4, anchors=ANCHORS, ch=[16, 32, 64])
