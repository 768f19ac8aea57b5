"""Tests for utils/cbbl.py: the grid, two-hot encode / decode, the C-BBL losses and the offset spaces."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.cbbl import (
    OFFSET_SPACES,
    BoxGrids,
    CBBLGrid,
    ce_loss,
    decode_offsets,
    decoded_points,
    distribution_entropy,
    encode_offsets,
    entropy,
    expectation_and_entropy,
    grid_points,
    in_family_points,
    interval_mass,
    quantile_points,
    side_statistics,
    two_hot_loss,
    um_loss,
)

GRID_ARGS = dict(alpha=st.floats(0.5, 8.0), bins=st.integers(2, 25), beta=st.floats(0.0, 8.0))


@settings(deadline=None, max_examples=40)
@given(**GRID_ARGS)
def test_grid_symmetric_increasing_with_ends_at_alpha(alpha: float, bins: int, beta: float) -> None:
    points = CBBLGrid(alpha, bins, beta).points
    assert points.shape == (bins,)
    assert torch.all(points.diff() > 0)
    torch.testing.assert_close(points, -points.flip(0), rtol=0, atol=1e-6 * alpha)
    assert points[0].item() == pytest.approx(-alpha) and points[-1].item() == pytest.approx(alpha)
    if bins % 2:
        assert points[bins // 2].item() == 0.0


@pytest.mark.parametrize("beta, expected", [(5.0, [0, 0.047, 0.173, 0.518, 1.454, 4]),
                                            (3.0, [0, 0.172, 0.486, 1.058, 2.101, 4])])
def test_grid_matches_design_values(beta: float, expected: list[float]) -> None:
    points = CBBLGrid(alpha=4.0, bins=11, beta=beta).points
    torch.testing.assert_close(points[5:], torch.tensor(expected), rtol=0, atol=1e-3)


def test_uniform_grid_for_beta_zero_or_flag() -> None:
    uniform = torch.linspace(-4, 4, 11)
    torch.testing.assert_close(CBBLGrid(beta=0.0).points, uniform)
    torch.testing.assert_close(CBBLGrid(beta=5e-324).points, uniform)  # no 0/0 on the way to the limit
    torch.testing.assert_close(CBBLGrid(beta=1e-6).points, uniform, rtol=0, atol=1e-5)
    torch.testing.assert_close(CBBLGrid(beta=5.0, uniform=True).points, uniform)


@pytest.mark.parametrize("kwargs", [dict(bins=1), dict(alpha=0.0), dict(beta=-1.0), dict(beta=200.0)])
def test_grid_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="C-BBL"):
        grid_points(**kwargs)


@settings(deadline=None, max_examples=40)
@given(t=st.lists(st.floats(-4.0, 4.0), min_size=1, max_size=30), beta=st.sampled_from([0.0, 3.0, 5.0]))
def test_encode_is_a_lossless_two_hot_inside_the_range(t: list[float], beta: float) -> None:
    grid = CBBLGrid(alpha=4.0, bins=11, beta=beta)
    offsets = torch.tensor(t)
    target = grid.encode(offsets)  # (n, K)
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
    grid = CBBLGrid(alpha=4.0, bins=11, beta=5.0)
    offsets = torch.cat([torch.tensor(t), grid.points])  # the points themselves are the edge cases
    left, weight_left = grid.two_hot(offsets)
    clamped = offsets.clamp(-4.0, 4.0)
    expected = torch.searchsorted(grid.points, clamped, right=True).clamp(1, 10) - 1
    torch.testing.assert_close(left, expected)
    assert torch.all((weight_left >= 0) & (weight_left <= 1))


def test_encode_clamps_outside_the_range() -> None:
    grid = CBBLGrid()
    target = grid.encode(torch.tensor([9.0, -7.5, 4.0]))
    assert target[0, -1] == 1 and target[1, 0] == 1 and target[2, -1] == 1
    torch.testing.assert_close(grid.decode(torch.log(target.clamp(min=1e-12))), torch.tensor([4.0, -4.0, 4.0]),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("restore", ["expectation", "top2"])
def test_decode_of_a_large_one_hot_returns_that_point(restore: str) -> None:
    grid = CBBLGrid()
    logits = torch.eye(11) * 100.0  # row i: one-hot on point i
    torch.testing.assert_close(grid.decode(logits, restore), grid.points, rtol=0, atol=1e-5)


def test_top2_restores_from_the_two_largest_probabilities() -> None:
    grid = CBBLGrid(beta=0.0)  # points -4, -3.2, ..., 4
    probs = torch.zeros(11)
    probs[[2, 3, 9]] = torch.tensor([0.3, 0.5, 0.2])
    expected = (0.3 * grid.points[2] + 0.5 * grid.points[3]) / 0.8
    torch.testing.assert_close(grid.decode(probs.log(), "top2"), expected)
    with pytest.raises(ValueError, match="restore"):
        grid.decode(probs.log(), "median")


def test_ce_gradient_is_softmax_minus_target() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, 11, generator=generator, dtype=torch.float64, requires_grad=True)
    target = CBBLGrid().encode(torch.randn(6, 4, generator=generator) * 3)
    ce_loss(logits, target).sum().backward()
    torch.testing.assert_close(logits.grad.float(), logits.detach().float().softmax(-1) - target, rtol=0, atol=1e-6)


def test_um_loss_zero_at_the_target_and_positive_otherwise() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 11, generator=generator)
    torch.testing.assert_close(um_loss(logits, logits.softmax(-1)), torch.zeros(5), rtol=0, atol=1e-5)
    two_hot = CBBLGrid().encode(torch.tensor([0.3, -1.0, 2.5, 0.0, 3.9]))
    flat = torch.zeros(5, 11)  # entropy ln 11 > ln 2 >= H(two-hot)
    assert torch.all(um_loss(flat, two_hot) > 1.0)
    torch.testing.assert_close(um_loss(flat, two_hot, mode="min"), entropy(flat))
    with pytest.raises(ValueError, match="UM mode"):
        um_loss(flat, two_hot, mode="max")


def test_entropies_are_non_negative_and_bounded() -> None:
    logits = torch.randn(100, 11) * 5
    assert torch.all(entropy(logits) >= 0) and torch.all(entropy(logits) <= math.log(11) + 1e-5)
    target_entropy = distribution_entropy(CBBLGrid().encode(torch.randn(100) * 2))
    assert torch.all(target_entropy >= 0) and torch.all(target_entropy <= math.log(2) + 1e-6)


@pytest.mark.parametrize("um_mode", ["abs", "min"])
def test_fused_two_hot_loss_equals_the_reference_losses(um_mode: str) -> None:
    generator = torch.Generator().manual_seed(2)
    grid = CBBLGrid()
    logits = (torch.randn(40, 4, 11, generator=generator, dtype=torch.float64) * 3).requires_grad_()
    offsets = torch.randn(40, 4, generator=generator) * 3
    row_weights = torch.rand(40, 4, generator=generator, dtype=torch.float64)
    left, weight_left = grid.two_hot(offsets)
    fused, expectation = two_hot_loss(logits, left, weight_left, grid.points, 0.7, um_mode)
    (fused_grad,) = torch.autograd.grad((fused * row_weights).sum(), logits)
    target = grid.encode(offsets).double()
    reference = ce_loss(logits, target) - distribution_entropy(target) + 0.7 * um_loss(logits, target, um_mode)
    (reference_grad,) = torch.autograd.grad((reference * row_weights).sum(), logits)
    torch.testing.assert_close(fused.double(), reference.double(), rtol=0, atol=1e-5)
    torch.testing.assert_close(fused_grad, reference_grad, rtol=0, atol=1e-5)
    torch.testing.assert_close(expectation, grid.decode(logits.detach()), rtol=0, atol=1e-5)
    assert not expectation.requires_grad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_everything_finite_in_low_precision_and_extreme_logits(dtype: torch.dtype, scale: float) -> None:
    grid = CBBLGrid()
    generator = torch.Generator().manual_seed(3)
    logits = (torch.randn(8, 4, 11, generator=generator).sign() * scale).to(dtype).requires_grad_()
    offsets = (torch.randn(8, 4, generator=generator) * 3).to(dtype)
    target = grid.encode(offsets)
    left, weight_left = grid.two_hot(offsets)
    fused, expectation = two_hot_loss(logits, left, weight_left, grid.points)
    values = [ce_loss(logits, target), um_loss(logits, target), um_loss(logits, target, "min"), entropy(logits),
              grid.decode(logits), grid.decode(logits, "top2"), fused, expectation]
    assert all(torch.isfinite(value).all() for value in values)
    (grad,) = torch.autograd.grad(sum(value.float().sum() for value in values[:3] + [fused]), logits)
    assert torch.isfinite(grad).all()


@settings(deadline=None, max_examples=40)
@given(dx=st.floats(-0.49, 1.49), dy=st.floats(-0.49, 1.49), rw=st.floats(0.26, 3.9), rh=st.floats(0.26, 3.9),
       space=st.sampled_from(["logit", "linear"]))
def test_offset_spaces_round_trip(dx: float, dy: float, rw: float, rh: float, space: str) -> None:
    dxy, ratio = torch.tensor([[dx, dy]], dtype=torch.float64), torch.tensor([[rw, rh]], dtype=torch.float64)
    t = encode_offsets(dxy, ratio, space)  # (1, 4)
    back_dxy, back_ratio = decode_offsets(t, space)
    torch.testing.assert_close(back_dxy, dxy, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(back_ratio, ratio, rtol=1e-6, atol=1e-9)


def test_offset_zero_is_the_anchor_prior_in_both_spaces() -> None:
    for space in ("logit", "linear"):
        dxy, ratio = decode_offsets(torch.zeros(4), space)
        torch.testing.assert_close(dxy, torch.full((2,), 0.5))
        torch.testing.assert_close(ratio, torch.ones(2))
    with pytest.raises(ValueError, match="offset space"):
        decode_offsets(torch.zeros(4), "log")


def test_in_family_on_an_asymmetric_range():
    points = in_family_points(-1.1, 0.2, 3.0, 11, 2.0)
    assert points[0].item() == pytest.approx(-1.1) and points[-1].item() == pytest.approx(3.0)
    assert points[5].item() == pytest.approx(0.2) and torch.all(points.diff() > 0)
    gaps = points.diff()
    assert gaps[4] < gaps[0] and gaps[5] < gaps[9]  # densest at the centre on both sides
    with pytest.raises(ValueError, match="centre"):
        in_family_points(0.0, -1.0, 3.0, 11, 2.0)


def test_grid_from_points_encodes_losslessly_and_clamps_to_its_ends():
    grid = CBBLGrid.from_points(torch.tensor([-1.0, -0.2, 0.1, 0.7, 2.5]))
    t = torch.linspace(-1.0, 2.5, 301, dtype=torch.float64)
    torch.testing.assert_close(grid.encode(t) @ grid.points.double(), t)
    torch.testing.assert_close(grid.encode(torch.tensor([-3.0, 9.0])) @ grid.points, torch.tensor([-1.0, 2.5]))
    with pytest.raises(ValueError, match="increasing"):
        CBBLGrid.from_points(torch.tensor([0.0, 0.0, 1.0]))


def test_box_grids_encode_each_group_on_its_grid_and_the_fused_loss_agrees():
    centre, size = CBBLGrid(beta=2.0), CBBLGrid.from_points(torch.linspace(-1.0, 3.0, 11))
    grids = BoxGrids(centre, size)
    t = torch.tensor([[0.3, -2.0, -0.5, 1.7], [3.9, 0.0, 2.9, -0.9]])
    left, weight = grids.two_hot(t)
    for column, grid in enumerate((centre, centre, size, size)):
        column_left, column_weight = grid.two_hot(t[:, column])
        assert torch.equal(left[:, column], column_left) and torch.equal(weight[:, column], column_weight)
    logits = torch.randn(2, 4, 11, generator=torch.Generator().manual_seed(0))
    loss, expectation = two_hot_loss(logits, left, weight, grids.points)
    for column, grid in enumerate((centre, centre, size, size)):
        column_loss, column_expectation = two_hot_loss(logits[:, column], left[:, column], weight[:, column],
                                                       grid.points)
        torch.testing.assert_close(loss[:, column], column_loss)
        torch.testing.assert_close(expectation[:, column], column_expectation)
    torch.testing.assert_close(expectation, grids.decode(logits))


def test_interval_mass_and_quantile_points():
    targets = torch.tensor([-5.0, -0.5, 0.2, 0.4, 0.6, 9.0])
    mass = interval_mass(targets, torch.tensor([-1.0, 0.0, 0.5, 1.0]))
    torch.testing.assert_close(mass, torch.tensor([2, 2, 2], dtype=torch.float64) / 6)  # outliers count at the ends
    points = quantile_points(torch.arange(1000.0) / 1000, 0.0, 1.0, 5)
    torch.testing.assert_close(points, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]), rtol=0, atol=2e-3)
    tied = quantile_points(torch.zeros(100), -1.0, 1.0, 5)  # every target equal: still strictly increasing
    assert torch.all(tied.diff() > 0)


def test_points_are_copied_to_a_device_once():
    grid = CBBLGrid.from_points(torch.tensor([-1.0, 0.0, 2.0]))
    first = grid.points_on(torch.device("cpu"), torch.float64)
    assert grid.points_on("cpu", torch.float64) is first and first.dtype == torch.float64
    assert torch.equal(first.float(), grid.points)


def test_side_statistics_equal_a_direct_computation_from_the_softmax():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 7) * 3  # (rows, coordinates, K)
    points = torch.sort(torch.randn(4, 7), -1).values
    values = points.sigmoid() * 2  # any per-bin decoded values
    stats = side_statistics(logits, points, values, k=3)
    probs = torch.softmax(logits.double(), -1)
    mean = (probs * points.double()).sum(-1)
    close = functools.partial(torch.testing.assert_close, rtol=1e-5, atol=1e-6)
    close(stats.mean.double(), mean)
    close(stats.variance.double(), (probs * points.double() ** 2).sum(-1) - mean ** 2)
    value_mean = (probs * values.double()).sum(-1)
    close(stats.value_variance.double(), (probs * values.double() ** 2).sum(-1) - value_mean ** 2)
    close(stats.entropy.double(), -(probs * probs.log()).sum(-1))
    close(stats.topk.double(), probs.sort(-1, descending=True).values[..., :3])
    # the decode's expectation and entropy, bit for bit (boxes from either path are the same)
    expectation, coord_entropy = expectation_and_entropy(logits, points)
    assert torch.equal(stats.mean, expectation) and torch.equal(stats.entropy, coord_entropy)
    assert side_statistics(logits, points).value_variance is None


def test_a_peaked_distribution_has_small_variance_and_full_top_k_mass():
    points = torch.linspace(-2, 2, 5)
    peaked = side_statistics(torch.tensor([[0.0, 0.0, 30.0, 0.0, 0.0]]), points)
    flat = side_statistics(torch.zeros(1, 5), points)
    assert peaked.variance.item() < 1e-9 < flat.variance.item() and peaked.topk[0, 0].item() == pytest.approx(1.0)
    assert flat.topk.sum().item() == pytest.approx(4 / 5)  # top-4 mass of 5 equal bins


@pytest.mark.parametrize("space", OFFSET_SPACES)
def test_decoded_points_are_the_decode_of_every_bin(space):
    points = torch.linspace(-3, 3, 6).repeat(4, 1)  # (4, K)
    dxy, ratio = decode_offsets(points.T, space)  # (K, 2) each
    torch.testing.assert_close(decoded_points(points, space), torch.cat((dxy, ratio), -1).T)
