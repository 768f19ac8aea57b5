"""Tests for utils/cbbl/modes.py: the grid-mode table, each mode's ranges and points, and the fitted modes' fits."""

from __future__ import annotations

import math

import pytest
import torch

from utils.cbbl.fit import interval_mass
from utils.cbbl.modes import (
    FITTED_GRIDS,
    GRID_MODE_TABLE,
    GRID_MODES,
    FittedGridMode,
    GridRanges,
    reachable_size_range,
)

RANGES = GridRanges((-4.0, 4.0), (-1.1, 3.0))


def test_the_table_lists_every_mode_and_which_are_fitted():
    assert GRID_MODES == ("in", "auto", "quantile", "uniform")  # the order --help shows
    assert FITTED_GRIDS == ("auto", "quantile")
    for name, mode in GRID_MODE_TABLE.items():
        assert hasattr(mode, "fit") == (name in FITTED_GRIDS) == isinstance(mode, FittedGridMode)


@pytest.mark.parametrize("name", GRID_MODES)
@pytest.mark.parametrize("space", ["logit", "linear"])
def test_every_mode_fills_its_ranges_with_increasing_points(name, space):
    mode = GRID_MODE_TABLE[name]
    ranges = mode.ranges(4.0, 4.0, space)
    points = mode.points(ranges, 11, 5.0)
    for group_points, (low, high) in zip(points[:2], ranges):
        assert len(group_points) == 11 and all(b > a for a, b in zip(group_points, group_points[1:]))
        assert group_points[0] == pytest.approx(low) and group_points[-1] == pytest.approx(high)
    assert (points.beta, points.size_beta) == (None, None)  # only a fit chooses strengths


def test_the_paper_grid_spans_plus_minus_alpha_for_both_groups_with_the_design_values():
    mode = GRID_MODE_TABLE["in"]
    ranges = mode.ranges(4.0, 4.0, "logit")
    assert ranges == GridRanges((-4.0, 4.0), (-4.0, 4.0))
    for beta, expected in ((5.0, [0, 0.047, 0.173, 0.518, 1.454, 4]), (3.0, [0, 0.172, 0.486, 1.058, 2.101, 4])):
        centre, size, _, _ = mode.points(ranges, 11, beta)
        assert centre == size and centre[5:] == pytest.approx(expected, abs=1e-3)
    assert mode.group_betas(3.0, None) == (3.0, 3.0)


def test_the_other_modes_give_the_size_group_the_range_the_assignment_reaches():
    # logit: ratio 1/4 -> logit(1/4) = -ln 3; ratio 4 -> logit(1), clipped to alpha. linear: +-ln 4
    assert reachable_size_range(4.0, 4.0, "logit") == pytest.approx((-math.log(3.0), 4.0))
    assert reachable_size_range(4.0, 4.0, "linear") == pytest.approx((-math.log(4.0), math.log(4.0)))
    for name in ("auto", "quantile", "uniform"):
        assert GRID_MODE_TABLE[name].ranges(4.0, 4.0, "linear") == (
            (-4.0, 4.0), pytest.approx((-math.log(4.0), math.log(4.0))))


def test_uniform_ignores_beta_and_spaces_each_side_of_zero_evenly():
    centre, size, _, _ = GRID_MODE_TABLE["uniform"].points(RANGES, 11, 5.0)
    assert centre == pytest.approx(torch.linspace(-4.0, 4.0, 11).tolist(), abs=1e-6)
    expected_size = torch.cat([torch.linspace(-1.1, 0.0, 6), torch.linspace(0.0, 3.0, 6)[1:]])
    assert size == pytest.approx(expected_size.tolist(), abs=1e-6)


def skewed_offsets(count: int = 20000) -> torch.Tensor:
    """(count, 4) offsets: centre columns symmetric about 0, size columns bunched near 0.3."""
    generator = torch.Generator().manual_seed(0)
    centre = torch.randn(count, 2, generator=generator) * 1.2
    size = (torch.randn(count, 2, generator=generator) * 0.4 + 0.3).clamp(-1.1, 3.0)
    return torch.cat([centre, size], 1)


def test_quantile_fit_puts_equal_mass_in_every_interval():
    offsets = skewed_offsets()
    fitted = GRID_MODE_TABLE["quantile"].fit(offsets, RANGES, 11)
    for points, columns in ((fitted.centre, offsets[:, :2]), (fitted.size, offsets[:, 2:])):
        assert (interval_mass(columns.reshape(-1), torch.tensor(points)) - 0.1).abs().max() < 0.02
    assert (fitted.beta, fitted.size_beta) == (None, None)
    assert GRID_MODE_TABLE["quantile"].group_betas(5.0, None) == (None, None)


def test_auto_fit_keeps_the_centre_symmetric_and_covers_the_size_targets():
    offsets = skewed_offsets()
    mode = GRID_MODE_TABLE["auto"]
    fitted = mode.fit(offsets, RANGES, 11)
    assert fitted.centre == pytest.approx([-p for p in reversed(fitted.centre)], abs=1e-6)
    assert fitted.centre[0] == -4.0 and fitted.size[0] == pytest.approx(-1.1)
    assert fitted.size[-1] < 3.0 and (offsets[:, 2:] <= fitted.size[-1]).double().mean() >= 0.998
    assert fitted.beta > 0 and fitted.size_beta > 0
    assert mode.group_betas(fitted.beta, fitted.size_beta) == (fitted.beta, fitted.size_beta)
