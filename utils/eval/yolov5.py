"""YOLOv5 v7.0's validation metric (``val.py`` + ``ap_per_class``), our own code following its rules exactly.

This is the table YOLOv5 and TPH-YOLOv5 users compare against, and the default of val.py and training:

- matching, per image and IoU threshold: every (label, detection) pair of the same class with IoU >=
  the threshold is a candidate; candidates are ordered by decreasing IoU, each detection keeps its best one,
  then each label keeps the candidate of its lowest-index (highest-score) detection. No ignore regions,
  no area ranges, all detections up to ``max_det`` per image count;
- AP per class: detections sorted by decreasing score over the whole set, precision envelope sampled at
  101 recall points and integrated with the trapezoid rule (not averaged, unlike COCO);
- P and R: per class at the one confidence that maximises the smoothed mean F1 (utils.eval.metrics.pr_curves);
- only classes with labels get a row; a class with labels but no detections has AP 0 and counts in the means;
  with no true positive at all, every figure is 0.
Sorting uses numpy's default (unstable) argsort on float32 values, as YOLOv5 does, so ties break the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from utils.eval.metrics import IOU_THRESHOLDS, RECALL_EPS, BoxSet, PRCurves, pr_curves

# The recall samples of YOLOv5's compute_ap ('interp' method).
AP_RECALL_POINTS = np.linspace(0.0, 1.0, 101)
# YOLOv5's box_iou guard against empty unions.
IOU_EPS = 1e-7


@dataclass
class Yolov5Result:
    """YOLOv5 figures; rows of ``ap`` and of ``curves`` follow ``curves.classes`` (classes with labels)."""

    correct: np.ndarray  # (D, T) bool, detection is a TP at each IoU threshold
    ap: np.ndarray  # (k, T) AP per class and threshold
    curves: PRCurves  # P, R, F1 at the best mean-F1 confidence, and the curves

    @property
    def map50(self) -> float:
        return float(self.ap[:, 0].mean()) if self.has_tp else 0.0

    @property
    def map50_95(self) -> float:
        return float(self.ap.mean()) if self.has_tp else 0.0

    @property
    def map75(self) -> float:
        return float(self.ap[:, 5].mean()) if self.has_tp else 0.0

    @property
    def has_tp(self) -> bool:
        return bool(self.correct.any())


def pairwise_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) xyxy -> (N, M) IoU in float32 with YOLOv5's epsilon in the union."""
    boxes1, boxes2 = boxes1.astype(np.float32), boxes2.astype(np.float32)
    top_left = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    inter = np.clip(bottom_right - top_left, 0, None).prod(2)  # (N, M)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).prod(1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).prod(1)
    return inter / (area1[:, None] + area2[None, :] - inter + np.float32(IOU_EPS))


def match_image(det_boxes: np.ndarray, det_class: np.ndarray, gt_boxes: np.ndarray, gt_class: np.ndarray,
                thresholds: np.ndarray = IOU_THRESHOLDS) -> np.ndarray:
    """YOLOv5's per-image matching (module docstring) -> (D, T) bool correct.

    Args:
        det_boxes: (D, 4) xyxy pixels in NMS output order (decreasing score); det_class: (D,).
        gt_boxes: (M, 4) xyxy pixels; gt_class: (M,).
    """
    correct = np.zeros((len(det_boxes), len(thresholds)), bool)
    if len(det_boxes) == 0 or len(gt_boxes) == 0:
        return correct
    iou = pairwise_iou(gt_boxes, det_boxes)  # (M, D)
    same_class = gt_class[:, None] == det_class[None, :]  # (M, D)
    for index, threshold in enumerate(thresholds.astype(np.float32)):
        gt_idx, det_idx = np.nonzero((iou >= threshold) & same_class)  # row-major, as torch.where
        if len(gt_idx) == 0:
            continue
        pair_iou = iou[gt_idx, det_idx]
        if len(gt_idx) > 1:
            by_iou = pair_iou.argsort()[::-1]
            gt_idx, det_idx = gt_idx[by_iou], det_idx[by_iou]
            _, first = np.unique(det_idx, return_index=True)  # each detection: its best label
            gt_idx, det_idx = gt_idx[first], det_idx[first]
            _, first = np.unique(gt_idx, return_index=True)  # each label: its lowest-index detection
            gt_idx, det_idx = gt_idx[first], det_idx[first]
        correct[det_idx, index] = True
    return correct


