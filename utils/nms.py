"""Non-maximum suppression: torchvision's kernel when it loads, an exact pure-torch twin otherwise.

The pure-torch path reproduces greedy NMS without a Python loop over boxes: it iterates
"a box is suppressed iff a kept, higher-scoring box overlaps it" to its fixed point, which is
exactly the greedy result, in a handful of vectorised passes.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable, Optional

import torch

from utils.boxes import box_iou, cxcywh_to_xyxy

logger = logging.getLogger(__name__)

# Pairwise overlap matrices above this many boxes are built in row blocks to bound memory.
_IOU_BLOCK_ROWS = 4096
# Above this many boxes, class-aware NMS on CPU and variance voting run class by class: the pairwise work drops
# from n^2 to the sum of n_c^2 (torchvision's own batched_nms switches at the same size on CPU).
_PER_CLASS_MIN_BOXES = 4000
# YOLOv5's per-class box offset (its max_wh): classes are kept apart by shifting boxes by class * this many
# pixels. The shift is not exact in float32 (at class 79 a coordinate's step is 1/16 px), and YOLOv5's kept
# boxes are those of the shifted coordinates, so ours are too: the same detections, hence the same mAP.
CLASS_OFFSET_PX = 7680.0
# Variance voting (--cbbl-fusion): sigma_t of the IoU weight exp(-(1 - IoU)^2 / sigma_t) (He et al., CVPR 2019, a
# per-model setting there). 0.05 gave the best mAP50-95 of 0.005 / 0.02 / 0.05 / 0.1 for two C-BBL yolov5n checkpoints
# on the synthetic val set. Then the number of trailing prediction columns that hold the per-side
# variances (models.detect.SIDE_VARIANCE_COLUMNS; relative to the squared box side).
FUSION_SIGMA_T = 0.05
FUSION_COLUMNS = 4
# Kept boxes per block of the kept x same-class candidates overlap matrix in variance voting (bounds memory).
_FUSION_BLOCK_ROWS = 256
# Smallest relative variance a vote uses: a side decoded with all its mass on one bin would otherwise weigh infinity.
_MIN_RELATIVE_VARIANCE = 1e-12


@functools.lru_cache(maxsize=1)
def _torchvision_nms() -> Optional[Callable]:
    """torchvision.ops.nms if its compiled op works here, else None (warned once)."""
    try:
        from torchvision.ops import nms as tv_nms

        tv_nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
        return tv_nms
    except (ImportError, RuntimeError, AttributeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        logger.warning("torchvision NMS unavailable (%s); using the pure-torch NMS", reason)
        return None


def nms_torch(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float) -> torch.Tensor:
    """Exact greedy NMS in pure torch.

    Args:
        boxes: (N, 4) xyxy.
        scores: (N,) scores.
        iou_thres: boxes overlapping a kept, higher-scoring box by IoU > iou_thres are dropped.
    Returns:
        (n,) int64 indices into ``boxes`` of the kept boxes, by decreasing score.
    """
    order = scores.argsort(descending=True, stable=True)
    sorted_boxes = boxes[order]
    num = sorted_boxes.shape[0]
    if num == 0:
        return order
    overlaps = torch.empty((num, num), dtype=torch.bool, device=boxes.device)
    for start in range(0, num, _IOU_BLOCK_ROWS):
        rows = slice(start, start + _IOU_BLOCK_ROWS)
        overlaps[rows] = box_iou(sorted_boxes[rows], sorted_boxes) > iou_thres  # (rows, N)
    overlaps.triu_(diagonal=1)  # only a higher-scoring box (row i < column j) can suppress
    keep = torch.ones(num, dtype=torch.bool, device=boxes.device)
    while True:
        suppressed = (overlaps & keep[:, None]).any(0)  # (N,)
        new_keep = ~suppressed
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return order[keep]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float, backend: str = "auto",
        presorted: bool = False) -> torch.Tensor:
    """Greedy NMS; ``backend`` is ``auto`` (torchvision if usable), ``torchvision`` or ``torch``.

    ``presorted``: the caller guarantees ``scores`` are already in decreasing order (saves a sort).
    Returns (n,) int64 indices of kept boxes by decreasing score.
    """
    if backend not in ("auto", "torchvision", "torch"):
        raise ValueError(f"unknown NMS backend {backend!r}; expected auto, torchvision or torch")
    kernel = _torchvision_nms() if backend != "torch" else None
    if kernel is None:
        if backend == "torchvision":
            raise RuntimeError("torchvision NMS was requested but torchvision's ops cannot be loaded")
        return nms_torch(boxes, scores, iou_thres)
    if presorted:
        return kernel(boxes, scores, iou_thres)
    order = scores.argsort(descending=True)  # pre-sorted input measured 8-10% faster in torchvision's kernel
    return order[kernel(boxes[order], scores[order], iou_thres)]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_thres: float, backend: str = "auto",
    presorted: bool = False,
) -> torch.Tensor:
    """Class-aware NMS: boxes of different ``classes`` (N,) never suppress each other (``presorted`` as in nms).

    Boxes are shifted by ``class * CLASS_OFFSET_PX`` as YOLOv5 shifts them; on CPU, many boxes are then
    suppressed one class at a time (the same kept boxes, without the all-pairs cost across classes).
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    shifted = boxes + classes.to(boxes.dtype)[:, None] * CLASS_OFFSET_PX  # (N, 4)
    if boxes.device.type == "cpu" and len(boxes) > _PER_CLASS_MIN_BOXES:
        return _nms_class_by_class(shifted, scores, classes, iou_thres, backend, presorted)
    return nms(shifted, scores, iou_thres, backend, presorted)


