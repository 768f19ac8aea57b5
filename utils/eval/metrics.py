"""Detection metrics: greedy score-ordered matching, AP interpolation, P/R/F1, confusion matrix.

The matching engine :func:`greedy_match` is shared by the COCO (utils/eval/coco.py) and VisDrone
(utils/eval/visdrone.py) protocols; both match each detection, highest score first, to the free
ground truth (GT) of its image and class with the largest overlap >= the IoU threshold, preferring
ordinary GTs over "ignore" GTs. It is vectorised over detections: the only Python loop runs over the
rank of a detection inside its (image, class) group, so at most max-detections-per-image steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from utils.boxes import box_area, box_iou, paired_overlap

# COCO's IoU thresholds .50:.05:.95 (both protocols use them).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
# COCO's 101 recall points for interpolated precision.
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
# Confidence grid for the P/R/F1-vs-confidence curves.
CONF_POINTS = np.linspace(0.0, 1.0, 1000)
# Candidate (detection, GT) pairs formed at once by overlap_pairs; bounds its memory (~100 MB).
PAIR_CHUNK = 2_000_000
# YOLOv5's guard in recall = TP / (labels + eps) and F1 = 2PR / (P + R + eps).
RECALL_EPS = 1e-16
# Width (fraction of the grid) of the box filter smoothing the mean F1 curve before its argmax.
F1_SMOOTH_FRACTION = 0.1


@dataclass
class BoxSet:
    """A flat set of boxes over many images (GTs or detections), in original-image pixels.

    ``ignore`` marks GTs that only absorb detections (COCO ``iscrowd``, VisDrone score-0 boxes);
    ``area`` is the area a protocol bins by (COCO: the annotation's ``area`` field when given).
    """

    image: np.ndarray  # (N,) int64 image ids
    boxes: np.ndarray  # (N, 4) float64 xyxy pixels
    category: np.ndarray  # (N,) int64
    score: np.ndarray = field(default=None)  # (N,) float64, 1 for GTs
    area: np.ndarray = field(default=None)  # (N,) float64, w * h when not given
    ignore: np.ndarray = field(default=None)  # (N,) bool

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, np.int64).reshape(-1)
        self.boxes = np.asarray(self.boxes, np.float64).reshape(-1, 4)
        self.category = np.asarray(self.category, np.int64).reshape(-1)
        num = len(self.image)
        self.score = np.ones(num) if self.score is None else np.asarray(self.score, np.float64).reshape(-1)
        default_area = box_area(self.boxes)
        self.area = default_area if self.area is None else np.asarray(self.area, np.float64).reshape(-1)
        self.ignore = np.zeros(num, bool) if self.ignore is None else np.asarray(self.ignore, bool).reshape(-1)
        lengths = {len(self.boxes), len(self.category), len(self.score), len(self.area), len(self.ignore)}
        if lengths != {num}:
            raise ValueError(f"BoxSet fields disagree in length: image {num}, others {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.image)

    def subset(self, mask: np.ndarray) -> BoxSet:
        """The rows selected by a (N,) bool mask or an index array."""
        return BoxSet(self.image[mask], self.boxes[mask], self.category[mask], self.score[mask], self.area[mask],
                      self.ignore[mask])


def overlap_pairs(dets: BoxSet, gts: BoxSet, gt_use_ioa: np.ndarray,
                  min_overlap: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse (detection, GT) overlaps of the same image and category, kept where >= ``min_overlap``.

    Every same-group pair is formed with array arithmetic (no loop over images or boxes), in chunks of
    at most :data:`PAIR_CHUNK` pairs to bound memory on crowded single-class data.

    Args:
        dets: D detections; gts: G ground truths.
        gt_use_ioa: (G,) bool, overlap = intersection / detection area for these GTs (crowd or ignore
            boxes, which a detection may match anywhere inside), IoU for the rest.
    Returns:
        pair_det (P,), pair_gt (P,) int64 indices and pair_overlap (P,) float64 (exact, no epsilon).
    """
    low = min(dets.category.min(initial=0), gts.category.min(initial=0))
    span = max(dets.category.max(initial=0), gts.category.max(initial=0)) - low + 1
    gt_key, det_key = gts.image * span + gts.category - low, dets.image * span + dets.category - low
    gt_order = np.argsort(gt_key, kind="stable")
    first = np.searchsorted(gt_key[gt_order], det_key, "left")  # (D,) first GT of each detection's group
    counts = np.searchsorted(gt_key[gt_order], det_key, "right") - first  # (D,) GTs in that group
    ends = np.cumsum(counts)
    total = int(ends[-1]) if len(ends) else 0
    chunk_edges = np.unique(np.r_[0, np.searchsorted(ends, np.arange(PAIR_CHUNK, total, PAIR_CHUNK)), len(counts)])
    parts = []
    for lo, hi in zip(chunk_edges[:-1], chunk_edges[1:]):  # a few chunks of detections
        pair_det = np.repeat(np.arange(lo, hi), counts[lo:hi])  # (p,)
        offset = np.arange(len(pair_det)) - np.repeat(ends[lo:hi] - counts[lo:hi] - (ends[lo - 1] if lo else 0),
                                                      counts[lo:hi])
        pair_gt = gt_order[first[pair_det] + offset]  # (p,)
        overlap = paired_overlap(dets.boxes[pair_det], gts.boxes[pair_gt], gt_use_ioa[pair_gt])
        keep = overlap >= min_overlap
        parts.append((pair_det[keep], pair_gt[keep], overlap[keep]))
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return tuple(np.concatenate(column) for column in zip(*parts))  # type: ignore[return-value]


def rank_in_group(group: np.ndarray, score: np.ndarray) -> np.ndarray:
    """(D,) position of each detection in its group by decreasing score (ties: input order, 0-based)."""
    order = np.lexsort((np.arange(len(group)), -score, group))
    sorted_group = group[order]
    starts = np.r_[0, np.flatnonzero(sorted_group[1:] != sorted_group[:-1]) + 1] if len(group) else np.zeros(0, int)
    rank_sorted = np.arange(len(group)) - np.repeat(starts, np.diff(np.r_[starts, len(group)]))
    rank = np.empty(len(group), np.int64)
    rank[order] = rank_sorted
    return rank


def greedy_match(det_rank: np.ndarray, pair_det: np.ndarray, pair_gt: np.ndarray, pair_overlap: np.ndarray,
                 gt_ignore: np.ndarray, gt_reusable: np.ndarray,
                 thresholds: np.ndarray = IOU_THRESHOLDS) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching of pycocotools ``evaluateImg`` / the VisDrone toolkit's ``evalRes.m``.

    For each detection in decreasing score order within its group: among GTs with overlap >= threshold
    that are free (or reusable), take an ordinary GT with the largest overlap (ties: the later GT, as both
    references do); only if there is none, an ignore GT. Matching an ordinary GT makes a TP (1), an
    ignore GT a neutral detection (-1); unmatched detections stay 0 (FP).

    Args:
        det_rank: (D,) rank of each detection inside its (image, class) group (:func:`rank_in_group`).
        pair_det, pair_gt, pair_overlap: (P,) sparse candidate pairs from :func:`overlap_pairs`.
        gt_ignore: (C, G) bool, ignore flags per channel (e.g. one channel per COCO area range).
        gt_reusable: (G,) bool, GTs that can absorb several detections (crowd / VisDrone ignore boxes).
        thresholds: (T,) overlap thresholds.
    Returns:
        det_state (C, T, D) int8 in {1, 0, -1} and gt_matched (C, T, G) bool.
    """
    num_channels, num_gt = gt_ignore.shape
    det_state = np.zeros((num_channels, len(thresholds), len(det_rank)), np.int8)
    gt_matched = np.zeros((num_channels, len(thresholds), num_gt), bool)
    if len(pair_det) == 0:
        return det_state, gt_matched
    order = np.lexsort((pair_gt, pair_det, det_rank[pair_det]))
    pair_det, pair_gt, pair_overlap = pair_det[order], pair_gt[order], pair_overlap[order]
    pair_rank = det_rank[pair_det]
    step_bounds = np.flatnonzero(np.r_[True, pair_rank[1:] != pair_rank[:-1], True])
    for lo, hi in zip(step_bounds[:-1], step_bounds[1:]):  # one detection per group per step
        dets, gts, overlap = pair_det[lo:hi], pair_gt[lo:hi], pair_overlap[lo:hi]
        seg_starts = np.flatnonzero(np.r_[True, dets[1:] != dets[:-1]])
        taken = gt_matched[:, :, gts] & ~gt_reusable[gts]  # (C, T, p)
        valid = (overlap[None, None, :] >= thresholds[None, :, None]) & ~taken  # (C, T, p)
        key = np.where(valid, overlap + 2.0 * ~gt_ignore[:, None, gts], -1.0)  # ordinary GTs first
        best = np.maximum.reduceat(key, seg_starts, axis=2)  # (C, T, S)
        seg_len = np.diff(np.r_[seg_starts, len(dets)])
        is_best = valid & (key == np.repeat(best, seg_len, axis=2))  # (C, T, p)
        chosen = np.maximum.reduceat(np.where(is_best, np.arange(len(dets)), -1), seg_starts, axis=2)
        chan, thr, _ = np.nonzero(chosen >= 0)
        pair = chosen[chosen >= 0]
        det_state[chan, thr, dets[pair]] = np.where(gt_ignore[chan, gts[pair]], -1, 1)
        gt_matched[chan, thr, gts[pair]] = True
    return det_state, gt_matched


def cumulative_pr(is_tp: np.ndarray, is_fp: np.ndarray, num_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative recall and precision (T, D) of detections already sorted by decreasing score.

    Precision adds COCO's ``np.spacing(1)`` to its denominator; recall is 0 when ``num_gt`` is 0.
    """
    tp, fp = np.cumsum(is_tp, axis=-1, dtype=np.float64), np.cumsum(is_fp, axis=-1, dtype=np.float64)
    recall = tp / num_gt if num_gt else np.zeros_like(tp)
    return recall, tp / (tp + fp + np.spacing(1))


def coco101_precision(recall: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """(T, D) curves -> (T, 101) interpolated precision at :data:`RECALL_POINTS` (pycocotools ``accumulate``)."""
    recall, precision = np.atleast_2d(recall), np.atleast_2d(precision)
    envelope = np.flip(np.maximum.accumulate(np.flip(precision, -1), axis=-1), -1)  # (T, D)
    out = np.zeros((recall.shape[0], len(RECALL_POINTS)))
    for row in range(recall.shape[0]):
        idx = np.searchsorted(recall[row], RECALL_POINTS, side="left")
        inside = idx < recall.shape[1]
        out[row, inside] = envelope[row, idx[inside]]
    return out


def ap_all_points(recall: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """All-point (VOC 2010+) AP, as the VisDrone toolkit's ``VOCap.m``: area under the precision envelope.

    Args:
        recall, precision: (T, D) cumulative curves (may be empty along D).
    Returns:
        (T,) AP in [0, 1].
    """
    recall, precision = np.atleast_2d(recall), np.atleast_2d(precision)
    num_rows = recall.shape[0]
    mrec = np.concatenate([np.zeros((num_rows, 1)), recall, np.ones((num_rows, 1))], axis=1)  # (T, D + 2)
    mpre = np.concatenate([np.zeros((num_rows, 1)), precision, np.zeros((num_rows, 1))], axis=1)
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre, -1), axis=-1), -1)
    steps = np.diff(mrec, axis=1)  # (T, D + 1), zero where recall does not change
    return (steps * mpre[:, 1:]).sum(axis=1)


