"""Tests for utils/nms.py: the pure-torch NMS equals torchvision's; the full pipeline's contract."""

import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import random_boxes
from utils import nms as nms_module
from utils.boxes import box_iou
from utils.nms import FUSION_SIGMA_T, batched_nms, nms, nms_torch, non_max_suppression, variance_voting

torchvision_ops = pytest.importorskip("torchvision.ops")


@settings(deadline=None, max_examples=40)
@given(st.integers(0, 300), st.floats(0.1, 0.9), st.integers(0, 10_000))
def test_pure_torch_nms_equals_torchvision(num, iou_thres, seed):
    boxes = random_boxes(num, size=200.0, seed=seed)
    scores = torch.rand(num, generator=torch.Generator().manual_seed(seed))
    expected = torchvision_ops.nms(boxes, scores, iou_thres)
    assert torch.equal(nms_torch(boxes, scores, iou_thres), expected)


def test_pure_torch_batched_nms_equals_torchvision():
    boxes = random_boxes(500, size=300.0, seed=3)
    scores = torch.rand(500, generator=torch.Generator().manual_seed(4))
    classes = torch.randint(0, 5, (500,), generator=torch.Generator().manual_seed(5))
    expected = torchvision_ops.batched_nms(boxes, scores, classes, 0.5)
    assert torch.equal(batched_nms(boxes, scores, classes, 0.5, backend="torch"), expected)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_presorted_input_keeps_the_same_boxes(backend):
    boxes = random_boxes(400, size=300.0, seed=6)
    scores = torch.rand(400, generator=torch.Generator().manual_seed(7))
    classes = torch.randint(0, 4, (400,), generator=torch.Generator().manual_seed(8))
    order = scores.argsort(descending=True)
    unsorted = batched_nms(boxes, scores, classes, 0.5, backend)
    presorted = batched_nms(boxes[order], scores[order], classes[order], 0.5, backend, presorted=True)
    assert torch.equal(order[presorted], unsorted)


def test_candidate_cap_keeps_the_highest_scores():
    generator = torch.Generator().manual_seed(1)
    centres = torch.rand(1, 300, 2, generator=generator) * 3000  # far apart: NMS drops nothing
    pred = torch.cat([centres, torch.full((1, 300, 2), 4.0), torch.rand(1, 300, 2, generator=generator)], 2)
    (capped,) = non_max_suppression(pred, 0.0, 0.5, max_det=300, max_candidates=50)
    scores = pred[0, :, 4] * pred[0, :, 5]
    assert torch.allclose(capped[:, 4], scores.sort(descending=True).values[:50])


@pytest.mark.parametrize("presorted", [False, True])
def test_many_boxes_run_class_by_class_with_the_same_result(presorted):
    num = nms_module._PER_CLASS_MIN_BOXES + 500
    boxes = random_boxes(num, size=400.0, seed=9)
    scores = torch.rand(num, generator=torch.Generator().manual_seed(10))
    classes = torch.randint(0, 6, (num,), generator=torch.Generator().manual_seed(11))
    if presorted:
        order = scores.argsort(descending=True)
        boxes, scores, classes = boxes[order], scores[order], classes[order]
    offsets = classes[:, None].float() * (boxes.max() - boxes.min() + 1)
    expected = torchvision_ops.nms(boxes + offsets, scores, 0.5)  # one pass over all classes
    for backend in ("auto", "torch"):
        assert torch.equal(batched_nms(boxes, scores, classes, 0.5, backend, presorted=presorted), expected)


