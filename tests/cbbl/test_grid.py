"""Tests for utils/cbbl/grid.py: the IN family, the grid's two-hot encode / decode and the per-group grids."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.cbbl.reference import dense_two_hot, paper_grid
from utils.cbbl.distribution import two_hot_loss
from utils.cbbl.grid import BoxGrids, CBBLGrid, in_family_points

GRID_ARGS = dict(alpha=st.floats(0.5, 8.0), bins=st.integers(2, 25), beta=st.floats(0.0, 8.0))


@settings(deadline=None, max_examples=40)
@given(**GRID_ARGS)
def test_symmetric_in_family_is_increasing_with_ends_at_alpha(alpha: float, bins: int, beta: float) -> None:
    points = in_family_points(-alpha, 0.0, alpha, bins, beta)
    assert points.shape == (bins,)
    assert torch.all(points.diff() > 0)
    torch.testing.assert_close(points, -points.flip(0), rtol=0, atol=1e-6 * alpha)
    assert points[0].item() == pytest.approx(-alpha) and points[-1].item() == pytest.approx(alpha)
    if bins % 2:
        assert points[bins // 2].item() == 0.0


def test_beta_zero_and_its_limit_are_the_uniform_grid() -> None:
    uniform = torch.linspace(-4, 4, 11)
    torch.testing.assert_close(in_family_points(-4.0, 0.0, 4.0, 11, 0.0), uniform)
    torch.testing.assert_close(in_family_points(-4.0, 0.0, 4.0, 11, 5e-324), uniform)  # no 0/0 on the way
    torch.testing.assert_close(in_family_points(-4.0, 0.0, 4.0, 11, 1e-6), uniform, rtol=0, atol=1e-5)


@pytest.mark.parametrize("alpha, bins, beta", [(4.0, 1, 5.0), (0.0, 11, 5.0), (4.0, 11, -1.0), (4.0, 11, 200.0)])
def test_in_family_rejects_bad_settings(alpha: float, bins: int, beta: float) -> None:
    with pytest.raises(ValueError, match="C-BBL"):
        in_family_points(-alpha, 0.0, alpha, bins, beta)


def test_in_family_on_an_asymmetric_range():
    points = in_family_points(-1.1, 0.2, 3.0, 11, 2.0)
    assert points[0].item() == pytest.approx(-1.1) and points[-1].item() == pytest.approx(3.0)
    assert points[5].item() == pytest.approx(0.2) and torch.all(points.diff() > 0)
    gaps = points.diff()
    assert gaps[4] < gaps[0] and gaps[5] < gaps[9]  # densest at the centre on both sides
    with pytest.raises(ValueError, match="centre"):
        in_family_points(0.0, -1.0, 3.0, 11, 2.0)


@settings(deadline=None, max_examples=40)
@given(t=st.lists(st.floats(-4.0, 4.0), min_size=1, max_size=30), beta=st.sampled_from([0.0, 3.0, 5.0]))
def test_two_hot_is_lossless_inside_the_range(t: list[float], beta: float) -> None:
    grid = paper_grid(beta=beta)
    offsets = torch.tensor(t)
    target = dense_two_hot(grid, offsets)  # (n, K)
    torch.testing.assert_close(target.sum(-1), torch.ones(len(t)))
    nonzero = target > 0
    assert torch.all(nonzero.sum(-1) <= 2)
    for row in nonzero:
        idx = row.nonzero().flatten()
        assert len(idx) < 2 or idx[1] - idx[0] == 1, "the two non-zeros must sit on neighbouring points"
    restored = (target.double() * grid.points.double()).sum(-1)
    torch.testing.assert_close(restored, offsets.double(), rtol=0, atol=1e-6)


@settings(deadline=None, max_examples=30)
@given(t=st.lists(st.floats(-50.0, 50.0), min_size=1, max_size=30))
def test_two_hot_index_agrees_with_searchsorted(t: list[float]) -> None:
    grid = paper_grid()
    offsets = torch.cat([torch.tensor(t), grid.points])  # the points themselves are the edge cases
    left, weight_left = grid.two_hot(offsets)
    clamped = offsets.clamp(-4.0, 4.0)
    expected = torch.searchsorted(grid.points, clamped, right=True).clamp(1, 10) - 1
    torch.testing.assert_close(left, expected)
    assert torch.all((weight_left >= 0) & (weight_left <= 1))


def test_two_hot_clamps_outside_the_range() -> None:
    grid = paper_grid()
    target = dense_two_hot(grid, torch.tensor([9.0, -7.5, 4.0]))
    assert target[0, -1] == 1 and target[1, 0] == 1 and target[2, -1] == 1
    torch.testing.assert_close(grid.decode(torch.log(target.clamp(min=1e-12)), "expectation"),
                               torch.tensor([4.0, -4.0, 4.0]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("restore", ["expectation", "top2"])
def test_decode_of_a_large_one_hot_returns_that_point(restore: str) -> None:
    grid = paper_grid()
    logits = torch.eye(11) * 100.0  # row i: one-hot on point i
    torch.testing.assert_close(grid.decode(logits, restore), grid.points, rtol=0, atol=1e-5)


def test_top2_restores_from_the_two_largest_probabilities() -> None:
    grid = paper_grid(beta=0.0)  # points -4, -3.2, ..., 4
    probs = torch.zeros(11)
    probs[[2, 3, 9]] = torch.tensor([0.3, 0.5, 0.2])
    expected = (0.3 * grid.points[2] + 0.5 * grid.points[3]) / 0.8
    torch.testing.assert_close(grid.decode(probs.log(), "top2"), expected)
    with pytest.raises(ValueError, match="restore"):
        grid.decode(probs.log(), "median")


def test_grid_on_any_points_encodes_losslessly_and_clamps_to_its_ends():
    grid = CBBLGrid(torch.tensor([-1.0, -0.2, 0.1, 0.7, 2.5]))
    assert (grid.bins, grid.low, grid.high) == (5, -1.0, 2.5)
    t = torch.linspace(-1.0, 2.5, 301, dtype=torch.float64)
    torch.testing.assert_close(dense_two_hot(grid, t) @ grid.points.double(), t)
    torch.testing.assert_close(dense_two_hot(grid, torch.tensor([-3.0, 9.0])) @ grid.points, torch.tensor([-1.0, 2.5]))
    with pytest.raises(ValueError, match="increasing"):
        CBBLGrid(torch.tensor([0.0, 0.0, 1.0]))


def test_points_are_copied_to_a_device_once():
    grid = CBBLGrid(torch.tensor([-1.0, 0.0, 2.0]))
    first = grid.points_on(torch.device("cpu"), torch.float64)
    assert grid.points_on("cpu", torch.float64) is first and first.dtype == torch.float64
    assert torch.equal(first.float(), grid.points)


def test_box_grids_encode_each_group_on_its_grid_and_the_fused_loss_agrees():
    centre, size = paper_grid(beta=2.0), CBBLGrid(torch.linspace(-1.0, 3.0, 11))
    grids = BoxGrids(centre, size)
    t = torch.tensor([[0.3, -2.0, -0.5, 1.7], [3.9, 0.0, 2.9, -0.9]])
    left, weight = grids.two_hot(t)
    for column, grid in enumerate((centre, centre, size, size)):
        column_left, column_weight = grid.two_hot(t[:, column])
        assert torch.equal(left[:, column], column_left) and torch.equal(weight[:, column], column_weight)
    logits = torch.randn(2, 4, 11, generator=torch.Generator().manual_seed(0))
    loss, expectation = two_hot_loss(logits, left, weight, grids.points, 1.0, "abs")
    for column, grid in enumerate((centre, centre, size, size)):
        column_loss, column_expectation = two_hot_loss(logits[:, column], left[:, column], weight[:, column],
                                                       grid.points, 1.0, "abs")
        torch.testing.assert_close(loss[:, column], column_loss)
        torch.testing.assert_close(expectation[:, column], column_expectation)
    torch.testing.assert_close(expectation, grids.decode(logits, "expectation"))


def test_box_grids_mark_the_offsets_each_group_clamps():
    grids = BoxGrids(paper_grid(), CBBLGrid(torch.linspace(-1.0, 3.0, 11)))
    t = torch.tensor([[4.5, -3.9, -1.5, 2.9], [0.0, -4.0, 0.0, 3.5]])
    expected = torch.tensor([[True, False, True, False], [False, False, False, True]])
    assert torch.equal(grids.outside(t), expected)
    with pytest.raises(ValueError, match="same K"):
        BoxGrids(paper_grid(bins=11), paper_grid(bins=7))