@dataclass
class PRCurves:
    """YOLOv5-style operating point and curves per class (rows follow ``classes``)."""

    classes: np.ndarray  # (k,) class ids with GTs
    precision: np.ndarray  # (k,) at the confidence of the best mean F1
    recall: np.ndarray  # (k,)
    f1: np.ndarray  # (k,)
    best_conf: float
    conf_points: np.ndarray  # (1000,)
    p_curve: np.ndarray  # (k, 1000) precision vs confidence
    r_curve: np.ndarray  # (k, 1000) recall vs confidence
    f1_curve: np.ndarray  # (k, 1000)
    pr_curve: np.ndarray  # (k, 101) interpolated precision at RECALL_POINTS (IoU .5)


def pr_curves(is_tp: np.ndarray, conf: np.ndarray, pred_class: np.ndarray, gt_count: dict[int, int]) -> PRCurves:
    """P, R and F1 at the confidence maximising the (smoothed) mean F1 over classes, as YOLOv5's ap_per_class.

    Only classes with GTs get a row (as YOLOv5): detections of other classes do not lower P. Detections are
    ordered by numpy's default argsort of the float32 scores, as YOLOv5 orders them, so tied scores fall the
    same way.

    Args:
        is_tp: (D,) bool TP at IoU .5 for counted detections (ignored detections removed beforehand).
        conf: (D,) scores; pred_class: (D,) int.
        gt_count: class id -> number of counted GTs.
    """
    order = np.argsort(-conf.astype(np.float32))
    is_tp, conf, pred_class = is_tp[order], conf[order].astype(np.float32), pred_class[order]
    classes = np.array(sorted(k for k, v in gt_count.items() if v > 0), dtype=np.int64)
    p_curve, r_curve = np.zeros((len(classes), len(CONF_POINTS))), np.zeros((len(classes), len(CONF_POINTS)))
    pr_curve = np.zeros((len(classes), len(RECALL_POINTS)))
    for row, cls in enumerate(classes):  # one class at a time, vectorised over its detections
        tp_sorted, conf_sorted = is_tp[pred_class == cls], conf[pred_class == cls]
        if len(tp_sorted) == 0:
            continue
        true_pos, false_pos = np.cumsum(tp_sorted, dtype=np.float64), np.cumsum(~tp_sorted, dtype=np.float64)
        recall, precision = true_pos / (gt_count[int(cls)] + RECALL_EPS), true_pos / (true_pos + false_pos)
        r_curve[row] = np.interp(-CONF_POINTS, -conf_sorted, recall, left=0)
        p_curve[row] = np.interp(-CONF_POINTS, -conf_sorted, precision, left=1)
        pr_curve[row] = coco101_precision(recall[None], precision[None])[0]
    f1_curve = 2 * p_curve * r_curve / (p_curve + r_curve + RECALL_EPS)
    width = max(1, round(len(CONF_POINTS) * F1_SMOOTH_FRACTION / 2) * 2 + 1)
    padded = np.pad(f1_curve.mean(0) if len(classes) else np.zeros(len(CONF_POINTS)), width // 2, mode="edge")
    best = int(np.convolve(padded, np.ones(width) / width, mode="valid").argmax())
    return PRCurves(classes, p_curve[:, best], r_curve[:, best], f1_curve[:, best], float(CONF_POINTS[best]),
                    CONF_POINTS, p_curve, r_curve, f1_curve, pr_curve)


class ConfusionMatrix:
    """(nc + 1, nc + 1) counts, rows = predicted class, columns = true class; index nc = background.

    A detection (score >= ``conf_thres``) and a GT pair up class-agnostically by IoU > ``iou_thres``,
    each at most once, largest IoU first (YOLOv5's convention).
    """

    def __init__(self, nc: int, conf_thres: float = 0.25, iou_thres: float = 0.45):
        self.nc, self.conf_thres, self.iou_thres = nc, conf_thres, iou_thres
        self.matrix = np.zeros((nc + 1, nc + 1), np.int64)

    def update(self, det_boxes: np.ndarray, det_scores: np.ndarray, det_class: np.ndarray, gt_boxes: np.ndarray,
               gt_class: np.ndarray) -> None:
        """Add one image: det_boxes (D, 4), gt_boxes (G, 4) xyxy pixels, scores (D,), classes int."""
        keep = det_scores >= self.conf_thres
        det_boxes, det_class = det_boxes[keep], det_class[keep].astype(np.int64)
        gt_class = gt_class.astype(np.int64)
        iou = box_iou(torch.as_tensor(det_boxes, dtype=torch.float64),
                      torch.as_tensor(gt_boxes, dtype=torch.float64)).numpy().reshape(len(det_boxes), len(gt_boxes))
        det_idx, gt_idx = np.nonzero(iou > self.iou_thres)
        order = np.argsort(-iou[det_idx, gt_idx], kind="stable")
        det_idx, gt_idx = det_idx[order], gt_idx[order]
        _, first = np.unique(det_idx, return_index=True)
        det_idx, gt_idx = det_idx[np.sort(first)], gt_idx[np.sort(first)]
        _, first = np.unique(gt_idx, return_index=True)
        det_idx, gt_idx = det_idx[first], gt_idx[first]
        np.add.at(self.matrix, (det_class[det_idx], gt_class[gt_idx]), 1)
        unmatched_gt = np.setdiff1d(np.arange(len(gt_class)), gt_idx)
        np.add.at(self.matrix, (self.nc, gt_class[unmatched_gt]), 1)
        unmatched_det = np.setdiff1d(np.arange(len(det_class)), det_idx)
        np.add.at(self.matrix, (det_class[unmatched_det], self.nc), 1)
