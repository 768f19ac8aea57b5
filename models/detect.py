"""The Detect head: per level a 1x1 conv predicting, per anchor, box channels + objectness + classes.

Two box modes: ``regress`` (4 raw offsets, YOLOv5) and ``cbbl`` (4*K logits, one distribution over the C-BBL
grid per coordinate); a C-BBL head with ``score: quality`` also scales objectness by :class:`QualityBranch`'s
IoU estimate. The head only predicts and decodes; assignment and loss live in utils/loss.py and
utils/box_terms.py. Everything after the eval-mode decode sees ordinary cx, cy, w, h boxes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn as nn

from utils.boxes import decode_offsets
from utils.cbbl.distribution import (
    QUALITY_FEATURES,
    SideStats,
    decoded_points,
    expectation_and_entropy,
    quality_features,
    side_statistics,
)
from utils.cbbl.grid import BoxGrids
from utils.head import DetectOutput, HeadConfig, as_head_config
from utils.torch_utils import float32_under_cpu_autocast

# YOLOv5 priors: about 8 objects per 640x640 image, and 0.6 of the class mass spread over nc classes.
OBJECTS_PER_640_IMAGE = 8.0
CLASS_PRIOR = 0.6
PRIOR_IMAGE_SIZE = 640.0
# Columns appended by a C-BBL decode with ``side_variance`` on: the variances of x1, y1, x2, y2.
SIDE_VARIANCE_COLUMNS = 4
# Floor of a box side (pixels) when its variance is made relative to the side's squared length.
_MIN_SIDE_PX = 1e-3
# Hidden width of the quality branch (GFLv2's DGQP uses 64).
QUALITY_HIDDEN = 64


def _exporting() -> bool:
    """True while torch.onnx / TorchScript trace the model: export keeps the dense, shape-static decode."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()


class QualityBranch(nn.Module):
    """``--cbbl-score quality``: the IoU of a box with its object, estimated from the shape of its four side
    distributions (top-k probabilities and their mean), one small MLP shared by every level and anchor."""

    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(QUALITY_FEATURES, QUALITY_HIDDEN), nn.ReLU(), nn.Linear(QUALITY_HIDDEN, 1))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """Box logits (..., 4, K) -> (..., 1) IoU logits (the sigmoid is the estimate)."""
        return self.mlp(quality_features(logits))


