"""Tests for utils/cbbl/fit.py: target mass per interval, the equal-mass grid and the IN-family fit."""

from __future__ import annotations

import pytest
import torch

from utils.cbbl.fit import fit_in_family, interval_mass, quantile_points
from utils.cbbl.grid import in_family_points


def test_interval_mass_counts_outliers_in_the_end_intervals():
    targets = torch.tensor([-5.0, -0.5, 0.2, 0.4, 0.6, 9.0])
    mass = interval_mass(targets, torch.tensor([-1.0, 0.0, 0.5, 1.0]))
    torch.testing.assert_close(mass, torch.tensor([2, 2, 2], dtype=torch.float64) / 6)


def test_quantile_points_split_the_targets_evenly_and_pull_ties_apart():
    points = quantile_points(torch.arange(1000.0) / 1000, 0.0, 1.0, 5)
    torch.testing.assert_close(points, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]), rtol=0, atol=2e-3)
    tied = quantile_points(torch.zeros(100), -1.0, 1.0, 5)  # every target equal: still strictly increasing
    assert torch.all(tied.diff() > 0)
    with pytest.raises(ValueError, match="at least one target"):
        quantile_points(torch.zeros(0), -1.0, 1.0, 5)


@pytest.mark.parametrize("beta", [1.0, 4.0])
def test_fit_in_family_recovers_the_beta_whose_points_are_the_targets_quantiles(beta: float):
    # targets spread evenly over the intervals of an IN grid: that grid (its beta) is the best fit
    points = in_family_points(-4.0, 0.0, 4.0, 11, beta).double()
    per_interval = torch.linspace(0.05, 0.95, 50, dtype=torch.float64)
    targets = torch.cat([low + per_interval * (high - low) for low, high in zip(points[:-1], points[1:])])
    fitted, fitted_beta, centre = fit_in_family(targets, -4.0, 4.0, 11)
    # the mass is a step function of beta: every beta that keeps each target in its interval fits equally well
    assert fitted_beta == pytest.approx(beta, abs=0.15) and centre == 0.0
    torch.testing.assert_close(interval_mass(targets, fitted), torch.full((10,), 0.1, dtype=torch.float64))


def test_fit_in_family_with_a_free_centre_moves_the_densest_point_to_the_targets():
    targets = torch.cat([torch.randn(4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.2 + 1.0,
                         torch.linspace(-1.0, 3.0, 200, dtype=torch.float64)])
    _, beta, centre = fit_in_family(targets, -1.0, 3.0, 11, free_centre=True)
    assert beta > 1.0 and abs(centre - 1.0) < 0.3
