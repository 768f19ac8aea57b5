"""Training loss: YOLOv5 target assignment shared by every box-loss mode, then box + objectness + class terms.

The box term is chosen by the head's ``box_loss`` (utils.head.HeadConfig) from utils/box_terms.py: ``ciou``
(1 - CIoU of the decoded box, the baseline), ``l1`` / ``smooth_l1`` (on the raw offsets) or ``cbbl``
(cross-entropy against two-hot labels over the head's grids + uncertainty loss). Objectness is IoU-aware in
every mode, as in YOLOv5 v7.0: its target is the CIoU of the decoded box with its ground truth, clamped at 0;
where several ground truths claim one cell the best wins (TPH-YOLOv5 sorts for that).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.assign import AssignmentStats, LevelTargets, assign_level, level_name
from utils.box_terms import BOX_TERMS
from utils.boxes import aligned_iou
from utils.head import DetectOutput
from utils.hyp import Hyp
from utils.torch_utils import de_parallel

# Objectness weight per level, finest first. 3 levels: YOLOv5's tuned values. 4 levels (P2..P5, TPH-YOLOv5)
# and others: each level has 4x the cells of the next coarser one, and the per-level loss is a mean over cells,
# so weights in the 4:1 cell-count ratio make every cell count about equally (TPH-YOLOv5 uses the same numbers).
OBJ_BALANCE = {1: (1.0,), 2: (4.0, 1.0), 3: (4.0, 1.0, 0.4), 4: (4.0, 1.0, 0.25, 0.06),
               5: (4.0, 1.0, 0.25, 0.06, 0.02)}
# YOLOv5's gr: objectness target = (1 - gr) + gr * max(CIoU, 0); 1.0 (YOLOv5's value) = the clamped CIoU alone.
OBJ_IOU_RATIO = 1.0
# Focal loss alpha (Lin et al. 2017), used when fl_gamma > 0.
FOCAL_ALPHA = 0.25
# The setting YOLOv5's loss gains were tuned at; gains are rescaled from it (see LossGains.scaled).
_REFERENCE_LEVELS, _REFERENCE_CLASSES, _REFERENCE_IMGSZ = 3, 80, 640


@dataclass(frozen=True)
class LossSettings:
    """What the criterion reads of the hyperparameters (hyp files' names); the box settings come from the head."""

    box: float  # box term gain (at YOLOv5's 3 levels, 80 classes, 640 px)
    obj: float  # objectness gain
    cls: float  # class gain
    obj_pw: float  # positive weight of the objectness BCE
    cls_pw: float  # positive weight of the class BCE
    fl_gamma: float  # focal loss gamma (0 = plain BCE)
    label_smoothing: float  # class target smoothing epsilon

    @classmethod
    def from_hyp(cls, hyp: Hyp) -> LossSettings:
        """The loss keys of a Hyp (the builder's one call; the loss never sees the rest)."""
        return cls(**{field.name: getattr(hyp, field.name) for field in dataclasses.fields(cls)})


@dataclass(frozen=True)
class LossGains:
    """Weights of the box, objectness and class terms after YOLOv5's rescaling (the hyp is never mutated)."""

    box: float
    obj: float
    cls: float

    @classmethod
    def scaled(cls, settings: LossSettings, num_levels: int, num_classes: int, imgsz: int) -> LossGains:
        """Scale the gains from YOLOv5's tuning point: by 3/levels, classes/80 (cls) and (imgsz/640)^2 (obj)."""
        level_scale = _REFERENCE_LEVELS / num_levels
        return cls(box=settings.box * level_scale,
                   obj=settings.obj * (imgsz / _REFERENCE_IMGSZ) ** 2 * level_scale,
                   cls=settings.cls * num_classes / _REFERENCE_CLASSES * level_scale)


def bce_with_logits(logits: torch.Tensor, target: torch.Tensor, pos_weight: torch.Tensor,
                    focal_gamma: float = 0.0) -> torch.Tensor:
    """Mean binary cross-entropy over all elements, optionally focal: (...), (...) -> scalar.

    Focal (gamma > 0): each element is scaled by alpha_t * (1 - p_t)^gamma (Lin et al. 2017) so easy
    negatives, the bulk of objectness cells, stop dominating.
    """
    loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="none")
    if focal_gamma > 0:
        prob = logits.sigmoid()
        prob_true = target * prob + (1 - target) * (1 - prob)
        alpha_true = target * FOCAL_ALPHA + (1 - target) * (1 - FOCAL_ALPHA)
        loss = loss * alpha_true * (1 - prob_true) ** focal_gamma
    return loss.mean()


