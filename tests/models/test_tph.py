"""models/tph.py: C3TRv2, CBAMv2 and BiFPN weighted fusion."""

from __future__ import annotations

import pytest
import torch

from models.tph import BIFPN_EPS, BiFPNConcat, C3TRv2, CBAMv2, TransformerBlock, TransformerLayer


def test_c3tr_forward_backward_any_size():
    torch.manual_seed(0)
    block = C3TRv2(8, 16, n=2, num_heads=2)
    x = torch.randn(2, 8, 5, 3, requires_grad=True)
    out = block(x)
    out.mean().backward()
    assert out.shape == (2, 16, 5, 3) and x.grad.abs().sum() > 0


def test_transformer_block_mixes_all_positions():
    torch.manual_seed(0)
    block = TransformerBlock(8, 8, num_heads=2, num_layers=1).eval()
    x = torch.randn(1, 8, 6, 6)
    changed = x.clone()
    changed[..., 5, 5] += 1.0
    difference = (block(x) - block(changed)).abs().sum(1)[0]  # (H, W)
    assert difference[0, 0] > 0  # global attention: a far corner reacts (a 3x3 conv alone could not)


def test_heads_must_divide_channels():
    with pytest.raises(ValueError, match="heads"):
        TransformerLayer(10, 4)


def test_cbam_keeps_shape_and_only_attenuates():
    torch.manual_seed(0)
    block = CBAMv2(16, reduction=4)
    x = torch.randn(2, 16, 7, 5)
    out = block(x)
    assert out.shape == x.shape
    assert torch.all(out.abs() <= x.abs() + 1e-6)  # sigmoid gates in [0, 1]
    assert not torch.allclose(out, x)


def test_bifpn_concat_normalised_weights():
    fusion = BiFPNConcat(2)
    a, b = torch.ones(1, 2, 3, 3), torch.ones(1, 3, 3, 3)
    out = fusion([a, b])
    assert out.shape == (1, 5, 3, 3)
    assert torch.allclose(out, torch.full_like(out, 1 / (2 + BIFPN_EPS)))
    with torch.no_grad():
        fusion.weight.copy_(torch.tensor([3.0, -1.0]))  # a negative weight is clipped to 0
    out = fusion([a, b])
    assert torch.allclose(out[:, :2], torch.full((1, 2, 3, 3), 3 / (3 + BIFPN_EPS))) and out[:, 2:].abs().max() == 0
    with pytest.raises(ValueError, match="at least 2"):
        BiFPNConcat(1)
