"""Box formats, conversions and the IoU family. The only place box math lives.

Formats: ``xyxy`` (x1, y1, x2, y2) and ``cxcywh`` (centre x, centre y, width, height),
in pixels unless a name says ``n`` (normalised to [0, 1] by the image size).
Every function works on torch tensors and, where noted, numpy arrays.
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch

Array = Union[torch.Tensor, np.ndarray]

# Keeps divisions finite for degenerate (zero-size) boxes.
_EPS = 1e-7


def _clone(x: Array) -> Array:
    return x.clone() if isinstance(x, torch.Tensor) else np.copy(x)


def cxcywh_to_xyxy(boxes: Array) -> Array:
    """(..., 4) cxcywh -> (..., 4) xyxy; inverse of :func:`xyxy_to_cxcywh`."""
    out = _clone(boxes)
    out[..., 0] = boxes[..., 0] - boxes[..., 2] / 2
    out[..., 1] = boxes[..., 1] - boxes[..., 3] / 2
    out[..., 2] = boxes[..., 0] + boxes[..., 2] / 2
    out[..., 3] = boxes[..., 1] + boxes[..., 3] / 2
    return out


def xyxy_to_cxcywh(boxes: Array) -> Array:
    """(..., 4) xyxy -> (..., 4) cxcywh; inverse of :func:`cxcywh_to_xyxy`."""
    out = _clone(boxes)
    out[..., 0] = (boxes[..., 0] + boxes[..., 2]) / 2
    out[..., 1] = (boxes[..., 1] + boxes[..., 3]) / 2
    out[..., 2] = boxes[..., 2] - boxes[..., 0]
    out[..., 3] = boxes[..., 3] - boxes[..., 1]
    return out


def cxcywhn_to_xyxy(boxes: Array, width: float, height: float, pad_w: float = 0.0, pad_h: float = 0.0) -> Array:
    """(..., 4) normalised cxcywh -> (..., 4) xyxy pixels of a (height, width) image, shifted by a padding."""
    out = cxcywh_to_xyxy(boxes)
    out[..., 0::2] = out[..., 0::2] * width + pad_w
    out[..., 1::2] = out[..., 1::2] * height + pad_h
    return out


def xyxy_to_cxcywhn(boxes: Array, width: float, height: float) -> Array:
    """(..., 4) xyxy pixels -> (..., 4) cxcywh normalised by (width, height); inverse of the above (no pad)."""
    out = xyxy_to_cxcywh(boxes)
    out[..., 0::2] = out[..., 0::2] / width
    out[..., 1::2] = out[..., 1::2] / height
    return out


# --- ltwh: (left, top, width, height) pixels, the box of COCO JSON files and VisDrone annotation/result rows ---


def ltwh_to_xyxy(boxes: Array) -> Array:
    """(..., 4) ltwh -> (..., 4) xyxy; inverse of :func:`xyxy_to_ltwh`."""
    out = _clone(boxes)
    out[..., 2:] = boxes[..., :2] + boxes[..., 2:]
    return out


def xyxy_to_ltwh(boxes: Array) -> Array:
    """(..., 4) xyxy -> (..., 4) ltwh; inverse of :func:`ltwh_to_xyxy`."""
    out = _clone(boxes)
    out[..., 2:] = boxes[..., 2:] - boxes[..., :2]
    return out


def clip_boxes(boxes: Array, height: float, width: float) -> Array:
    """Clip (..., 4) xyxy boxes to an image of (height, width), in place, and return them."""
    if isinstance(boxes, torch.Tensor):
        boxes[..., 0].clamp_(0, width)
        boxes[..., 1].clamp_(0, height)
        boxes[..., 2].clamp_(0, width)
        boxes[..., 3].clamp_(0, height)
    else:
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, width)
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, height)
    return boxes


def scale_boxes_to_original(
    boxes: Array,
    letterboxed_shape: tuple[int, int],
    original_shape: tuple[int, int],
    ratio_pad: tuple | None = None,
) -> Array:
    """Undo a letterbox: (N, 4) xyxy in the letterboxed image -> xyxy in the original image, clipped.

    Args:
        boxes: (N, 4) xyxy pixels in an image of ``letterboxed_shape`` (h, w).
        original_shape: (h0, w0) of the original image.
        ratio_pad: ((ratio_h, ratio_w), (pad_w, pad_h)) as returned by the loader; computed if None.
    """
    if ratio_pad is None:
        gain = min(letterboxed_shape[0] / original_shape[0], letterboxed_shape[1] / original_shape[1])
        gain_w = gain_h = gain
        pad_w = (letterboxed_shape[1] - original_shape[1] * gain) / 2
        pad_h = (letterboxed_shape[0] - original_shape[0] * gain) / 2
    else:
        (gain_h, gain_w), (pad_w, pad_h) = ratio_pad
    boxes[..., [0, 2]] = (boxes[..., [0, 2]] - pad_w) / gain_w
    boxes[..., [1, 3]] = (boxes[..., [1, 3]] - pad_h) / gain_h
    return clip_boxes(boxes, original_shape[0], original_shape[1])


def box_area(boxes: Array) -> Array:
    """(..., 4) xyxy -> (...) area."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes -> (N, M)."""
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    inter = (bottom_right - top_left).clamp(min=0).prod(2)  # (N, M)
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - inter
    return inter / (union + _EPS)