def ap_101(recall: np.ndarray, precision: np.ndarray) -> float:
    """YOLOv5's compute_ap: the precision envelope over [0, recall..., 1], sampled at 101 recall points and
    integrated with the trapezoid rule. recall, precision: (D,) cumulative curves in score order."""
    padded_recall = np.concatenate(([0.0], recall, [1.0]))
    envelope = np.flip(np.maximum.accumulate(np.flip(np.concatenate(([1.0], precision, [0.0])))))
    return float(np.trapezoid(np.interp(AP_RECALL_POINTS, padded_recall, envelope), AP_RECALL_POINTS))


def ap_per_class(correct: np.ndarray, conf: np.ndarray, pred_class: np.ndarray,
                 target_class: np.ndarray) -> tuple[np.ndarray, PRCurves]:
    """AP (k, T) and the P/R/F1 operating point of each class with labels.

    Args:
        correct: (D, T) bool over all images; conf: (D,) scores; pred_class: (D,); target_class: (M,) labels.
    """
    curves_input = correct[:, 0], conf, pred_class  # pr_curves sorts them exactly as below
    order = np.argsort(-conf.astype(np.float32))
    correct, pred_class = correct[order], pred_class[order]
    classes, instances = np.unique(target_class.astype(np.int64), return_counts=True)
    ap = np.zeros((len(classes), correct.shape[1]))
    for row, (cls, num_labels) in enumerate(zip(classes, instances)):
        mine = pred_class == cls
        if not mine.any():
            continue
        true_pos = correct[mine].cumsum(0)  # (d, T)
        false_pos = (1 - correct[mine]).cumsum(0)
        recall, precision = true_pos / (num_labels + RECALL_EPS), true_pos / (true_pos + false_pos)
        ap[row] = [ap_101(recall[:, column], precision[:, column]) for column in range(correct.shape[1])]
    curves = pr_curves(*curves_input, dict(zip(classes.tolist(), instances.tolist())))
    return ap, curves


def evaluate(dets: BoxSet, gts: BoxSet, image_ids: np.ndarray) -> Yolov5Result:
    """YOLOv5's figures for detections (in NMS output order per image) against labels.

    Args:
        dets, gts: boxes in original-image pixels; dets need scores. ``gts.ignore`` rows are left out (YOLO
            label files have none).
        image_ids: (I,) the evaluated images.
    """
    gts = gts.subset(~gts.ignore)
    correct = np.zeros((len(dets), len(IOU_THRESHOLDS)), bool)
    det_order, gt_order = np.argsort(dets.image, kind="stable"), np.argsort(gts.image, kind="stable")
    det_bounds = np.searchsorted(dets.image[det_order], image_ids, "left"), np.searchsorted(
        dets.image[det_order], image_ids, "right")
    gt_bounds = np.searchsorted(gts.image[gt_order], image_ids, "left"), np.searchsorted(
        gts.image[gt_order], image_ids, "right")
    for det_lo, det_hi, gt_lo, gt_hi in zip(*det_bounds, *gt_bounds):  # one image at a time, as YOLOv5
        det_rows, gt_rows = det_order[det_lo:det_hi], gt_order[gt_lo:gt_hi]
        correct[det_rows] = match_image(dets.boxes[det_rows], dets.category[det_rows], gts.boxes[gt_rows],
                                        gts.category[gt_rows])
    ap, curves = ap_per_class(correct, dets.score, dets.category, gts.category)
    return Yolov5Result(correct, ap, curves)
