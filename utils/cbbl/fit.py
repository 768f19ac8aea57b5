"""Grid fitting: points for the offset labels a training set actually produces (the fitted grid modes use it).

Two fits: equal target mass per interval (:func:`quantile_points`) and the IN family whose intervals hold the
targets most evenly (:func:`fit_in_family`); :func:`interval_mass` is the measure both are judged by.
"""

from __future__ import annotations

import math

import torch

from utils.cbbl.grid import check_points, in_family_points, in_family_values

# Candidate IN strengths and, for a free centre, its candidate positions (fractions of the range).
FIT_BETAS = torch.linspace(0.0, 10.0, 401, dtype=torch.float64)
FIT_CENTRES = torch.linspace(0.05, 0.95, 37, dtype=torch.float64)


def interval_mass(targets: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Fraction of ``targets`` (N,) in each of the K-1 intervals of ``points`` (..., K); (..., K-1).

    Targets outside the range count in the end intervals, as the two-hot encoding clamps them there.
    """
    ordered = targets.double().reshape(-1).sort().values
    inner = points.double()[..., 1:-1].contiguous()  # (..., K-2) the boundaries between intervals
    below = torch.searchsorted(ordered, inner.reshape(-1)).reshape(inner.shape).double()  # (..., K-2)
    edges = torch.cat([torch.zeros_like(below[..., :1]), below, torch.full_like(below[..., :1], len(ordered))], -1)
    return edges.diff(dim=-1) / max(len(ordered), 1)


def quantile_points(targets: torch.Tensor, low: float, high: float, bins: int, symmetric: bool = False) -> torch.Tensor:
    """Equal-target-mass grid: the ends at [low, high], point k at the k/(K-1) quantile of the (clamped) targets.

    ``symmetric`` pools t and -t first (centre targets are symmetric about 0 by construction; this halves the
    sampling noise). Ties are pulled apart to keep the points strictly increasing. Returns (K,) float32.
    """
    values = targets.double().reshape(-1).clamp(low, high)
    if symmetric:
        values = torch.cat([values, -values])
    levels = torch.linspace(0.0, 1.0, bins, dtype=torch.float64)[1:-1]
    if not len(values):
        raise ValueError("a quantile grid needs at least one target")
    inner = torch.quantile(values, levels)
    points = torch.cat([inner.new_tensor([low]), inner, inner.new_tensor([high])])
    gap = (high - low) * 1e-4  # ties (discrete targets) become a hair apart instead of an empty interval
    for index in range(1, bins):
        points[index] = torch.maximum(points[index], points[index - 1] + gap)
    points = points.clamp(max=high)
    for index in range(bins - 2, -1, -1):
        points[index] = torch.minimum(points[index], points[index + 1] - gap)
    return check_points(points.float(), "quantile grid")


def fit_in_family(targets: torch.Tensor, low: float, high: float, bins: int,
                  free_centre: bool = False) -> tuple[torch.Tensor, float, float]:
    """The IN-family grid on [low, high] whose intervals hold the targets most evenly: (points (K,), beta, centre).

    Minimises sum over intervals of (mass - 1/(K-1))^2 over beta in :data:`FIT_BETAS` and, with ``free_centre``,
    the densest point's position over :data:`FIT_CENTRES` (else the centre is 0, the paper's symmetric family).
    A grid search: deterministic, and no local optimum to get stuck in.
    """
    centres = [low + float(f) * (high - low) for f in FIT_CENTRES] if free_centre else [0.0]
    best = (math.inf, 0.0, 0.0)
    for centre in centres:
        candidates = torch.stack([in_family_values(low, centre, high, bins, float(beta)) for beta in FIT_BETAS])
        spread = ((interval_mass(targets, candidates) - 1.0 / (bins - 1)) ** 2).sum(-1)  # (B,)
        index = int(spread.argmin())
        if float(spread[index]) < best[0] - 1e-12:
            best = (float(spread[index]), float(FIT_BETAS[index]), centre)
    _, beta, centre = best
    return in_family_points(low, centre, high, bins, beta), beta, centre