def paired_overlap(boxes1: np.ndarray, boxes2: np.ndarray, use_ioa: np.ndarray) -> np.ndarray:
    """Exact overlap of aligned pairs: (P, 4), (P, 4) xyxy -> (P,) float64, no epsilon.

    Row i is IoU(boxes1[i], boxes2[i]), or intersection / area(boxes1[i]) where ``use_ioa[i]``.
    Evaluation compares these with thresholds exactly as COCO/VisDrone do (an IoU of exactly 0.75
    must pass 0.75); a zero denominator gives 0.
    """
    inter_w = (np.minimum(boxes1[:, 2], boxes2[:, 2]) - np.maximum(boxes1[:, 0], boxes2[:, 0])).clip(min=0)
    inter_h = (np.minimum(boxes1[:, 3], boxes2[:, 3]) - np.maximum(boxes1[:, 1], boxes2[:, 1])).clip(min=0)
    inter = inter_w * inter_h
    area1 = box_area(boxes1)
    denominator = np.where(use_ioa, area1, area1 + box_area(boxes2) - inter)
    return np.divide(inter, denominator, out=np.zeros_like(inter, dtype=np.float64), where=denominator > 0)


def aligned_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, kind: str = "iou") -> torch.Tensor:
    """Element-wise IoU family of (..., 4) cxcywh boxes -> (...).

    Args:
        kind: ``iou``, ``giou``, ``diou`` or ``ciou`` (Zheng et al. 2020: IoU minus centre-distance and
            aspect-ratio penalties). All variants are 1 for identical boxes.
    """
    if kind not in ("iou", "giou", "diou", "ciou"):
        raise ValueError(f"unknown IoU kind {kind!r}; expected iou, giou, diou or ciou")
    b1 = cxcywh_to_xyxy(boxes1)
    b2 = cxcywh_to_xyxy(boxes2)
    w1, h1 = boxes1[..., 2], boxes1[..., 3] + _EPS
    w2, h2 = boxes2[..., 2], boxes2[..., 3] + _EPS
    inter_w = (torch.min(b1[..., 2], b2[..., 2]) - torch.max(b1[..., 0], b2[..., 0])).clamp(min=0)
    inter_h = (torch.min(b1[..., 3], b2[..., 3]) - torch.max(b1[..., 1], b2[..., 1])).clamp(min=0)
    inter = inter_w * inter_h
    union = w1 * h1 + w2 * h2 - inter + _EPS
    iou = inter / union
    if kind == "iou":
        return iou
    hull_w = torch.max(b1[..., 2], b2[..., 2]) - torch.min(b1[..., 0], b2[..., 0])
    hull_h = torch.max(b1[..., 3], b2[..., 3]) - torch.min(b1[..., 1], b2[..., 1])
    if kind == "giou":
        hull_area = hull_w * hull_h + _EPS
        return iou - (hull_area - union) / hull_area
    hull_diag_sq = hull_w**2 + hull_h**2 + _EPS
    centre_dist_sq = (boxes2[..., 0] - boxes1[..., 0]) ** 2 + (boxes2[..., 1] - boxes1[..., 1]) ** 2
    if kind == "diou":
        return iou - centre_dist_sq / hull_diag_sq
    aspect = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    with torch.no_grad():
        alpha = aspect / (aspect - iou + (1 + _EPS))
    return iou - (centre_dist_sq / hull_diag_sq + aspect * alpha)


# YOLO's offset codec: matched ground truth <-> raw offsets t, shared by the regression and C-BBL heads.
# ``dxy`` is the box centre minus the cell's top-left corner, in cell units (YOLOv5 assignment keeps it in
# [-0.5, 1.5]); ``ratio`` is box size over anchor size (kept in [1/anchor_t, anchor_t]). The offset spaces say how
# t maps to them: ``logit`` is YOLOv5's sigmoid decode inverted, ``linear`` the plain affine / log form.
OFFSET_SPACES = ("logit", "linear")
# Keeps logit() finite when a target sits exactly on the decode's open-interval ends.
_LOGIT_EPS = 1e-6


def decode_offsets(t: torch.Tensor, space: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw offsets (..., 4) -> (dxy (..., 2) in cells, size ratio (..., 2) to the anchor).

    logit: dxy = 2 sigmoid(t) - 0.5, ratio = (2 sigmoid(t))^2 (YOLOv5). linear: dxy = t + 0.5, ratio = exp(t).
    Inverse of :func:`encode_offsets`.
    """
    if space == "logit":
        sig = t.sigmoid()
        return sig[..., :2] * 2 - 0.5, (sig[..., 2:] * 2) ** 2
    if space == "linear":
        return t[..., :2] + 0.5, t[..., 2:].exp()
    raise ValueError(f"unknown offset space {space!r}; expected one of {OFFSET_SPACES}")


def encode_offsets(dxy: torch.Tensor, ratio: torch.Tensor, space: str) -> torch.Tensor:
    """(dxy (..., 2) cells, ratio (..., 2)) -> raw offsets (..., 4); inverse of :func:`decode_offsets`.

    logit: t = logit((dxy + 0.5) / 2) and logit(sqrt(ratio) / 2); linear: t = dxy - 0.5 and ln(ratio).
    Values beyond the decode's reach come out large and are clamped later by the grid.
    """
    if space == "logit":
        unit_xy = ((dxy + 0.5) / 2).clamp(_LOGIT_EPS, 1 - _LOGIT_EPS)
        unit_wh = (ratio.sqrt() / 2).clamp(_LOGIT_EPS, 1 - _LOGIT_EPS)
        return torch.cat([torch.logit(unit_xy), torch.logit(unit_wh)], -1)
    if space == "linear":
        return torch.cat([dxy - 0.5, ratio.clamp(min=_LOGIT_EPS).log()], -1)
    raise ValueError(f"unknown offset space {space!r}; expected one of {OFFSET_SPACES}")