def objectness_target(pred_box: torch.Tensor, target_box: torch.Tensor) -> torch.Tensor:
    """YOLOv5 v7.0's objectness target of positives: (1 - gr) + gr * max(CIoU, 0), gr = OBJ_IOU_RATIO.

    Args: pred_box, target_box (P, 4) cxcywh in grid units (any common frame). Returns (P,) in [0, 1].
    """
    ciou = aligned_iou(pred_box, target_box, kind="ciou").clamp(min=0)  # (P,)
    return (1 - OBJ_IOU_RATIO) + OBJ_IOU_RATIO * ciou


class _LevelGather(torch.autograd.Function):
    """A level's objectness logits and its positives' channels, with ONE gradient buffer for the level.

    Indexing the two separately makes autograd fill two zero tensors of the level's full size and add them:
    the wider C-BBL head paid ~2x for that alone (measured, benchmarks/loss_speed.py).
    """

    @staticmethod
    def forward(ctx: Any, pred: torch.Tensor, flat_index: torch.Tensor,
                obj_channel: int) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(flat_index)
        ctx.shape, ctx.dtype, ctx.obj_channel = pred.shape, pred.dtype, obj_channel
        rows = pred.reshape(-1, pred.shape[-1])  # (B*A*H*W, C)
        return pred[..., obj_channel].float(), rows[flat_index].float()

    @staticmethod
    def backward(ctx: Any, grad_obj: Optional[torch.Tensor],
                 grad_positive: Optional[torch.Tensor]) -> tuple[Optional[torch.Tensor], None, None]:
        (flat_index,) = ctx.saved_tensors
        grad = torch.zeros(ctx.shape, dtype=ctx.dtype, device=flat_index.device)  # (B, A, H, W, C)
        if grad_obj is not None:
            grad[..., ctx.obj_channel] = grad_obj
        if grad_positive is not None:
            grad.view(-1, ctx.shape[-1]).index_add_(0, flat_index, grad_positive.to(ctx.dtype))
        return grad, None, None


