"""TPH-YOLOv5++'s CLLADetect (cv516Buaa/tph-yolov5 @052dfeb, models/yolo.py): P2 detail fused into the P3 head.

Inputs [P2, P3, P4, P5]; outputs 3 levels (strides 8/16/32). The P3 level is predicted by a cross-layer
local attention block (CLLA): every P3 cell queries the 2 x 2 P2 cells under it, and the attended
features are averaged with the P3 features before the prediction convolution. P4 and P5 use the usual
1x1 convolutions. Same layer names and arithmetic as TPH (``det.conv1``, ``det.conv2``, ``det.att.q/k/v``,
``det.det``, ``m.0``, ``m.1``), so its checkpoints load by name; any of our box modes (regress, C-BBL) works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from models.detect import Detect
from utils.head import HeadConfig

# CLLA's neighbourhood: each coarse cell attends the RANGE x RANGE finer cells under it (TPH's ``range=2``).
RANGE = 2


class CLLA(nn.Module):
    """Cross-layer local attention: coarse (B, C, H, W) queries its RANGE x RANGE cells of fine (B, C, 2H, 2W).

    TPH's scoring, kept exactly: dot products divided by RANGE (not sqrt(C)), then softmax over
    ``2 * mean - score`` (so the cells *least* like the query weigh most); output (attended + coarse) / 2.
    """

    def __init__(self, c: int):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, c)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        height, width = coarse.shape[2:]
        pad = RANGE // 2 - 1
        fine = nn.functional.pad(fine, (pad, pad, pad, pad))
        local = torch.stack([fine[..., i::2, j::2][..., :height, :width] for i in range(RANGE) for j in range(RANGE)],
                            2)  # (B, C, RANGE^2, H, W)
        local = local.permute(0, 3, 4, 2, 1)  # (B, H, W, RANGE^2, C)
        query = self.q(coarse.permute(0, 2, 3, 1).unsqueeze(3))  # (B, H, W, 1, C)
        scores = (query * self.k(local) / RANGE).sum(4)  # (B, H, W, RANGE^2)
        weights = (2 * scores.mean(3, keepdim=True) - scores).softmax(-1)  # (B, H, W, RANGE^2)
        attended = (self.v(local) * weights.unsqueeze(4)).sum(3).permute(0, 3, 1, 2)  # (B, C, H, W)
        return (attended + coarse) / 2


class CLLABlock(nn.Module):
    """1x1 convs bring P2 and P3 to P2's width and CLLA fuses them; ``det``, the 1x1 conv that predicts the P3
    level's channels from the fused features, is applied by the head like its other levels' convolutions."""

    def __init__(self, c_fine: int, c_coarse: int, out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_fine, c_fine, 1)
        self.conv2 = nn.Conv2d(c_coarse, c_fine, 1)
        self.att = CLLA(c_fine)
        self.det = nn.Conv2d(c_fine, out, 1)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """P2 (B, c_fine, 2H, 2W) and P3 (B, c_coarse, H, W) -> the fused features (B, c_fine, H, W) ``det`` reads."""
        return self.att(self.conv1(fine), self.conv2(coarse))


class CLLADetect(Detect):
    """Detect over [P2, P3, P4, P5] inputs with 3 output levels; P3's prediction comes from :class:`CLLABlock`."""

    extra_inputs = 1

    def __init__(self, nc: int, anchors: Sequence[Sequence[float]], ch: Sequence[int],
                 head: HeadConfig | dict | None = None):
        if len(ch) != len(anchors) + 1:
            raise ValueError(f"CLLADetect takes one more input than levels (P2 first): got {len(ch)} inputs for "
                             f"{len(anchors)} anchor levels")
        super().__init__(nc, anchors, ch[1:], head)
        self.det = CLLABlock(ch[0], ch[1], self.no * self.na)
        self.m = nn.ModuleList(list(self.m)[1:])

    def prediction_convs(self) -> list[nn.Conv2d]:
        return [self.det.det, *self.m]

    def level_inputs(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.det(features[0], features[1]), *features[2:]]