class Detect(nn.Module):
    """Prediction head over ``nl`` feature levels with ``na`` anchors each.

    Args:
        nc: number of classes.
        anchors: per level a flat list ``[w0, h0, w1, h1, ...]`` in pixels (converted to grid units by
            :meth:`set_stride`).
        ch: input channels per level.
        head: the box head's settings (utils.head.HeadConfig, or its dict form; None = CIoU regression).

    ``decode_conf``: when set (inference, see :meth:`sparse_box_offsets`), C-BBL boxes are decoded only where
    objectness x class can pass that confidence; None (the default, training, export) decodes every anchor.
    ``side_variance``: when True (inference and export, C-BBL), the decode appends SIDE_VARIANCE_COLUMNS columns
    after the uncertainty: each side's (x1, y1, x2, y2) variance under the predicted distributions, divided by the
    squared box width (x) or height (y), so that it survives the rescaling of test-time augmentation and the
    letterbox undo; computed only for the rows the sparse decode decodes (every row in an exported graph).
    """

    extra_inputs = 0  # input feature maps beyond one per output level (CLLADetect: 1)

    def __init__(self, nc: int, anchors: Sequence[Sequence[float]], ch: Sequence[int],
                 head: HeadConfig | dict | None = None):
        super().__init__()
        self.head = as_head_config(head)
        self.nc, self.nl, self.na = int(nc), len(anchors), len(anchors[0]) // 2
        if len(ch) != self.nl:
            raise ValueError(f"Detect got {len(ch)} input levels but anchors for {self.nl} levels")
        self.grid: Optional[BoxGrids] = self.head.box_grids()  # derived from self.head, kept with it by set_head
        self.box_channels = 4 * self.head.bins if self.grid is not None else 4
        self.num_extra = 1 if self.grid is not None else 0
        self.no = self.box_channels + 1 + self.nc
        self.decode_conf: Optional[float] = None
        self.side_variance = False
        points = self.grid.points if self.grid is not None else torch.zeros(4, 1)
        self.register_buffer("grid_points", points.clone(), persistent=False)  # (4, K): x, y on centre, w, h on size
        self.register_buffer("stride", torch.ones(self.nl))
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(self.nl, self.na, 2))
        self.m = nn.ModuleList(nn.Conv2d(channels, self.no * self.na, 1) for channels in ch)
        self.quality = QualityBranch() if self.head.score == "quality" else None

    @property
    def box_mode(self) -> str:
        """'cbbl' or 'regress', derived from the head's box_loss."""
        return self.head.box_mode

    def set_head(self, head: HeadConfig) -> None:
        """Swap in new grid points (a fitted C-BBL grid): same box loss, K and score, so the weights still fit."""
        layout = (self.head.box_loss, self.head.bins, self.head.score)
        if (head.box_loss, head.bins, head.score) != layout:
            raise ValueError(f"set_head keeps box_loss, bins and score (the weights' layout): {layout}, got "
                             f"{(head.box_loss, head.bins, head.score)}")
        self.head, self.grid = head, head.box_grids()
        if self.grid is not None:
            self.grid_points.copy_(self.grid.points)

    def set_stride(self, stride: torch.Tensor) -> None:
        """Record the level strides and turn the pixel anchors into grid units (pixels / stride)."""
        self.stride.copy_(stride)
        self.anchors.div_(stride.view(-1, 1, 1))

    def initialize_biases(self, image_size: float = PRIOR_IMAGE_SIZE) -> None:
        """YOLOv5 objectness/class priors; C-BBL box logits equal, so the initial expectation is offset 0.

        Objectness: log(8 objects / number of cells at that stride); classes: log(0.6 / (nc - 0.99)).
        """
        class_prior = math.log(CLASS_PRIOR / (self.nc - 0.99))
        with torch.no_grad():
            for conv, stride in zip(self.prediction_convs(), self.stride.tolist()):
                bias = conv.bias.view(self.na, self.no)  # (A, no), shares storage with the conv bias
                if self.grid is not None:
                    bias[:, :self.box_channels] = 0.0
                bias[:, self.box_channels] = math.log(OBJECTS_PER_640_IMAGE / (image_size / stride) ** 2)
                bias[:, self.box_channels + 1:] = class_prior

    @float32_under_cpu_autocast
    def forward(self, features: list[torch.Tensor]) -> DetectOutput:
        """Level features -> :class:`DetectOutput`: the raw outputs, and in eval mode the decoded predictions."""
        raw = []
        for out in self.level_maps(features):
            batch, _, height, width = out.shape
            raw.append(out.view(batch, self.na, self.no, height, width).permute(0, 1, 3, 4, 2).contiguous())
            # raw[-1]: (B, A, H, W, no)
        if self.training:
            return DetectOutput(None, raw)
        return DetectOutput(torch.cat([self.decode_level(out, level) for level, out in enumerate(raw)], 1), raw)

    def prediction_convs(self) -> list[nn.Conv2d]:
        """The convolution that predicts each level's (A * no) channels (subclasses may fuse levels first)."""
        return list(self.m)

    def level_maps(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level the raw prediction map (B, A * no, H, W) from the head's input features."""
        return [conv(feature) for conv, feature in zip(self.m, features)]

    def box_offsets(self, box_raw: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Raw box channels (..., box_channels) -> (offsets t (..., 4), uncertainty (..., 1) or None).

        C-BBL expectation = softmax then a fixed K -> 1 projection on the grid points (export friendly).
        """
        if self.grid is None:
            return box_raw, None
        logits = box_raw.unflatten(-1, (4, self.head.bins))  # (..., 4, K)
        offsets, coord_entropy = expectation_and_entropy(logits, self.grid_points)  # (..., 4) each
        return self._restored(logits, offsets, coord_entropy, box_raw.dtype)

    def _restored(self, logits: torch.Tensor, expectation: torch.Tensor, coord_entropy: torch.Tensor,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(offsets (..., 4), uncertainty (..., 1)): the expectation, or the top-2 restore; the mean entropy."""
        offsets = self.grid.decode(logits, "top2") if self.head.restore == "top2" else expectation  # (..., 4)
        return offsets.to(dtype), coord_entropy.mean(-1, keepdim=True).to(dtype)

    def box_statistics(self, box_raw: torch.Tensor) -> SideStats:
        """Raw C-BBL box channels (..., box_channels) -> per-coordinate (x, y, w, h) statistics of the distributions
        (utils.cbbl.distribution.SideStats: mean, variance, top-k, entropy, and the variance of the decoded cells / size
        ratios)."""
        logits = box_raw.unflatten(-1, (4, self.head.bins))  # (..., 4, K)
        return side_statistics(logits, self.grid_points, decoded_points(self.grid_points, self.head.space))

    def sparse_box_offsets(self, box_raw: torch.Tensor, scores: torch.Tensor, conf_thres: Optional[float],
                           with_variance: bool = False
                           ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """:meth:`box_offsets` for the anchors NMS can keep, zeros elsewhere.

        box_raw (..., box_channels), scores (..., 1 + nc) sigmoid -> (offsets (..., 4), uncertainty (..., 1),
        decoded variance (..., 4) of x, y (cells) and w, h (size ratios), or None unless ``with_variance``).

        A row can pass NMS only if objectness > conf_thres and some objectness x class > conf_thres
        (utils.nms.non_max_suppression, the same float32 products), so the K-bin softmax runs for those rows
        alone; each kept row's decode is the dense one's, bit for bit. ``conf_thres`` None decodes every row.
        The statistics come from the same single softmax as the offsets, for the same rows.
        """
        if conf_thres is None:
            candidates = torch.ones(scores.shape[:-1], dtype=torch.bool, device=scores.device)
        else:
            # Objectness first: few rows pass it, and only those need the nc class products (taken over every
            # anchor, those cost as much as the decode this saves).
            candidates = scores[..., 0] > conf_thres  # (...)
            passing = scores[candidates]  # (n, 1 + nc)
            candidates[candidates.clone()] = (passing[:, 1:] * passing[:, :1]).amax(-1) > conf_thres
        offsets = box_raw.new_zeros(*box_raw.shape[:-1], 4)
        uncertainty = box_raw.new_zeros(*box_raw.shape[:-1], 1)
        rows = box_raw[candidates]  # (n, box_channels)
        if not with_variance:
            offsets[candidates], uncertainty[candidates] = self.box_offsets(rows)
            return offsets, uncertainty, None
        variance = box_raw.new_zeros(*box_raw.shape[:-1], 4)
        offsets[candidates], uncertainty[candidates], variance[candidates] = self.box_offsets_with_variance(rows)
        return offsets, uncertainty, variance

    def box_offsets_with_variance(self, box_raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`box_offsets` plus the decoded variance (..., 4) of x, y (cells) and w, h (size ratios), all from one
        softmax per coordinate."""
        stats = self.box_statistics(box_raw)
        logits = box_raw.unflatten(-1, (4, self.head.bins))
        offsets, uncertainty = self._restored(logits, stats.mean, stats.entropy, box_raw.dtype)
        return offsets, uncertainty, stats.value_variance.to(box_raw.dtype)

    def quality_scored(self, box_raw: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Scores (..., 1 + nc) with the objectness times the quality branch's IoU estimate, so NMS ranks by
        objectness x class x quality. With ``decode_conf`` only rows whose objectness passes it are estimated
        (the estimate only lowers a score, so no other row can pass): the rows the sparse decode then decodes are
        those the dense decode keeps."""
        if self.decode_conf is None or _exporting():
            quality = self.quality(box_raw.unflatten(-1, (4, self.head.bins))).sigmoid()  # (..., 1)
            return torch.cat((scores[..., :1] * quality, scores[..., 1:]), -1)
        rows = scores[..., 0] > self.decode_conf
        scores = scores.clone()
        scores[rows, 0] *= self.quality(box_raw[rows].unflatten(-1, (4, self.head.bins))).sigmoid().squeeze(-1)
        return scores

    def relative_side_variance(self, variance: torch.Tensor, stride: torch.Tensor, anchor_wh: torch.Tensor,
                               box_wh: torch.Tensor) -> torch.Tensor:
        """Decoded variances (..., 4) of x, y (cells) and w, h (size ratios) -> (..., 4) variances of x1, y1, x2, y2
        over the squared box width / height.

        The four distributions are independent, so var(x1) = var(x2) = var(cx) + var(w) / 4 (and y alike).
        """
        centre = variance[..., :2] * stride ** 2  # (..., 2) pixels^2
        size = variance[..., 2:] * anchor_wh ** 2  # (..., 2) pixels^2
        relative = (centre + size / 4) / box_wh.clamp(min=_MIN_SIDE_PX) ** 2  # (..., 2): x, y
        return torch.cat((relative, relative), -1)  # x1, y1, x2, y2

    def decode_level(self, raw: torch.Tensor, level: int) -> torch.Tensor:
        """One level's raw (B, A, H, W, no) -> (B, A*H*W, 5 + nc + num_extra [+ 4 side variances]) float32 decoded
        predictions.

        Float32 even for a half-precision model: fp16 spacing is 1 px above 1024 px, too coarse for tiny boxes.
        """
        raw = raw.float()
        batch, _, height, width, _ = raw.shape
        box_raw, scores = raw[..., :self.box_channels], raw[..., self.box_channels:].sigmoid()  # scores (..., 1 + nc)
        if self.quality is not None:
            scores = self.quality_scored(box_raw, scores)
        variance = None
        if self.grid is not None and not _exporting() and (self.decode_conf is not None or self.side_variance):
            offsets, uncertainty, variance = self.sparse_box_offsets(box_raw, scores, self.decode_conf,
                                                                     self.side_variance)
        elif self.grid is not None and self.side_variance:  # an exported graph: every row, static shapes
            offsets, uncertainty, variance = self.box_offsets_with_variance(box_raw)
        else:
            offsets, uncertainty = self.box_offsets(box_raw)
        cell_offset, size_ratio = decode_offsets(offsets, self.head.space)  # (B, A, H, W, 2) each
        stride = self.stride[level]
        ys = torch.arange(height, device=raw.device, dtype=raw.dtype)
        xs = torch.arange(width, device=raw.device, dtype=raw.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        cell_xy = torch.stack((grid_x, grid_y), -1).view(1, 1, height, width, 2)  # (1, 1, H, W, 2)
        anchor_wh = (self.anchors[level] * stride).view(1, self.na, 1, 1, 2).to(raw.dtype)  # pixels
        box_xy = (cell_offset + cell_xy) * stride
        box_wh = size_ratio * anchor_wh
        parts = [box_xy, box_wh, scores] + ([uncertainty] if uncertainty is not None else [])
        if variance is not None:
            parts.append(self.relative_side_variance(variance, stride, anchor_wh, box_wh))
        width_out = 5 + self.nc + self.num_extra + (SIDE_VARIANCE_COLUMNS if variance is not None else 0)
        return torch.cat(parts, -1).view(batch, -1, width_out)