def test_nms_chain_suppression_is_greedy():
    # A overlaps B, B overlaps C, A does not overlap C: greedy keeps A and C.
    boxes = torch.tensor([[0.0, 0, 10, 10], [4.0, 0, 14, 10], [8.0, 0, 18, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms_torch(boxes, scores, 0.3).tolist() == [0, 2]


def test_fallback_warns_once_and_works(monkeypatch, caplog):
    nms_module._torchvision_nms.cache_clear()

    def broken_import(*args, **kwargs):
        raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setattr(torchvision_ops, "nms", broken_import)
    with caplog.at_level(logging.WARNING):
        keep = nms(random_boxes(20), torch.rand(20), 0.5)
        nms(random_boxes(20), torch.rand(20), 0.5)
    warnings = [r for r in caplog.records if "torchvision NMS unavailable" in r.message]
    assert len(warnings) == 1 and "torchvision::nms" in warnings[0].message
    assert keep.dtype == torch.int64 and len(keep) > 0
    with pytest.raises(RuntimeError, match="torchvision"):
        nms(random_boxes(5), torch.rand(5), 0.5, backend="torchvision")
    nms_module._torchvision_nms.cache_clear()


def _prediction(rows):
    return torch.tensor(rows, dtype=torch.float32)[None]  # (1, N, 5 + nc + E)


def test_non_max_suppression_contract_with_extra_column():
    # cx, cy, w, h, obj, cls0, cls1, uncertainty
    pred = _prediction([
        [50, 50, 20, 20, 0.9, 0.9, 0.1, 0.3],
        [51, 50, 20, 20, 0.8, 0.9, 0.1, 0.7],  # duplicate of the first, same class: suppressed
        [51, 50, 20, 20, 0.8, 0.1, 0.9, 0.5],  # same place, other class: kept (class-aware)
        [200, 200, 10, 10, 0.1, 0.9, 0.1, 0.2],  # below conf_thres
    ])
    (dets,) = non_max_suppression(pred, conf_thres=0.25, iou_thres=0.45, nc=2)
    assert dets.shape == (2, 7)
    torch.testing.assert_close(dets[0, :4], torch.tensor([40.0, 40.0, 60.0, 60.0]))
    torch.testing.assert_close(dets[:, 4], torch.tensor([0.81, 0.72]))
    assert dets[:, 5].tolist() == [0.0, 1.0]
    torch.testing.assert_close(dets[:, 6], torch.tensor([0.3, 0.5]))
    (agnostic,) = non_max_suppression(pred, 0.25, 0.45, agnostic=True, nc=2)
    assert len(agnostic) == 1
    (only_class_1,) = non_max_suppression(pred, 0.25, 0.45, classes=[1], nc=2)
    assert only_class_1[:, 5].tolist() == [1.0]


def test_non_max_suppression_max_det_and_candidates_warning(caplog, monkeypatch):
    monkeypatch.setattr("utils.nms._CAPS_LOGGED", set())  # a fresh process: nothing logged yet
    generator = torch.Generator().manual_seed(0)
    centres = torch.rand(1, 600, 2, generator=generator) * 2000
    pred = torch.cat([centres, torch.full((1, 600, 2), 8.0), torch.rand(1, 600, 3, generator=generator) * 0.5 + 0.5],
                     2)
    (dets,) = non_max_suppression(pred, 0.01, 0.5, max_det=500)
    assert len(dets) == 500
    assert (dets[:-1, 4] >= dets[1:, 4]).all()
    with caplog.at_level(logging.WARNING):
        for _batch in range(3):  # every image of every batch is over the cap: one line for the run, not one per batch
            non_max_suppression(pred.repeat(2, 1, 1), 0.01, 0.5, max_candidates=100)
    assert [r.message for r in caplog.records] == ["NMS: 600 candidates above conf 0.01 in an image, keeping the top "
                                                   "100 (further images over the cap are not logged)"]


def test_non_max_suppression_empty_and_bad_thresholds():
    (dets,) = non_max_suppression(torch.zeros(1, 0, 7), nc=2)
    assert dets.shape == (0, 6)
    with pytest.raises(ValueError, match="conf_thres"):
        non_max_suppression(torch.zeros(1, 1, 7), conf_thres=1.5)


def _vote(boxes, variance, classes=None, keep=(0,), iou_thres=0.5):
    boxes = torch.tensor(boxes, dtype=torch.float32)
    classes = torch.zeros(len(boxes)) if classes is None else torch.tensor(classes, dtype=torch.float32)
    relative = torch.tensor(variance, dtype=torch.float32)
    return variance_voting(boxes, relative, classes, torch.tensor(keep), iou_thres)


def test_variance_voting_of_a_lone_box_is_the_identity():
    assert torch.equal(_vote([[10.0, 20.0, 50.0, 70.0]], [[0.3, 0.01, 0.3, 0.01]]), torch.tensor([[10.0, 20, 50, 70]]))


def test_two_equal_variance_boxes_give_their_iou_weighted_mean():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]])
    weight = torch.exp(-(1 - box_iou(boxes[:1], boxes[1:])[0, 0]) ** 2 / FUSION_SIGMA_T)  # the kept box weighs 1
    # equal pixel variances: the relative variance is scaled by the (equal) squared sizes
    fused = _vote(boxes.tolist(), [[0.01] * 4, [0.01] * 4])
    torch.testing.assert_close(fused[0], (boxes[0] + weight * boxes[1]) / (1 + weight))
    assert 0 < fused[0, 0] < 1  # between the two


