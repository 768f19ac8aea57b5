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

    ``decode_conf``: when set (inference, see :meth:`sparse_decode_level`), C-BBL boxes are predicted and decoded
    only where objectness x class can pass that confidence; None (the default, training, export) decodes every
    anchor and returns the raw maps.
    ``side_variance``: when True (inference and export, C-BBL), the decode appends SIDE_VARIANCE_COLUMNS columns
    after the uncertainty: each side's (x1, y1, x2, y2) variance under the predicted distributions, divided by the
    squared box width (x) or height (y), so that it survives the rescaling of test-time augmentation and the
    letterbox undo; computed only for the rows the sparse decode decodes (else for every row).
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
        """Level features -> :class:`DetectOutput`: the raw outputs (None after a sparse decode), and in eval mode the
        decoded predictions."""
        pairs = list(zip(self.prediction_convs(), self.level_inputs(features)))
        if self.decodes_sparsely():
            return DetectOutput(torch.cat([self.sparse_decode_level(conv, inputs, level)
                                           for level, (conv, inputs) in enumerate(pairs)], 1), None)
        raw = []
        for conv, inputs in pairs:
            out = conv(inputs)
            batch, _, height, width = out.shape
            raw.append(out.view(batch, self.na, self.no, height, width).permute(0, 1, 3, 4, 2).contiguous())
            # raw[-1]: (B, A, H, W, no)
        if self.training:
            return DetectOutput(None, raw)
        return DetectOutput(torch.cat([self.decode_level(out, level) for level, out in enumerate(raw)], 1), raw)

    def prediction_convs(self) -> list[nn.Conv2d]:
        """The 1x1 convolution that predicts each level's (A * no) channels."""
        return list(self.m)

    def level_inputs(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level the features (B, C, H, W) the prediction convolution reads (subclasses may fuse levels first)."""
        return features

    def decodes_sparsely(self) -> bool:
        """Whether this forward takes :meth:`sparse_decode_level`: C-BBL inference with ``decode_conf`` set, eager."""
        return not self.training and self.decode_conf is not None and self.grid is not None and not _exporting()

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
        (utils.cbbl.distribution.SideStats: mean, entropy, and the variance of the decoded cells / size ratios)."""
        logits = box_raw.unflatten(-1, (4, self.head.bins))  # (..., 4, K)
        return side_statistics(logits, self.grid_points, decoded_points(self.grid_points, self.head.space))

    def box_offsets_with_variance(self, box_raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`box_offsets` plus the decoded variance (..., 4) of x, y (cells) and w, h (size ratios), all from one
        softmax per coordinate."""
        stats = self.box_statistics(box_raw)
        logits = box_raw.unflatten(-1, (4, self.head.bins))
        offsets, uncertainty = self._restored(logits, stats.mean, stats.entropy, box_raw.dtype)
        return offsets, uncertainty, stats.value_variance.to(box_raw.dtype)

    def anchor_pixels(self, level: int) -> torch.Tensor:
        """The level's anchors (A, 2) in pixels."""
        return self.anchors[level] * self.stride[level]

    def relative_side_variance(self, variance: torch.Tensor, offsets: torch.Tensor, level: int,
                               anchor_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Decoded variances (..., 4) of x, y (cells) and w, h (size ratios) of the boxes with ``offsets`` (..., 4) on
        ``level`` -> (..., 4) variances of x1, y1, x2, y2 over the squared box width / height. ``anchor_index``: each
        row's anchor for (n, 4) rows; None for the level's whole (B, A, H, W, 4) maps.

        The four distributions are independent, so var(x1) = var(x2) = var(cx) + var(w) / 4 (and y alike).
        """
        stride, anchor_wh = self.stride[level], self.anchor_pixels(level)
        anchor_wh = anchor_wh.view(1, self.na, 1, 1, 2) if anchor_index is None else anchor_wh[anchor_index]
        box_wh = decode_offsets(offsets, self.head.space)[1] * anchor_wh  # (..., 2) pixels
        centre = variance[..., :2] * stride ** 2  # (..., 2) pixels^2
        size = variance[..., 2:] * anchor_wh ** 2  # (..., 2) pixels^2
        relative = (centre + size / 4) / box_wh.clamp(min=_MIN_SIDE_PX) ** 2  # (..., 2): x, y
        return torch.cat((relative, relative), -1)  # x1, y1, x2, y2

    def decode_level(self, raw: torch.Tensor, level: int) -> torch.Tensor:
        """One level's raw (B, A, H, W, no) -> (B, A*H*W, 5 + nc + num_extra [+ 4 side variances]) float32 decoded
        predictions, every anchor decoded.

        Float32 even for a half-precision model: fp16 spacing is 1 px above 1024 px, too coarse for tiny boxes.
        """
        raw = raw.float()
        box_raw, scores = raw[..., :self.box_channels], raw[..., self.box_channels:].sigmoid()  # scores (..., 1 + nc)
        if self.quality is not None:
            quality = self.quality(box_raw.unflatten(-1, (4, self.head.bins))).sigmoid()  # (..., 1)
            scores = torch.cat((scores[..., :1] * quality, scores[..., 1:]), -1)
        relative_variance = None
        if self.grid is not None and self.side_variance:
            offsets, uncertainty, variance = self.box_offsets_with_variance(box_raw)
            relative_variance = self.relative_side_variance(variance, offsets, level)
        else:
            offsets, uncertainty = self.box_offsets(box_raw)
        return self.prediction_rows(level, scores, offsets, uncertainty, relative_variance)

    def sparse_decode_level(self, conv: nn.Conv2d, inputs: torch.Tensor, level: int) -> torch.Tensor:
        """:meth:`decode_level` from the level's input features (B, C, H, W), computing the box logits and their
        K-bin softmax only for the anchors NMS at ``decode_conf`` can keep; the other rows' boxes are zeros.

        A row can pass NMS only if objectness > conf and some objectness x class > conf
        (utils.nms.non_max_suppression, the same float32 products), so the prediction convolution runs as two
        matrix products on the channels-last cells: objectness and classes for every anchor, then the box channels
        (4K of the 4K + 1 + nc, most of the head's work) for the anchors whose objectness passes (their quality
        estimate needs them). The kept rows equal the dense decode's up to float rounding (a product over fewer
        columns may round its last bit differently), and the statistics come from the same single softmax.
        """
        conf, box = self.decode_conf, self.box_channels
        batch, channels, height, width = inputs.shape
        cells = inputs.permute(0, 2, 3, 1)  # (B, H, W, C): a view of a channels-last map
        weight = conv.weight.view(self.na, self.no, channels)
        bias = conv.bias.view(self.na, self.no)
        scores = nn.functional.linear(cells, weight[:, box:].flatten(0, 1), bias[:, box:].flatten())
        scores = scores.float().view(batch, height, width, self.na, -1).permute(0, 3, 1, 2, 4).sigmoid()
        # scores: (B, A, H, W, 1 + nc)
        passing = (scores[..., 0] > conf).nonzero(as_tuple=True)  # (b, a, y, x) of the objectness-passing anchors
        box_raw = nn.functional.linear(cells[passing[0], passing[2], passing[3]], weight[:, :box].flatten(0, 1),
                                       bias[:, :box].flatten())  # (n, A * box): every anchor of those cells
        box_raw = box_raw.float().view(-1, self.na, box)[torch.arange(len(box_raw), device=box_raw.device),
                                                           passing[1]]  # (n, box)
        rows = scores[passing]  # (n, 1 + nc)
        if self.quality is not None:
            rows[:, 0] *= self.quality(box_raw.unflatten(-1, (4, self.head.bins))).sigmoid().squeeze(-1)
            scores[passing] = rows
        keep = (rows[:, 0] > conf) & ((rows[:, 1:] * rows[:, :1]).amax(-1) > conf)
        kept, box_raw = tuple(index[keep] for index in passing), box_raw[keep]
        offsets, uncertainty = scores.new_zeros(*scores.shape[:-1], 4), scores.new_zeros(*scores.shape[:-1], 1)
        relative_variance = None
        if self.side_variance:  # only for the decoded rows: the others' stay 0
            kept_offsets, uncertainty[kept], variance = self.box_offsets_with_variance(box_raw)
            offsets[kept] = kept_offsets
            relative_variance = scores.new_zeros(*scores.shape[:-1], SIDE_VARIANCE_COLUMNS)
            relative_variance[kept] = self.relative_side_variance(variance, kept_offsets, level, kept[1])
        else:
            offsets[kept], uncertainty[kept] = self.box_offsets(box_raw)
        return self.prediction_rows(level, scores, offsets, uncertainty, relative_variance)

    def prediction_rows(self, level: int, scores: torch.Tensor, offsets: torch.Tensor,
                        uncertainty: Optional[torch.Tensor], relative_variance: Optional[torch.Tensor]) -> torch.Tensor:
        """One level's scores (B, A, H, W, 1 + nc), offsets (..., 4), uncertainty (..., 1) or None and relative side
        variances (..., 4, :meth:`relative_side_variance`) or None -> (B, A*H*W, 5 + nc + num_extra [+ 4]) rows of
        pixel boxes and scores."""
        batch, _, height, width, _ = scores.shape
        cell_offset, size_ratio = decode_offsets(offsets, self.head.space)  # (B, A, H, W, 2) each
        stride = self.stride[level]
        ys = torch.arange(height, device=scores.device, dtype=scores.dtype)
        xs = torch.arange(width, device=scores.device, dtype=scores.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        cell_xy = torch.stack((grid_x, grid_y), -1).view(1, 1, height, width, 2)  # (1, 1, H, W, 2)
        anchor_wh = self.anchor_pixels(level).view(1, self.na, 1, 1, 2).to(scores.dtype)
        box_xy = (cell_offset + cell_xy) * stride
        box_wh = size_ratio * anchor_wh
        parts = [box_xy, box_wh, scores] + ([uncertainty] if uncertainty is not None else [])
        if relative_variance is not None:
            parts.append(relative_variance)
        width_out = 5 + self.nc + self.num_extra + (SIDE_VARIANCE_COLUMNS if relative_variance is not None else 0)
        return torch.cat(parts, -1).view(batch, -1, width_out)
