"""The box term of each box loss, one small function per name in BOX_TERMS; its keys are the valid --box-loss.

A term turns one level's positives into their decoded boxes and a mean box loss; the criterion
(utils/loss.py ComputeLoss) looks the head's ``box_loss`` up here, and HeadConfig validates it against
:data:`BOX_LOSSES`, so a name is either a term or rejected. Adding a box loss is adding a function and its
entry. ``l1`` / ``smooth_l1`` compare the raw offsets t with t* = encode_offsets(...) in the head's space,
clamped to +-alpha: the very labels C-BBL quantizes, so the ablation changes only the loss form (paper Table 1
compares L1 / Smooth-L1 / CE on the same offset labels); an L1 on decoded boxes would scale with object size.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F

from utils.assign import LevelTargets
from utils.boxes import aligned_iou, decode_offsets, encode_offsets
from utils.cbbl.distribution import two_hot_loss

# Smooth-L1 transition point on raw offsets (torch's / mmdetection's default).
SMOOTH_L1_BETA = 1.0


class BoxTermResult(NamedTuple):
    """What a box term gives the criterion for P positives."""

    pred_box: torch.Tensor  # (P, 4) decoded (dx, dy, w, h) in grid units, relative to the positive's cell
    loss: torch.Tensor  # scalar mean box loss
    clamped: Optional[torch.Tensor]  # (P, 4) bool: offset labels clamped to their range (None: no offset labels)


def offset_labels(assigned: LevelTargets, space: str) -> torch.Tensor:
    """The raw offset labels t* (P, 4) of the positives in the head's offset ``space``."""
    return encode_offsets(assigned.box[:, :2], assigned.box[:, 2:] / assigned.anchor_wh, space)


def decoded_box(offsets: torch.Tensor, assigned: LevelTargets, space: str) -> torch.Tensor:
    """Raw offsets (P, 4) -> boxes (P, 4) (dx, dy, w, h) in grid units, relative to the positive's cell."""
    dxy, size_ratio = decode_offsets(offsets, space)
    return torch.cat([dxy, size_ratio * assigned.anchor_wh], -1)


def ciou_loss(pred_box: torch.Tensor, target_box: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """``weight`` times the mean of 1 - CIoU over (P, 4) pairs of cxcywh boxes: a scalar."""
    return weight * (1 - aligned_iou(pred_box, target_box, kind="ciou")).mean()


def ciou_term(raw_box: torch.Tensor, assigned: LevelTargets, detect: Any) -> BoxTermResult:
    """YOLOv5's box loss: 1 - CIoU of the decoded box (raw_box (P, 4) offsets)."""
    pred_box = decoded_box(raw_box, assigned, detect.head.space)
    return BoxTermResult(pred_box, ciou_loss(pred_box, assigned.box), None)


def offset_term(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[..., BoxTermResult]:
    """A box term comparing the raw offsets (P, 4) with their labels, clamped to +-alpha, by ``loss_fn``."""

    def term(raw_box: torch.Tensor, assigned: LevelTargets, detect: Any) -> BoxTermResult:
        labels, alpha = offset_labels(assigned, detect.head.space), detect.head.alpha
        loss = loss_fn(raw_box, labels.clamp(-alpha, alpha))
        return BoxTermResult(decoded_box(raw_box, assigned, detect.head.space), loss, labels.abs() > alpha)

    return term


def cbbl_term(raw_box: torch.Tensor, assigned: LevelTargets, detect: Any) -> BoxTermResult:
    """C-BBL: mean over positives and coordinates of KL(p* || p) + um * L_UM on the head's grids, plus ciou x the
    CIoU term on the decoded boxes (ciou 0: the paper's loss). raw_box: (P, 4 * K) coordinate-major logits.

    KL = L_CE - H(p*): the paper's cross-entropy shifted by a constant of the labels, so the gradient
    is the same softmax - p*, but the logged box loss goes to 0 at the optimum like CIoU's (a two-hot
    label's own entropy, up to ln 2, would otherwise stay in it as a floor). The offsets carry a
    gradient only when the CIoU term needs one.
    """
    grid, head = detect.grid, detect.head
    labels = offset_labels(assigned, detect.head.space)
    logits = raw_box.unflatten(-1, (4, head.bins))  # (P, 4, K)
    left, weight_left = grid.two_hot(labels)  # (P, 4) each, clamped to each group's range
    loss, offsets = two_hot_loss(logits, left, weight_left, detect.grid_points, head.um, head.um_mode)
    if head.ciou > 0 or head.restore != "expectation":
        with torch.set_grad_enabled(head.ciou > 0 and torch.is_grad_enabled()):
            offsets = grid.decode(logits, head.restore)  # (P, 4)
    pred_box, loss = decoded_box(offsets, assigned, detect.head.space), loss.mean()
    if head.ciou > 0:
        loss = loss + ciou_loss(pred_box, assigned.box, head.ciou)
    if detect.quality is not None:
        loss = loss + quality_loss(detect.quality, logits, pred_box, assigned.box)
    return BoxTermResult(pred_box, loss, grid.outside(labels))


def quality_loss(branch: Any, logits: torch.Tensor, pred_box: torch.Tensor, target_box: torch.Tensor) -> torch.Tensor:
    """``--cbbl-score quality``: BCE of the branch's IoU estimate against each positive's IoU with its target, both
    detached from the distributions (the two-hot loss alone shapes them; the branch learns to read them)."""
    iou = aligned_iou(pred_box.detach(), target_box, kind="iou").clamp(0, 1)  # (P,)
    return F.binary_cross_entropy_with_logits(branch(logits.detach()).squeeze(-1), iou)


BOX_TERMS: dict[str, Callable[[torch.Tensor, LevelTargets, Any], BoxTermResult]] = {
    "ciou": ciou_term,
    "l1": offset_term(F.l1_loss),
    "smooth_l1": offset_term(partial(F.smooth_l1_loss, beta=SMOOTH_L1_BETA)),
    "cbbl": cbbl_term,
}
BOX_LOSSES = tuple(BOX_TERMS)