def test_a_box_with_tiny_variance_dominates_the_vote():
    fused = _vote([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]], [[0.1] * 4, [1e-9] * 4])
    torch.testing.assert_close(fused[0], torch.tensor([1.0, 1.0, 11.0, 11.0]), atol=1e-4, rtol=0)


def test_votes_come_only_from_the_same_class_above_the_iou_threshold():
    boxes = [[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [6.0, 6.0, 16.0, 16.0]]  # IoU 0.68 and 0.09 with box 0
    variance = [[0.01] * 4] * 3
    assert torch.equal(_vote(boxes, variance, classes=[0, 1, 0]), torch.tensor([[0.0, 0, 10, 10]]))
    assert _vote(boxes, variance, classes=[0, 0, 0])[0, 0] > 0
    assert torch.equal(_vote(boxes, variance, classes=[0, 0, 0], iou_thres=0.7), torch.tensor([[0.0, 0, 10, 10]]))


def test_nms_with_fusion_refines_the_kept_boxes_and_drops_the_variance_columns():
    # rows cx, cy, w, h, obj, cls0, cls1, uncertainty, 4 relative side variances
    rows = torch.tensor([[20.0, 20, 10, 10, 0.9, 0.9, 0.1, 1.5, 0.01, 0.01, 0.01, 0.01],
                         [21.0, 21, 10, 10, 0.8, 0.9, 0.1, 1.6, 0.01, 0.01, 0.01, 0.01],
                         [60.0, 60, 10, 10, 0.8, 0.1, 0.9, 1.7, 0.01, 0.01, 0.01, 0.01]])
    plain = non_max_suppression(rows[None, :, :8], conf_thres=0.25, iou_thres=0.5, nc=2)[0]
    fused = non_max_suppression(rows[None], conf_thres=0.25, iou_thres=0.5, nc=2, cbbl_fusion=True)[0]
    assert plain.shape == fused.shape == (2, 7)
    assert torch.equal(fused[:, 4:], plain[:, 4:])  # scores, classes, uncertainty unchanged
    assert fused[0, 0] > plain[0, 0] and torch.equal(fused[1, :4], plain[1, :4])  # the lone box stays as it was
    with pytest.raises(ValueError, match="variance columns"):
        non_max_suppression(rows[None, :, :8], nc=2, cbbl_fusion=True)


@pytest.mark.parametrize("per_class_min_boxes", [4000, 10])  # one pass over all candidates; class by class
def test_variance_voting_equals_a_box_by_box_loop(per_class_min_boxes, monkeypatch):
    monkeypatch.setattr(nms_module, "_PER_CLASS_MIN_BOXES", per_class_min_boxes)
    boxes = random_boxes(60, size=60.0, seed=3)
    classes = torch.randint(0, 3, (60,), generator=torch.Generator().manual_seed(3)).float()
    relative = torch.rand(60, 4, generator=torch.Generator().manual_seed(4)) * 0.1 + 1e-3
    keep = torch.tensor([5, 0, 17, 42, 33])
    fused = variance_voting(boxes, relative, classes, keep, 0.3)
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    for index, kept in enumerate(keep.tolist()):
        numerator, denominator = torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
        for other in range(60):
            iou = box_iou(boxes[kept : kept + 1], boxes[other : other + 1])[0, 0].double()
            if classes[other] == classes[kept] and (iou > 0.3 or other == kept):
                weight = torch.exp(-(1 - iou) ** 2 / FUSION_SIGMA_T) / (relative[other] * size[other] ** 2).double()
                numerator += weight * boxes[other].double()
                denominator += weight
        torch.testing.assert_close(fused[index].double(), numerator / denominator, rtol=1e-5, atol=1e-4)