class ComputeLoss:
    """YOLOv5-style criterion: ``loss_fn(preds, targets) -> (total, {'box', 'obj', 'cls'})``.

    Every box setting (box loss, C-BBL grids, offset space, restore, UM, CIoU term) comes from the head's
    HeadConfig (``model.detect.head``), so training encodes exactly what val/detect decode; ``settings`` give the
    gains, assignment and class/objectness settings. ``imgsz`` only scales the objectness gain (YOLOv5's
    (imgsz/640)^2). ``stats`` holds the assignment diagnostics.
    """

    def __init__(self, model: nn.Module, settings: LossSettings, imgsz: int = _REFERENCE_IMGSZ):
        detect = de_parallel(model).detect
        if detect.nl not in OBJ_BALANCE:
            raise ValueError(f"no objectness balance for {detect.nl} detection levels; known: {sorted(OBJ_BALANCE)}")
        self.detect, self.settings = detect, settings
        self.gains = LossGains.scaled(settings, detect.nl, detect.nc, imgsz)
        self.balance = OBJ_BALANCE[detect.nl]
        self.stats = AssignmentStats([level_name(float(s), i) for i, s in enumerate(detect.stride)])

    def __call__(self, preds: DetectOutput | list[torch.Tensor],
                 targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss of a batch.

        Args:
            preds: the model's output (its ``raw``), or the nl raw head tensors (B, A, H, W, box_channels + 1 + nc).
            targets: (M, 6) ``[img_idx, cls, cx, cy, w, h]``, cxcywh normalised to the network input.
        Returns:
            total: scalar, (box + obj + cls) * B as YOLOv5 (each term already weighted by its gain).
            items: detached 0-dim ``box``, ``obj``, ``cls``.
        """
        preds = preds.raw if isinstance(preds, DetectOutput) else preds
        if preds is None:
            raise ValueError("these outputs have no raw maps to score: the head decoded sparsely (decode_conf set, "
                             "inference only); run the model with decode_conf None for a loss")
        if len(preds) != self.detect.nl:
            raise ValueError(f"expected {self.detect.nl} prediction levels, got {len(preds)}")
        device = preds[0].device
        targets = targets.to(device=device, dtype=torch.float32)
        obj_pos_weight = torch.tensor(self.settings.obj_pw, device=device)
        box_loss = cls_loss = obj_loss = torch.zeros((), device=device)
        matched_any = torch.zeros(len(targets), dtype=torch.bool, device=device)
        for level, pred in enumerate(preds):
            anchors = self.detect.anchors[level].to(device=device, dtype=torch.float32)
            assigned = assign_level(targets, anchors, tuple(pred.shape[2:4]), self.detect.head.anchor_t)
            _, num_anchors, grid_h, grid_w, _ = pred.shape
            flat_index = ((assigned.batch * num_anchors + assigned.anchor) * grid_h + assigned.cell_y) * grid_w
            flat_index = flat_index + assigned.cell_x  # (P,) row of each positive in pred viewed as (B*A*H*W, C)
            obj_logits, positive = _LevelGather.apply(pred, flat_index, self.detect.box_channels)  # (B,A,H,W), (P,C)
            obj_target = torch.zeros_like(obj_logits)  # (B, A, H, W)
            if len(assigned.gt):
                level_box, level_cls = self._positive_terms(positive, assigned, flat_index, obj_target)
                box_loss, cls_loss = box_loss + level_box, cls_loss + level_cls
            level_obj = bce_with_logits(obj_logits, obj_target, obj_pos_weight, self.settings.fl_gamma)
            obj_loss = obj_loss + self.balance[level] * level_obj
            self._count_level(level, assigned, matched_any)
        self.stats.add("gt_total", len(targets))
        self.stats.add("gt_unmatched", (~matched_any).sum())
        items = {"box": box_loss * self.gains.box, "obj": obj_loss * self.gains.obj, "cls": cls_loss * self.gains.cls}
        total = (items["box"] + items["obj"] + items["cls"]) * preds[0].shape[0]
        return total, {name: value.detach() for name, value in items.items()}

    def _positive_terms(self, positive: torch.Tensor, assigned: LevelTargets, flat_index: torch.Tensor,
                        obj_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Box and class losses of one level's positives (P, C); writes their objectness targets into
        ``obj_target`` (B, A, H, W)."""
        box_channels = self.detect.box_channels
        pred_box, box_loss = self.box_term(positive[:, :box_channels], assigned)
        obj_target.view(-1).scatter_reduce_(0, flat_index, objectness_target(pred_box.detach(), assigned.box),
                                            reduce="amax")  # several GTs in one cell: the best wins
        if self.detect.nc == 1:
            return box_loss, torch.zeros_like(box_loss)
        cls_logits = positive[:, box_channels + 1:]  # (P, nc)
        smoothing = self.settings.label_smoothing
        cls_target = torch.full_like(cls_logits, 0.5 * smoothing)
        cls_target[torch.arange(len(cls_logits), device=cls_logits.device), assigned.cls] = 1 - 0.5 * smoothing
        cls_pos_weight = torch.tensor(self.settings.cls_pw, device=cls_logits.device)
        return box_loss, bce_with_logits(cls_logits, cls_target, cls_pos_weight, self.settings.fl_gamma)

    def box_term(self, raw_box: torch.Tensor, assigned: LevelTargets) -> tuple[torch.Tensor, torch.Tensor]:
        """Box loss of positives: raw box channels (P, box_channels) -> (decoded boxes (P, 4), mean loss).

        Decoded boxes are ``(dx, dy, w, h)`` in grid units, relative to the positive's cell. The head's
        ``box_loss`` picks the term (utils/box_terms.py BOX_TERMS); offset labels outside their range are counted.
        """
        result = BOX_TERMS[self.detect.head.box_loss](raw_box, assigned, self.detect)
        if result.clamped is not None:
            self.stats.add("clamped", result.clamped.sum())
            self.stats.add("offsets", result.clamped.numel())
        return result.pred_box, result.loss

    def _count_level(self, level: int, assigned: LevelTargets, matched_any: torch.Tensor) -> None:
        """Diagnostics of one level: positives, GTs with at least one positive here; marks them in ``matched_any``."""
        matched_here = torch.zeros_like(matched_any)
        matched_here[assigned.gt] = True
        matched_any |= matched_here
        name = self.stats.level_names[level]
        self.stats.add(f"pos_{name}", len(assigned.gt))
        self.stats.add(f"gt_{name}", matched_here.sum())
