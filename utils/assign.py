"""YOLOv5 target assignment: which anchors and cells of a level are positives for each ground truth.

Shared by every box-loss mode (utils/loss.py), and counted: tiny objects are where anchor matching fails
(a box whose size ratio to every anchor exceeds anchor_t gets no positive at all), so the diagnostics
here say per level and overall how many ground truths went unmatched.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

# A neighbour cell is a positive when the centre lies within this many cells of their shared edge (v7.0's g).
NEIGHBOUR_MARGIN = 0.5
# Where each candidate cell lies from the centre, in units of NEIGHBOUR_MARGIN: own, left, upper, right, lower.
CELL_SHIFTS = ((0, 0), (-1, 0), (0, -1), (1, 0), (0, 1))

class LevelTargets(NamedTuple):
    """Positives of one level, P rows. Boxes in grid units, centre relative to the cell's top-left corner."""

    batch: torch.Tensor  # (P,) long, image index in the batch
    anchor: torch.Tensor  # (P,) long
    cell_y: torch.Tensor  # (P,) long
    cell_x: torch.Tensor  # (P,) long
    box: torch.Tensor  # (P, 4) float (dx, dy, w, h): dx, dy in [-0.5, 1.5]
    anchor_wh: torch.Tensor  # (P, 2) float, grid units
    cls: torch.Tensor  # (P,) long
    gt: torch.Tensor  # (P,) long, row of the ground truth in the batch's targets


def assign_level(targets: torch.Tensor, anchors: torch.Tensor, grid_hw: tuple[int, int],
                 anchor_t: float) -> LevelTargets:
    """YOLOv5 v7.0's assignment on one level: anchor ratio test, then the GT's own cell and the neighbour
    cells across the cell edges within NEIGHBOUR_MARGIN of its centre.

    Args:
        targets: (M, 6) float ``[img_idx, cls, cx, cy, w, h]``, cxcywh normalised.
        anchors: (A, 2) anchor sizes in grid units of this level.
        grid_hw: (H, W) of the level's feature map.
        anchor_t: a GT goes to an anchor when max(w/a_w, a_w/w, h/a_h, a_h/h) < anchor_t.
    Returns:
        LevelTargets with P <= 5 * A * M positives, in v7.0's order: own cells, then left, upper, right and
        lower neighbours, each block in (anchor, GT) order. Per axis a centre c (grid units, G cells) takes
        the cell before when c % 1 < 0.5 and c > 1, the cell after when (G - c) % 1 < 0.5 and G - c > 1, so
        a centre on a cell's middle line takes none and one exactly on a grid line takes both: the cell
        before and its own cell a second time (v7.0's 2 neighbours; the duplicate doubles that GT's box and
        class weight). Cells are clamped into the grid (a centre on the far border: dx = 1).
    """
    grid_h, grid_w = grid_hw
    grid_size = targets.new_tensor([grid_w, grid_h])
    centre = targets[:, 2:4] * grid_size  # (M, 2) grid units
    size = targets[:, 4:6] * grid_size  # (M, 2)
    ratio = size[None] / anchors[:, None]  # (A, M, 2)
    worst_ratio = torch.max(ratio, 1 / ratio).amax(-1)  # (A, M); nan-free: inf for zero sizes
    anchor_idx, gt_idx = (worst_ratio < anchor_t).nonzero(as_tuple=True)  # (Q,)
    gt_centre = centre[gt_idx]  # (Q, 2)
    from_far_edge = grid_size - gt_centre  # (Q, 2)
    before = (gt_centre % 1 < NEIGHBOUR_MARGIN) & (gt_centre > 1)  # (Q, 2) left (x), upper (y)
    after = (from_far_edge % 1 < NEIGHBOUR_MARGIN) & (from_far_edge > 1)  # (Q, 2) right (x), lower (y)
    keep = torch.stack([torch.ones_like(before[:, 0]), before[:, 0], before[:, 1], after[:, 0], after[:, 1]])  # (5, Q)
    shifts = targets.new_tensor(CELL_SHIFTS) * NEIGHBOUR_MARGIN  # (5, 2)
    cells = (gt_centre[None] + shifts[:, None])[keep].long()  # (P, 2) x, y; truncated as v7.0 does
    cells = torch.stack([cells[:, 0].clamp(0, grid_w - 1), cells[:, 1].clamp(0, grid_h - 1)], -1)  # (P, 2)
    anchor_idx = anchor_idx.expand(5, -1)[keep]  # (P,)
    gt_idx = gt_idx.expand(5, -1)[keep]  # (P,)
    box = torch.cat([centre[gt_idx] - cells, size[gt_idx]], -1)  # (P, 4)
    return LevelTargets(batch=targets[gt_idx, 0].long(), anchor=anchor_idx, cell_y=cells[:, 1], cell_x=cells[:, 0],
                        box=box, anchor_wh=anchors[anchor_idx], cls=targets[gt_idx, 1].long(), gt=gt_idx)


class AssignmentStats:
    """Assignment diagnostics summed over calls until :meth:`reset` (train.py logs :meth:`as_dict` per epoch).

    Counts stay tensors on the loss's device, so a training step never waits for them; only ``as_dict`` syncs.
    Only calls with autograd enabled count (training steps): validation losses, computed under no_grad,
    leave the epoch's figures alone.
    """

    def __init__(self, level_names: list[str]):
        self.level_names = list(level_names)
        self._counts: dict[str, torch.Tensor | float] = {}

    def reset(self) -> None:
        self._counts = {}

    def add(self, name: str, value: torch.Tensor | float) -> None:
        if torch.is_grad_enabled():
            self._counts[name] = self._counts.get(name, 0.0) + value

    def as_dict(self) -> dict[str, float]:
        """GT totals, GTs with no positive anywhere, per-level positives and matched GTs, clamped offset labels.

        ``clamped`` counts offset labels t* outside the range they are clamped to (each C-BBL group's grid, or
        +-alpha for l1 and smooth_l1; 0 for ciou).
        """
        counts = {name: float(value) for name, value in self._counts.items()}
        gt_total = counts.get("gt_total", 0.0)
        stats = {"gt_total": gt_total, "gt_unmatched": counts.get("gt_unmatched", 0.0),
                 "gt_unmatched_frac": counts.get("gt_unmatched", 0.0) / max(gt_total, 1.0)}
        for name in self.level_names:
            stats[f"pos_{name}"] = counts.get(f"pos_{name}", 0.0)
            stats[f"gt_{name}"] = counts.get(f"gt_{name}", 0.0)
        stats["clamped"] = counts.get("clamped", 0.0)
        stats["clamped_frac"] = stats["clamped"] / max(counts.get("offsets", 0.0), 1.0)
        return stats


def level_name(stride: float, level: int) -> str:
    """'p3' for stride 8 (pyramid level = log2 stride); 'l{level}' when the stride is not a power of two."""
    exponent = math.log2(stride) if stride > 0 else -1.0
    return f"p{round(exponent)}" if exponent >= 0 and exponent == round(exponent) else f"l{level}"