def _nms_class_by_class(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_thres: float,
                        backend: str, presorted: bool) -> torch.Tensor:
    """batched_nms as one NMS per class: the same kept boxes, returned by decreasing score."""
    keep = []
    for value in classes.unique():
        members = (classes == value).nonzero().flatten()  # ascending: a presorted input stays sorted
        keep.append(members[nms(boxes[members], scores[members], iou_thres, backend, presorted)])
    kept = torch.cat(keep)
    if presorted:  # index order is score order, ties included, exactly as one pass over all classes gives
        return kept.sort().values
    return kept[scores[kept].argsort(descending=True, stable=True)]


def variance_voting(boxes: torch.Tensor, relative_variance: torch.Tensor, classes: torch.Tensor, keep: torch.Tensor,
                    iou_thres: float, sigma_t: float = FUSION_SIGMA_T) -> torch.Tensor:
    """Refine each kept box from the boxes around it, weighted by overlap and by each side's confidence.

    KL-Loss's variance voting (He et al., CVPR 2019): side s of kept box b becomes
    sum_i p_i x_i,s / var_i,s  /  sum_i p_i / var_i,s  over the candidates i of b's class whose IoU with b exceeds
    ``iou_thres`` (b itself included), with p_i = exp(-(1 - IoU(b, i))^2 / sigma_t).

    Args:
        boxes: (N, 4) xyxy candidates (NMS's input). relative_variance: (N, 4) each side's variance over the
            squared box width (x1, x2) or height (y1, y2). classes: (N,) class ids (all equal = class-agnostic).
        keep: (k,) indices of the kept boxes.
    Returns:
        (k, 4) refined xyxy boxes, in ``keep``'s order.
    """
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)  # (N, 4): w, h, w, h
    inverse_variance = 1 / (relative_variance * size ** 2).clamp(min=_MIN_RELATIVE_VARIANCE)  # (N, 4) 1 / px^2
    refined = boxes[keep].clone()  # (k, 4)
    kept_classes = classes[keep]
    for positions, members in _voting_groups(classes, kept_classes):
        for start in range(0, len(positions), _FUSION_BLOCK_ROWS):
            rows = positions[start : start + _FUSION_BLOCK_ROWS]  # (b,) rows of ``refined``
            iou = box_iou(boxes[keep[rows]], boxes[members])  # (b, n)
            near = (iou > iou_thres) & (classes[members] == kept_classes[rows, None])
            near[torch.arange(len(rows), device=boxes.device), torch.searchsorted(members, keep[rows])] = True  # self
            row, column = near.nonzero(as_tuple=True)
            vote = torch.exp(-(1 - iou[row, column]) ** 2 / sigma_t)[:, None] * inverse_variance[members[column]]
            total = boxes.new_zeros(len(rows), 4).index_add_(0, row, vote * boxes[members[column]])
            refined[rows] = total / boxes.new_zeros(len(rows), 4).index_add_(0, row, vote)
    return refined


