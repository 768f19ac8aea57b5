"""Grid modes: where the C-BBL centre and size grids put their K points, one object per mode in GRID_MODE_TABLE.

``in`` is the paper's grid: uniform on [-alpha, alpha], then the IN transform with ``beta``, the same for both
groups. ``uniform`` keeps the uniform spacing; it, ``auto`` and ``quantile`` give the size group the range the
assignment can produce (its lower end is the anchor_t bound, not -alpha). ``auto`` (the IN family fitted to the
training targets) and ``quantile`` (equal target mass per interval) are fitted at training start
(utils/engine/grid_fit.py collects the targets, utils/head.py fit_head_grid stores the points in the head);
until then they use the IN family with the paper's beta on their ranges.

A mode answers three questions: the range of each group (:meth:`GridMode.ranges`), the points that follow from
the settings alone (:meth:`GridMode.points`) and, for a fitted mode, the points fitted to the offset labels
(:meth:`FittedGridMode.fit`). Adding a grid mode is adding one class and its table entry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple, Optional

import torch

from utils.boxes import encode_offsets
from utils.cbbl.fit import fit_in_family, quantile_points
from utils.cbbl.grid import in_family_points

# 'auto': the size grid's upper end covers this fraction of the size targets (the rest is clamped to it).
AUTO_SIZE_COVERAGE = 0.999


class GridRanges(NamedTuple):
    """The offset range [low, high] the centre (x, y) and size (w, h) grids span."""

    centre: tuple[float, float]
    size: tuple[float, float]


class GridPoints(NamedTuple):
    """The centre and size grids' points (K,) each; a fit also gives the IN strengths it chose (else None)."""

    centre: tuple[float, ...]
    size: tuple[float, ...]
    beta: Optional[float] = None
    size_beta: Optional[float] = None


def reachable_size_range(alpha: float, anchor_t: float, space: str) -> tuple[float, float]:
    """The w, h offsets the assignment can produce (size ratio in [1/anchor_t, anchor_t]) in ``space``, clipped
    to [-alpha, alpha]."""
    cpu64 = {"dtype": torch.float64, "device": "cpu"}  # a constant, also while a model is built on "meta"
    ratio = torch.tensor([[1.0 / anchor_t], [anchor_t]], **cpu64).expand(2, 2)
    bounds = encode_offsets(torch.zeros(2, 2, **cpu64), ratio, space)[:, 2]  # (2,) w column
    return max(-alpha, float(bounds[0])), min(alpha, float(bounds[1]))


def in_family_on(bounds: tuple[float, float], bins: int, beta: float) -> tuple[float, ...]:
    """The IN family on [low, high] with strength ``beta``, densest at 0 (or at the end nearer to it)."""
    low, high = bounds
    return tuple(in_family_points(low, min(max(0.0, low), high), high, bins, beta).tolist())


class GridMode:
    """A mode whose points follow from the settings: the IN family with ``beta`` on each group's range; the
    centre spans [-alpha, alpha], the size what the assignment can produce."""

    def ranges(self, alpha: float, anchor_t: float, space: str) -> GridRanges:
        return GridRanges((-alpha, alpha), reachable_size_range(alpha, anchor_t, space))

    def points(self, ranges: GridRanges, bins: int, beta: float) -> GridPoints:
        """The (centre, size) points (K,) each that follow from the settings alone."""
        return GridPoints(in_family_on(ranges.centre, bins, beta), in_family_on(ranges.size, bins, beta))

    def group_betas(self, beta: float, size_beta: Optional[float]) -> tuple[Optional[float], Optional[float]]:
        """The IN strength of the (centre, size) grids, from the head's ``beta`` (the paper's when none was given)
        and ``size_beta``; None for grids outside the IN family."""
        return None, None


class PaperGrid(GridMode):
    """``in``: the paper's symmetric grid on [-alpha, alpha] for both groups, IN strength ``beta``."""

    def ranges(self, alpha: float, anchor_t: float, space: str) -> GridRanges:
        return GridRanges((-alpha, alpha), (-alpha, alpha))

    def group_betas(self, beta: float, size_beta: Optional[float]) -> tuple[Optional[float], Optional[float]]:
        return beta, beta


class UniformGrid(GridMode):
    """``uniform``: evenly spaced points on each group's range (beta 0)."""

    def points(self, ranges: GridRanges, bins: int, beta: float) -> GridPoints:
        return super().points(ranges, bins, 0.0)


class FittedGridMode(GridMode, ABC):
    """A mode whose points are fitted to the training set's offset labels at training start."""

    @abstractmethod
    def fit(self, offsets: torch.Tensor, ranges: GridRanges, bins: int) -> GridPoints:
        """Points fitted to raw offset labels (P, 4) [x, y, w, h] on ``ranges``."""


class AutoGrid(FittedGridMode):
    """``auto``: the IN family fitted to the targets; the centre keeps the paper's symmetric [-alpha, alpha] form
    and gets its beta, the size gets its beta, densest point and upper end (the targets' 99.9th percentile,
    within the reachable range)."""

    def fit(self, offsets: torch.Tensor, ranges: GridRanges, bins: int) -> GridPoints:
        centre_targets, size_targets = offsets[:, :2].reshape(-1).double(), offsets[:, 2:].reshape(-1).double()
        centre, centre_beta, _ = fit_in_family(torch.cat([centre_targets, -centre_targets]), *ranges.centre, bins)
        size_low, size_high = ranges.size
        size_high = min(size_high, max(float(torch.quantile(size_targets, AUTO_SIZE_COVERAGE)), size_low + 1e-3))
        size, size_beta, _ = fit_in_family(size_targets, size_low, size_high, bins, free_centre=True)
        return GridPoints(tuple(centre.tolist()), tuple(size.tolist()), centre_beta, size_beta)

    def group_betas(self, beta: float, size_beta: Optional[float]) -> tuple[Optional[float], Optional[float]]:
        return beta, size_beta


class QuantileGrid(FittedGridMode):
    """``quantile``: equal target mass per interval on each group's range (centre targets pooled with their
    mirror image, symmetric by construction)."""

    def fit(self, offsets: torch.Tensor, ranges: GridRanges, bins: int) -> GridPoints:
        centre = quantile_points(offsets[:, :2].reshape(-1).double(), *ranges.centre, bins, symmetric=True)
        size = quantile_points(offsets[:, 2:].reshape(-1).double(), *ranges.size, bins)
        return GridPoints(tuple(centre.tolist()), tuple(size.tolist()))


GRID_MODE_TABLE: dict[str, GridMode] = {"in": PaperGrid(), "auto": AutoGrid(), "quantile": QuantileGrid(),
                                        "uniform": UniformGrid()}
GRID_MODES = tuple(GRID_MODE_TABLE)
FITTED_GRIDS = tuple(name for name, mode in GRID_MODE_TABLE.items() if isinstance(mode, FittedGridMode))
