"""C-BBL grid fitting at training start (grids 'auto' and 'quantile'), the way autoanchor fits anchors.

The training set's labels are letterboxed to the training size (no augmentation), assigned to the model's
anchors the YOLOv5 way (utils.assign.assign_level) and encoded as raw offsets in the head's space; the
centre and size grids are then fitted to those targets (utils.head.fit_head_grid), printed as a table
(points and target mass per interval) and stored in the head, so val/detect/export decode the same way.
Deterministic: the only randomness, the image subsample of very large sets, is drawn from the run's seed.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np
import torch

from utils.assign import assign_level
from utils.boxes import encode_offsets
from utils.cbbl.fit import interval_mass
from utils.head import FITTED_GRIDS, HeadConfig, fit_head_grid

logger = logging.getLogger(__name__)

# Images read for the fit at most (a subsample drawn from the seed beyond this): plenty for K = 11 quantiles.
MAX_FIT_IMAGES = 5000


def letterboxed_targets(labels: list[np.ndarray], shapes: np.ndarray, imgsz: int) -> torch.Tensor:
    """Per image (n, 5) normalised [cls, cx, cy, w, h] and (N, 2) original [w, h] -> (M, 6) targets
    [img, cls, cx, cy, w, h] normalised to the padded imgsz x imgsz input (long side = imgsz, centred)."""
    rows = []
    for index, (label, (width, height)) in enumerate(zip(labels, np.asarray(shapes, dtype=np.float64))):
        label = np.asarray(label, dtype=np.float64).reshape(-1, 5)
        gain = imgsz / max(width, height)
        boxes = label[:, 1:5] * np.array([width, height, width, height]) * gain  # (n, 4) cxcywh pixels
        boxes[:, 0] += (imgsz - width * gain) / 2
        boxes[:, 1] += (imgsz - height * gain) / 2
        rows.append(np.concatenate([np.full((len(label), 1), index), label[:, :1], boxes / imgsz], 1))
    return torch.tensor(np.concatenate(rows) if rows else np.zeros((0, 6)), dtype=torch.float32)


def assigned_offsets(targets: torch.Tensor, anchors: torch.Tensor, strides: torch.Tensor, imgsz: int,
                     anchor_t: float, space: str) -> torch.Tensor:
    """Raw offset labels (P, 4) of every positive over the levels: the values the C-BBL loss encodes.

    anchors: (nl, A, 2) grid units per level; strides: (nl,).
    """
    labels = [torch.zeros(0, 4)]
    for level_anchors, stride in zip(anchors.float().cpu(), strides.tolist()):
        grid = int(round(imgsz / stride))
        assigned = assign_level(targets, level_anchors, (grid, grid), anchor_t)
        labels.append(encode_offsets(assigned.box[:, :2], assigned.box[:, 2:] / assigned.anchor_wh, space))
    return torch.cat(labels)


def fit_model_grid(model: Any, dataset: Any, imgsz: int, seed: int = 0) -> Optional[HeadConfig]:
    """Fit the C-BBL grids of ``model`` (grid 'auto' or 'quantile') to ``dataset``'s targets at ``imgsz``.

    ``dataset`` needs ``labels`` and ``shapes`` (as for autoanchor); call it after the anchors are final.
    Updates the head and ``model.yaml['detect']``; returns the new HeadConfig, or None for other heads.
    """
    head = model.detect.head
    if not head.is_cbbl or head.grid not in FITTED_GRIDS:
        return None
    labels, shapes = list(dataset.labels), np.asarray(dataset.shapes)
    if len(labels) > MAX_FIT_IMAGES:
        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:MAX_FIT_IMAGES]
        labels, shapes = [labels[i] for i in keep.tolist()], shapes[keep.numpy()]
    targets = letterboxed_targets(labels, shapes, imgsz)
    offsets = assigned_offsets(targets, model.detect.anchors, model.detect.stride, imgsz, head.anchor_t, head.space)
    if len(offsets) == 0:
        logger.warning("C-BBL grid %r: no assigned targets to fit; keeping %s", head.grid, head.centre_points)
        return None
    fitted = fit_head_grid(head, offsets)
    model.set_head(fitted)
    logger.info("%s", grid_table(fitted, offsets))
    return fitted


def grid_mass(head: HeadConfig, offsets: torch.Tensor) -> list[dict[str, Any]]:
    """Per coordinate group: its IN beta (None outside the family), points and % of ``offsets`` (P, 4) per interval."""
    rows = []
    for group, points, columns, beta in (("centre", head.centre_points, offsets[:, :2], head.group_betas[0]),
                                         ("size", head.size_points, offsets[:, 2:], head.group_betas[1])):
        mass = interval_mass(columns.reshape(-1), torch.tensor(points)) * 100
        rows.append({"group": group, "beta": beta, "points": list(points), "mass_pct": mass.tolist()})
    return rows


def grid_table(head: HeadConfig, offsets: torch.Tensor) -> str:
    """The grids as text: per group the points and the % of targets per interval (equal mass = 100/(K-1))."""
    lines = [f"C-BBL grid '{head.grid}' fitted on {len(offsets)} assigned targets (K={head.bins}, "
             f"equal mass = {100 / (head.bins - 1):.1f}% per interval):"]
    for row in grid_mass(head, offsets):
        extra = f" beta {row['beta']:.2f}" if row["beta"] is not None else ""
        lines.append(f"  {row['group']:<6}{extra} points {' '.join(f'{p:+.2f}' for p in row['points'])}")
        lines.append(f"  {row['group']:<6} % per interval {' '.join(f'{m:.1f}' for m in row['mass_pct'])}")
    return "\n".join(lines)