def _voting_groups(classes: torch.Tensor, kept_classes: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(rows of the kept boxes, ascending candidate indices) whose overlaps variance voting computes: every kept
    box against every candidate while there are few (one pass; a class loop costs more than the overlaps), class
    by class above _PER_CLASS_MIN_BOXES (the sum of k_c x n_c, not k x N)."""
    if len(classes) <= _PER_CLASS_MIN_BOXES:
        return [(torch.arange(len(kept_classes), device=classes.device),
                 torch.arange(len(classes), device=classes.device))]
    return [((kept_classes == value).nonzero().flatten(), (classes == value).nonzero().flatten())
            for value in kept_classes.unique()]


# (conf_thres, max_candidates) settings whose cap has been logged: once per process, not once per batch.
_CAPS_LOGGED: set[tuple[float, int]] = set()


def warn_capped(count: int, conf_thres: float, max_candidates: int) -> None:
    """Say (once per setting and process) that an image had more boxes above conf than NMS takes."""
    if (conf_thres, max_candidates) in _CAPS_LOGGED:
        return
    _CAPS_LOGGED.add((conf_thres, max_candidates))
    logger.warning("NMS: %d candidates above conf %.3g in an image, keeping the top %d (further images over the "
                   "cap are not logged)", count, conf_thres, max_candidates)


def _candidates(image_pred: torch.Tensor, conf_thres: float, nc: int, multi_label: bool,
                classes: Optional[list[int]]) -> torch.Tensor:
    """One image's (N, 5 + nc + E) rows -> (n, 6 + E) ``x1, y1, x2, y2, conf, cls, extra..`` above ``conf_thres``,
    conf = obj * cls: every class above it with ``multi_label`` (one row per box and class), else the best one;
    only ``classes`` when given."""
    image_pred = image_pred[image_pred[:, 4] > conf_thres]
    boxes = cxcywh_to_xyxy(image_pred[:, :4])
    class_scores = image_pred[:, 5 : 5 + nc] * image_pred[:, 4:5]  # (n, nc)
    extras = image_pred[:, 5 + nc :]  # (n, E)
    if multi_label and nc > 1:
        box_idx, cls_idx = (class_scores > conf_thres).nonzero(as_tuple=True)
        conf = class_scores[box_idx, cls_idx]
    else:
        conf, cls_idx = class_scores.max(1)
        box_idx = torch.arange(len(conf), device=conf.device)
        box_idx, cls_idx, conf = box_idx[conf > conf_thres], cls_idx[conf > conf_thres], conf[conf > conf_thres]
    dets = torch.cat([boxes[box_idx], conf[:, None], cls_idx[:, None].float(), extras[box_idx]], 1)
    if classes is not None:
        dets = dets[(dets[:, 5:6] == torch.tensor(classes, device=dets.device)).any(1)]
    return dets


def non_max_suppression(
    prediction: torch.Tensor,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    classes: Optional[list[int]] = None,
    agnostic: bool = False,
    multi_label: bool = False,
    max_det: int = 300,
    nc: Optional[int] = None,
    max_candidates: int = 30000,
    backend: str = "auto",
    cbbl_fusion: bool = False,
) -> list[torch.Tensor]:
    """Decoded head output -> per-image detections.

    Args:
        prediction: (B, N, 5 + nc + E) rows ``cx, cy, w, h, obj, cls_0..cls_{nc-1}, extra_0..`` in
            pixels; the E extra columns (e.g. the C-BBL localization uncertainty) ride along.
        nc: number of classes; defaults to all columns after objectness (E = 0).
        max_candidates: boxes above ``conf_thres`` kept for NMS per image, highest first; the first image with
            more is logged once per process (never a silent cut, never one line per batch).
        cbbl_fusion: the last FUSION_COLUMNS of the E extra columns are per-side relative variances (a C-BBL decode
            with ``side_variance`` on): each kept box is refined by :func:`variance_voting` and those columns are
            dropped from the output.
    Returns:
        B tensors of (n, 6 + E): ``x1, y1, x2, y2, conf, cls, extra..``, by decreasing conf, n <= max_det (E without
        the variance columns under ``cbbl_fusion``).
    """
    if not (0 <= conf_thres <= 1 and 0 <= iou_thres <= 1):
        raise ValueError(f"conf_thres={conf_thres} and iou_thres={iou_thres} must lie in [0, 1]")
    nc = prediction.shape[2] - 5 if nc is None else nc
    num_extra = prediction.shape[2] - 5 - nc
    if cbbl_fusion and num_extra < FUSION_COLUMNS:
        raise ValueError(f"cbbl_fusion needs {FUSION_COLUMNS} per-side variance columns; the predictions have "
                         f"{num_extra} extra columns")
    kept_extra = num_extra - FUSION_COLUMNS if cbbl_fusion else num_extra
    outputs = []
    for image_pred in prediction:  # (N, 5 + nc + E)
        dets = _candidates(image_pred, conf_thres, nc, multi_label, classes)  # (n, 6 + E)
        if dets.shape[0] > max_candidates:
            warn_capped(len(dets), conf_thres, max_candidates)
        dets = dets[dets[:, 4].argsort(descending=True)[:max_candidates]]  # one sort: cap, and the kernel's order
        class_ids = torch.zeros_like(dets[:, 5]) if agnostic else dets[:, 5]
        keep = batched_nms(dets[:, :4], dets[:, 4], class_ids, iou_thres, backend, presorted=True)[:max_det]
        kept = dets[keep]
        if cbbl_fusion:
            kept[:, :4] = variance_voting(dets[:, :4], dets[:, 6 + kept_extra :], class_ids, keep, iou_thres)
        outputs.append(kept[:, : 6 + kept_extra].reshape(-1, 6 + kept_extra))
    return outputs
