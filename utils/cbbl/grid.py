"""The C-BBL grid: K increasing points, the two-hot encoding of offsets on them and the decode back.

Each raw YOLO offset t (the value fed to the decode, utils/boxes.py decode_offsets) is clamped to the grid's
range, written as a two-hot distribution over the K points and restored from K logits as the expectation
of their softmax. Where the points sit is a grid mode's business (utils/cbbl/modes.py); the IN family here is
the shape the paper's grid and the fitted 'auto' grids take.
"""

from __future__ import annotations

import math
from typing import Union

import torch

from utils.cbbl.distribution import log_softmax

RESTORE_MODES = ("expectation", "top2")
# Below this beta the IN transform equals the uniform grid to float32 precision (its deviation is ~alpha*beta/8),
# and exp(beta) - 1 would underflow the normalisation.
_UNIFORM_BETA = 1e-7


def in_family_points(low: float, centre: float, high: float, bins: int, beta: float) -> torch.Tensor:
    """The IN family on [low, high], densest at ``centre``: (K,) float32, strictly increasing.

    Point k sits at u_k = -1 + 2k/(K-1) warped as centre + sign(u) * side * (exp(beta|u|) - 1) / (exp(beta) - 1),
    side = high - centre above the centre and centre - low below it. low = -alpha, centre 0, high = alpha is the
    paper's grid (y' = sign(y) alpha (exp(beta |y| / alpha) - 1) / (exp(beta) - 1)); beta ~ 0 is the uniform grid
    on each side.
    """
    if bins < 2:
        raise ValueError(f"C-BBL needs at least 2 grid points, got bins={bins}")
    if beta < 0 or not low <= centre <= high or low == high:
        raise ValueError(f"C-BBL grid needs beta >= 0 and low <= centre <= high (low < high), got beta={beta}, "
                         f"range [{low}, {high}], centre {centre}")
    points = in_family_values(low, centre, high, bins, beta).float()
    if not bool((points.diff() > 0).all()):
        raise ValueError(f"C-BBL beta={beta} packs the inner grid points together in float32 (range [{low}, "
                         f"{high}], bins={bins}); use a smaller beta")
    return points


def in_family_values(low: float, centre: float, high: float, bins: int, beta: float) -> torch.Tensor:
    """:func:`in_family_points` in float64, unchecked: the grid fit scores thousands of candidates."""
    half_steps = torch.arange(bins, dtype=torch.float64, device="cpu") - (bins - 1) / 2  # exact 0 at the centre
    unit = half_steps / ((bins - 1) / 2)
    warp = unit.abs() if beta < _UNIFORM_BETA else torch.expm1(beta * unit.abs()) / math.expm1(beta)
    return centre + torch.sign(unit) * torch.where(unit > 0, high - centre, centre - low) * warp


def check_points(points: torch.Tensor, name: str = "C-BBL grid") -> torch.Tensor:
    """``points`` as (K,) float32 after checking K >= 2 and strictly increasing finite values."""
    points = torch.as_tensor(points, dtype=torch.float32, device="cpu").reshape(-1)
    if len(points) < 2 or not bool(torch.isfinite(points).all()) or not bool((points.diff() > 0).all()):
        raise ValueError(f"{name} points must be >= 2 finite, strictly increasing values, got {points.tolist()}")
    return points


class CBBLGrid:
    """A grid on strictly increasing points (K,), its range their ends, with the two-hot encode / decode pair.

    Invariant: the two-hot weights of t, applied to the points, give back clamp(t, low, high) (lossless inside the
    range), and ``decode`` of logits peaked on one point returns that point.
    """

    def __init__(self, points: torch.Tensor):
        self.points = check_points(points)  # (K,)
        self.bins, self.low, self.high = len(self.points), float(self.points[0]), float(self.points[-1])
        self._copies: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"CBBLGrid(points={[round(p, 4) for p in self.points.tolist()]})"

    def points_on(self, device: Union[torch.device, str], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``points`` on ``device`` in ``dtype``, copied once: a host-to-GPU copy per loss call would stall the
        stream every step."""
        key = (torch.device(device), dtype)
        if key not in self._copies:
            self._copies[key] = self.points.to(device=device, dtype=dtype)
        return self._copies[key]

    def two_hot(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw offsets (...) -> two-hot label as (left index (...) long, p_left (...)).

        For y'_l <= t < y'_r (t clamped to the grid's range): p_l = (y'_r - t) / (y'_r - y'_l) on point l and
        p_r = 1 - p_l on point l + 1, so p_l y'_l + p_r y'_r == t. float64 input stays float64, else float32.
        """
        dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
        points = self.points_on(t.device, dtype)
        t = t.to(dtype).clamp(self.low, self.high)
        left = (torch.bucketize(t, points, right=True) - 1).clamp(0, self.bins - 2)  # (...) y'_l <= t < y'_l+1
        y_left, y_right = points.take(left), points.take(left + 1)
        return left, ((y_right - t) / (y_right - y_left)).clamp(0, 1)

    def decode(self, logits: torch.Tensor, restore: str) -> torch.Tensor:
        """Logits (..., K) -> offsets (...).

        ``expectation``: sum_i softmax(l)_i y'_i (the paper's choice). ``top2``: the two largest
        probabilities, renormalised, weight their points (the paper's ablation).
        """
        points = self.points_on(logits.device)
        probs = log_softmax(logits).exp()  # (..., K)
        if restore == "expectation":
            return probs @ points
        if restore == "top2":
            top_probs, top_idx = probs.topk(2, dim=-1)  # (..., 2)
            return (top_probs * points[top_idx]).sum(-1) / top_probs.sum(-1).clamp(min=1e-12)
        raise ValueError(f"unknown C-BBL restore mode {restore!r}; expected one of {RESTORE_MODES}")


class BoxGrids:
    """One C-BBL grid per coordinate group: centre (x, y) and size (w, h), each with its own points and range.

    The four box coordinates are encoded, lossed and decoded each on its group's grid; ``points`` (4, K) is the
    per-coordinate table the head's export-friendly decode projects on.
    """

    def __init__(self, centre: CBBLGrid, size: CBBLGrid):
        if centre.bins != size.bins:
            raise ValueError(f"centre and size grids need the same K, got {centre.bins} and {size.bins}")
        self.centre, self.size, self.bins = centre, size, centre.bins
        self.points = torch.stack([centre.points, centre.points, size.points, size.points])  # (4, K)

    def two_hot(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw offsets (..., 4) -> (left index (..., 4) long, p_left (..., 4)), each group on its own grid."""
        centre_left, centre_weight = self.centre.two_hot(t[..., :2])
        size_left, size_weight = self.size.two_hot(t[..., 2:])
        return torch.cat([centre_left, size_left], -1), torch.cat([centre_weight, size_weight], -1)

    def decode(self, logits: torch.Tensor, restore: str) -> torch.Tensor:
        """Logits (..., 4, K) -> offsets (..., 4) (see :meth:`CBBLGrid.decode`)."""
        return torch.cat([self.centre.decode(logits[..., :2, :], restore),
                          self.size.decode(logits[..., 2:, :], restore)], -1)

    def outside(self, t: torch.Tensor) -> torch.Tensor:
        """Raw offsets (..., 4) -> (..., 4) bool: the values :meth:`two_hot` clamps to their group's range."""
        low = t.new_tensor([self.centre.low] * 2 + [self.size.low] * 2)
        high = t.new_tensor([self.centre.high] * 2 + [self.size.high] * 2)
        return (t < low) | (t > high)
