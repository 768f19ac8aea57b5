"""models/swin.py: window attention, the shifted-window mask (against brute force), padding, C3STRv2."""

from __future__ import annotations

import math

import pytest
import torch

from models.swin import C3STRv2, CrossLayerAttention, SwinLayer, attention_mask, window_merge, window_partition


def brute_force_swin_layer(layer: SwinLayer, x: torch.Tensor) -> torch.Tensor:
    """SwinLayer forward with no roll, padding or mask: every real token attends exactly the real tokens of
    its (shifted) window, windows being [shift + k*window, shift + (k+1)*window) per axis on the unpadded map."""
    _, channels, height, width = x.shape
    attn, heads = layer.attn, layer.attn.num_heads
    tokens = x[0].permute(1, 2, 0).reshape(height * width, channels)  # (T, C)
    qkv = attn.qkv(layer.norm1(tokens)).view(-1, 3, heads, channels // heads)  # (T, 3, heads, C/heads)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()  # (T,)
    window_y = torch.div(ys - layer.shift, layer.window, rounding_mode="floor")
    window_x = torch.div(xs - layer.shift, layer.window, rounding_mode="floor")
    allowed = (window_y[:, None] == window_y[None]) & (window_x[:, None] == window_x[None])  # (T, T)
    span = 2 * layer.window - 1
    delta_y = (ys[:, None] - ys[None]).clamp(-layer.window + 1, layer.window - 1) + layer.window - 1
    delta_x = (xs[:, None] - xs[None]).clamp(-layer.window + 1, layer.window - 1) + layer.window - 1
    bias = attn.bias_table[delta_y * span + delta_x].permute(2, 0, 1)  # (heads, T, T)
    query, key, value = qkv.unbind(1)  # each (T, heads, C/heads)
    scores = torch.einsum("qhd,khd->hqk", query, key) / math.sqrt(channels // heads) + bias
    scores = scores.masked_fill(~allowed, float("-inf"))
    mixed = torch.einsum("hqk,khd->qhd", scores.softmax(-1), value).reshape(-1, channels)  # (T, C)
    out = tokens + attn.proj(mixed)
    out = out + layer.mlp(layer.norm2(out))
    return out.view(height, width, channels).permute(2, 0, 1).unsqueeze(0)


@pytest.mark.parametrize("height, width, window, shift", [(8, 8, 4, 2), (7, 5, 4, 2), (13, 7, 4, 2),
                                                          (13, 7, 4, 0), (6, 9, 3, 1), (5, 3, 8, 4)])
def test_shifted_window_attention_matches_brute_force(height, width, window, shift):
    torch.manual_seed(0)
    layer = SwinLayer(dim=8, num_heads=2, window=window, shift=shift).eval()
    with torch.no_grad():
        layer.attn.bias_table.normal_()  # a visible bias, so a wrong relative index would show
        x = torch.randn(1, 8, height, width)
        assert torch.allclose(layer(x), brute_force_swin_layer(layer, x), atol=1e-5)


def test_mask_blocks_the_roll_seam_and_padding():
    mask = attention_mask(4, 4, window=4, shift=2)  # one window, four regions of 2x2 tokens
    allowed = (mask == 0).sum(-1)  # (nW, N) keys each query may see
    assert mask.shape == (1, 16, 16)
    assert torch.equal(allowed, torch.full((1, 16), 4))
    padded = attention_mask(3, 3, window=4, shift=0)  # 3x3 real tokens in a 4x4 window
    assert torch.equal((padded[0] == 0).sum(-1).view(4, 4)[:3, :3], torch.full((3, 3), 9))


def test_padded_tokens_do_not_change_real_outputs():
    torch.manual_seed(1)
    layer = SwinLayer(dim=8, num_heads=2, window=4, shift=2).eval()
    x = torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        crop = layer(x[..., :6, :7])  # padded to 8x8 internally
        assert torch.allclose(crop, brute_force_swin_layer(layer, x[..., :6, :7]), atol=1e-5)


def test_window_partition_round_trip():
    x = torch.randn(2, 8, 12, 3)
    windows = window_partition(x, 4)
    assert windows.shape == (2, 6, 16, 3)
    assert torch.equal(window_merge(windows, 4, 8, 12), x)


def test_mask_is_cached_per_size():
    layer = SwinLayer(dim=8, num_heads=2, window=4, shift=2)
    first = layer.mask(13, 7, torch.device("cpu"))
    assert layer.mask(13, 7, torch.device("cpu")) is first
    assert layer.mask(12, 7, torch.device("cpu")) is not first


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward_is_finite(dtype):
    torch.manual_seed(0)
    block = C3STRv2(16, 16, n=2, window=4).eval().to(dtype)
    with torch.no_grad():
        out = block(torch.randn(1, 16, 13, 7, dtype=dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()


def test_c3str_odd_size_forward_backward():
    torch.manual_seed(0)
    block = C3STRv2(8, 16, n=2, window=4)
    x = torch.randn(2, 8, 13, 7, requires_grad=True)
    out = block(x)
    out.square().mean().backward()
    assert out.shape == (2, 16, 13, 7)
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, message", [({"dim": 10, "num_heads": 3}, "heads"),
                                             ({"dim": 8, "num_heads": 2, "window": 4, "shift": 4}, "shift"),
                                             ({"dim": 8, "num_heads": 2, "window": 0}, "window")])
def test_impossible_configs_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SwinLayer(**kwargs)


def brute_force_cross_layer(block: CrossLayerAttention, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
    """Coarse token (y, x) attends every real fine token (fy, fx) with fy // 2w == y // w and fx // 2w == x // w."""
    _, channels, height, width = coarse.shape
    fine_h, fine_w = fine.shape[-2:]
    heads, head_dim, window = block.num_heads, channels // block.num_heads, block.window
    queries = coarse[0].permute(1, 2, 0).reshape(-1, channels)  # (T, C)
    keys_in = fine[0].permute(1, 2, 0).reshape(fine_h * fine_w, -1)  # (S, Cf)
    query = block.query(block.norm_query(queries)).view(-1, heads, head_dim)
    key, value = block.key_value(block.norm_fine(keys_in)).view(-1, 2, heads, head_dim).unbind(1)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    fys, fxs = torch.meshgrid(torch.arange(fine_h), torch.arange(fine_w), indexing="ij")
    allowed = ((ys.flatten()[:, None] // window) == (fys.flatten()[None] // (2 * window))) & \
        ((xs.flatten()[:, None] // window) == (fxs.flatten()[None] // (2 * window)))  # (T, S)
    scores = torch.einsum("qhd,khd->hqk", query, key) / math.sqrt(head_dim)
    mixed = torch.einsum("hqk,khd->qhd", scores.masked_fill(~allowed, float("-inf")).softmax(-1), value)
    out = queries + block.proj(mixed.reshape(-1, channels))
    out = out + block.mlp(block.norm2(out))
    return out.view(height, width, channels).permute(2, 0, 1).unsqueeze(0)


@pytest.mark.parametrize("coarse_size, fine_size", [((4, 4), (8, 8)), ((13, 7), (25, 14)), ((3, 5), (6, 9))])
def test_cross_layer_attention_matches_brute_force(coarse_size, fine_size):
    torch.manual_seed(0)
    block = CrossLayerAttention(8, 6, window=2, num_heads=2).eval()
    coarse, fine = torch.randn(1, 8, *coarse_size), torch.randn(1, 6, *fine_size)
    with torch.no_grad():
        out = block([coarse, fine])
        assert out.shape == coarse.shape
        assert torch.allclose(out, brute_force_cross_layer(block, coarse, fine), atol=1e-5)
