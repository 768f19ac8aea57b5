"""utils/eval/metrics.py: matching engine, AP interpolation, P/R/F1 operating point, confusion matrix."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.eval.metrics import (
    BoxSet,
    ConfusionMatrix,
    ap_all_points,
    coco101_precision,
    cumulative_pr,
    greedy_match,
    overlap_pairs,
    pr_curves,
    rank_in_group,
)

THR = np.array([0.5])


def _match(dets: BoxSet, gts: BoxSet, thresholds=THR):
    pairs = overlap_pairs(dets, gts, gts.ignore, float(thresholds.min()))
    group = dets.image * 1000 + dets.category
    return greedy_match(rank_in_group(group, dets.score), *pairs, gts.ignore[None], gts.ignore, thresholds)


def test_rank_in_group_orders_by_score_with_stable_ties():
    rank = rank_in_group(np.array([0, 0, 1, 0, 1]), np.array([0.5, 0.9, 0.1, 0.5, 0.3]))
    assert rank.tolist() == [1, 0, 1, 2, 0]


def test_greedy_match_hand_case():
    """Two GTs, three detections: the higher-scoring det takes the GT it overlaps most; the next one falls back."""
    gts = BoxSet([0, 0], [[0, 0, 10, 10], [6, 0, 16, 10]], [0, 0])
    dets = BoxSet([0, 0, 0], [[5, 0, 15, 10], [0, 0, 10, 10], [0, 0, 10, 10]], [0, 0, 0], score=[0.9, 0.8, 0.7])
    state, matched = _match(dets, gts)
    # det0 overlaps GT1 (IoU 9/11) more than GT0 (5/15); det1 takes GT0; det2 is a duplicate
    assert state[0, 0].tolist() == [1, 1, 0]
    assert matched[0, 0].tolist() == [True, True]


def test_ordinary_gt_preferred_over_better_ignore_gt():
    gts = BoxSet([0, 0], [[0, 0, 10, 10], [0, 0, 10, 10.5]], [0, 0], ignore=[True, False])
    dets = BoxSet([0], [[0, 0, 10, 10]], [0], score=[0.9])
    state, _ = _match(dets, gts)
    assert state[0, 0, 0] == 1  # matched the ordinary GT although the ignore GT overlaps more


def test_class_mismatch_and_threshold_per_channel():
    gts = BoxSet([0, 0], [[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1])
    dets = BoxSet([0, 0], [[0, 0, 10, 10], [20, 20, 30, 36]], [1, 1], score=[0.9, 0.8])  # IoU(det1, GT1) = 10/16
    state, _ = _match(dets, gts, np.array([0.5, 0.75]))
    assert state[0, :, 0].tolist() == [0, 0]  # wrong class: FP at every threshold
    assert state[0, :, 1].tolist() == [1, 0]


@settings(deadline=None, max_examples=15)
@given(st.integers(0, 10_000))
def test_batched_matching_equals_per_image(seed: int):
    rng = np.random.default_rng(seed)
    num_gt, num_det = 30, 50
    xy = rng.uniform(0, 60, (num_gt, 2))
    boxes = np.c_[xy, xy + rng.uniform(4, 20, (num_gt, 2))]
    gts = BoxSet(rng.integers(0, 3, num_gt), boxes, rng.integers(0, 2, num_gt), ignore=rng.random(num_gt) < 0.2)
    picks = rng.integers(0, num_gt, num_det)
    dets = BoxSet(gts.image[picks], gts.boxes[picks] + rng.normal(0, 2, (num_det, 4)), gts.category[picks],
                  score=rng.random(num_det))
    state, _ = _match(dets, gts, np.array([0.5, 0.7]))
    for image in range(3):
        per_image, _ = _match(dets.subset(dets.image == image), gts.subset(gts.image == image), np.array([0.5, 0.7]))
        assert np.array_equal(per_image, state[:, :, dets.image == image])


def test_all_point_ap_hand_case():
    # TP, FP, TP with 2 GTs: recall .5, .5, 1; precision 1, .5, .667 -> AP = .5 * 1 + .5 * .667
    recall, precision = cumulative_pr(np.array([[1, 0, 1]]), np.array([[0, 1, 0]]), 2)
    assert ap_all_points(recall, precision)[0] == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-9)
    assert ap_all_points(np.zeros((1, 0)), np.zeros((1, 0)))[0] == 0.0


def test_coco101_ap_hand_case():
    recall, precision = cumulative_pr(np.array([[1, 0, 1]]), np.array([[0, 1, 0]]), 2)
    # recall points 0..0.5 (51 points) at precision 1, 0.51..1.0 (50 points) at 2/3
    assert coco101_precision(recall, precision).mean(-1)[0] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-6)


@settings(deadline=None, max_examples=25)
@given(st.lists(st.booleans(), min_size=1, max_size=40), st.integers(1, 50))
def test_ap_lies_in_unit_interval(hits: list[bool], extra_gt: int):
    is_tp = np.array(hits)[None]
    recall, precision = cumulative_pr(is_tp, ~is_tp, int(is_tp.sum()) + extra_gt)
    for ap in (ap_all_points(recall, precision)[0], coco101_precision(recall, precision).mean(-1)[0]):
        assert 0.0 <= ap <= 1.0


def test_pr_curves_operating_point():
    is_tp = np.array([True, True, False, True, False])
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.2])
    curves = pr_curves(is_tp, conf, np.zeros(5, int), {0: 4, 1: 0})
    assert curves.classes.tolist() == [0]  # class 1 has no GT: no row
    assert 0.5 <= curves.precision[0] <= 1.0 and 0.5 <= curves.recall[0] <= 0.75
    assert curves.p_curve.shape == (1, 1000) and curves.pr_curve.shape == (1, 101)


def test_confusion_matrix_hand_case():
    matrix = ConfusionMatrix(nc=2, conf_thres=0.25, iou_thres=0.45)
    gt_boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], float)
    det_boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [60, 60, 70, 70], [40, 40, 50, 50]], float)
    matrix.update(det_boxes, np.array([0.9, 0.9, 0.9, 0.1]), np.array([0, 0, 1, 1]), gt_boxes, np.array([0, 1, 1]))
    expected = np.array([[1, 1, 0], [0, 0, 1], [0, 1, 0]])  # rows predicted, columns true, last = background
    assert np.array_equal(matrix.matrix, expected)


def test_boxset_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="disagree"):
        BoxSet([0, 1], [[0, 0, 1, 1]], [0, 0])


def test_paired_overlap_is_exact_and_matches_box_iou():
    import torch

    from utils.boxes import box_iou, paired_overlap

    boxes1 = np.array([[0, 0, 4, 4], [0, 0, 10, 10], [0, 0, 0, 0]], float)
    boxes2 = np.array([[0, 0, 4, 3], [5, 5, 15, 15], [0, 0, 0, 0]], float)
    iou = paired_overlap(boxes1, boxes2, np.zeros(3, bool))
    assert iou[0] == 0.75  # exactly, so it passes a 0.75 threshold like pycocotools
    assert iou[1] == pytest.approx(box_iou(torch.tensor(boxes1[1:2]), torch.tensor(boxes2[1:2])).item())
    assert iou[2] == 0.0  # degenerate boxes: no NaN
    assert paired_overlap(boxes1, boxes2, np.ones(3, bool))[1] == 0.25  # intersection / area of boxes1
