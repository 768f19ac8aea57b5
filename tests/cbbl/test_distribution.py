"""Tests for utils/cbbl/distribution.py: the fused two-hot loss against the plain reference losses, the decode's
expectation, entropy and per-coordinate statistics."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from tests.cbbl.reference import ce_loss, dense_two_hot, distribution_entropy, paper_grid, um_loss
from utils.boxes import OFFSET_SPACES, decode_offsets
from utils.cbbl.distribution import decoded_points, entropy, expectation_and_entropy, side_statistics, two_hot_loss


def test_reference_ce_gradient_is_softmax_minus_target() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, 11, generator=generator, dtype=torch.float64, requires_grad=True)
    target = dense_two_hot(paper_grid(), torch.randn(6, 4, generator=generator) * 3)
    ce_loss(logits, target).sum().backward()
    torch.testing.assert_close(logits.grad.float(), logits.detach().float().softmax(-1) - target, rtol=0, atol=1e-6)


def test_reference_um_loss_zero_at_the_target_and_positive_otherwise() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 11, generator=generator)
    torch.testing.assert_close(um_loss(logits, logits.softmax(-1)), torch.zeros(5), rtol=0, atol=1e-5)
    two_hot = dense_two_hot(paper_grid(), torch.tensor([0.3, -1.0, 2.5, 0.0, 3.9]))
    flat = torch.zeros(5, 11)  # entropy ln 11 > ln 2 >= H(two-hot)
    assert torch.all(um_loss(flat, two_hot) > 1.0)
    torch.testing.assert_close(um_loss(flat, two_hot, mode="min"), entropy(flat))


def test_entropies_are_non_negative_and_bounded() -> None:
    logits = torch.randn(100, 11) * 5
    assert torch.all(entropy(logits) >= 0) and torch.all(entropy(logits) <= math.log(11) + 1e-5)
    target_entropy = distribution_entropy(dense_two_hot(paper_grid(), torch.randn(100) * 2))
    assert torch.all(target_entropy >= 0) and torch.all(target_entropy <= math.log(2) + 1e-6)


@pytest.mark.parametrize("um_mode", ["abs", "min"])
def test_fused_two_hot_loss_equals_the_reference_losses(um_mode: str) -> None:
    generator = torch.Generator().manual_seed(2)
    grid = paper_grid()
    logits = (torch.randn(40, 4, 11, generator=generator, dtype=torch.float64) * 3).requires_grad_()
    offsets = torch.randn(40, 4, generator=generator) * 3
    row_weights = torch.rand(40, 4, generator=generator, dtype=torch.float64)
    left, weight_left = grid.two_hot(offsets)
    fused, expectation = two_hot_loss(logits, left, weight_left, grid.points, 0.7, um_mode)
    (fused_grad,) = torch.autograd.grad((fused * row_weights).sum(), logits)
    target = dense_two_hot(grid, offsets).double()
    reference = ce_loss(logits, target) - distribution_entropy(target) + 0.7 * um_loss(logits, target, um_mode)
    (reference_grad,) = torch.autograd.grad((reference * row_weights).sum(), logits)
    torch.testing.assert_close(fused.double(), reference.double(), rtol=0, atol=1e-5)
    torch.testing.assert_close(fused_grad, reference_grad, rtol=0, atol=1e-5)
    torch.testing.assert_close(expectation, grid.decode(logits.detach(), "expectation"), rtol=0, atol=1e-5)
    assert not expectation.requires_grad


def test_fused_loss_rejects_an_unknown_um_mode() -> None:
    grid = paper_grid()
    left, weight_left = grid.two_hot(torch.zeros(3))
    with pytest.raises(ValueError, match="UM mode"):
        two_hot_loss(torch.zeros(3, 11), left, weight_left, grid.points, 1.0, "max")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_everything_finite_in_low_precision_and_extreme_logits(dtype: torch.dtype, scale: float) -> None:
    grid = paper_grid()
    generator = torch.Generator().manual_seed(3)
    logits = (torch.randn(8, 4, 11, generator=generator).sign() * scale).to(dtype).requires_grad_()
    offsets = (torch.randn(8, 4, generator=generator) * 3).to(dtype)
    target = dense_two_hot(grid, offsets)
    left, weight_left = grid.two_hot(offsets)
    fused, expectation = two_hot_loss(logits, left, weight_left, grid.points, 1.0, "abs")
    values = [ce_loss(logits, target), um_loss(logits, target), um_loss(logits, target, "min"), entropy(logits),
              grid.decode(logits, "expectation"), grid.decode(logits, "top2"), fused, expectation]
    assert all(torch.isfinite(value).all() for value in values)
    (grad,) = torch.autograd.grad(sum(value.float().sum() for value in values[:3] + [fused]), logits)
    assert torch.isfinite(grad).all()


def test_side_statistics_equal_a_direct_computation_from_the_softmax():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 7) * 3  # (rows, coordinates, K)
    points = torch.sort(torch.randn(4, 7), -1).values
    values = points.sigmoid() * 2  # any per-bin decoded values
    stats = side_statistics(logits, points, values)
    probs = torch.softmax(logits.double(), -1)
    close = functools.partial(torch.testing.assert_close, rtol=1e-5, atol=1e-6)
    close(stats.mean.double(), (probs * points.double()).sum(-1))
    value_mean = (probs * values.double()).sum(-1)
    close(stats.value_variance.double(), (probs * values.double() ** 2).sum(-1) - value_mean ** 2)
    close(stats.entropy.double(), -(probs * probs.log()).sum(-1))
    # the decode's expectation and entropy, bit for bit (boxes from either path are the same)
    expectation, coord_entropy = expectation_and_entropy(logits, points)
    assert torch.equal(stats.mean, expectation) and torch.equal(stats.entropy, coord_entropy)


def test_a_peaked_distribution_has_small_value_variance():
    points = torch.linspace(-2, 2, 5)
    peaked = side_statistics(torch.tensor([[0.0, 0.0, 30.0, 0.0, 0.0]]), points, points)
    flat = side_statistics(torch.zeros(1, 5), points, points)
    assert peaked.value_variance.item() < 1e-9 < flat.value_variance.item()
    assert flat.value_variance.item() == pytest.approx(2.0)  # the variance of 5 equal bins on -2..2


@pytest.mark.parametrize("space", OFFSET_SPACES)
def test_decoded_points_are_the_decode_of_every_bin(space):
    points = torch.linspace(-3, 3, 6).repeat(4, 1)  # (4, K)
    dxy, ratio = decode_offsets(points.T, space)  # (K, 2) each
    torch.testing.assert_close(decoded_points(points, space), torch.cat((dxy, ratio), -1).T)
