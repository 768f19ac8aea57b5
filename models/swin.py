"""Our Swin-style window attention (C3STRv2) and cross-layer attention; TPH's own C3STR is in models/tph_yolov5.py.

Tokens attend within non-overlapping ``window`` x ``window`` windows (cost linear in H*W); every other
layer shifts the windows by ``window // 2`` through a cyclic roll, so information crosses window borders.
Maps that are not a multiple of the window are padded, attended and cropped. One additive mask keeps
(a) tokens that the roll brought together from opposite borders apart and (b) padded tokens out of the
real tokens' attention: a token sees only tokens with the same region label in its window, labels
built over the rolled, padded map from 3 slices per axis ``[0:-window]``, ``[-window:-shift]``,
``[-shift:]`` plus a padding flag. tests/test_swin.py checks it against brute-force attention.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.common import C3
from models.tph import Mlp, check_heads

DEFAULT_WINDOW = 8
# Channels per attention head when the YAML does not say (Swin-T uses 32).
CHANNELS_PER_HEAD = 32


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of ``window`` -> (B, nW, window*window, C); inverse: window_merge."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, -1, window * window, channels)  # (B, nW, N, C)


def window_merge(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """(B, nW, window*window, C) -> (B, H, W, C); undoes :func:`window_partition`."""
    batch, channels = windows.shape[0], windows.shape[-1]
    x = windows.view(batch, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, height, width, channels)  # (B, H, W, C)


def _axis_labels(size: int, padded: int, window: int, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position of the rolled, padded axis: (region 0/1/2, is padding).

    Regions are the slices [0:-window], [-window:-shift], [-shift:] (one region when shift == 0), written as
    comparisons so tracing and ONNX export need no index_put; position r holds original (r + shift) % padded.
    """
    position = torch.arange(padded)
    region = (position >= padded - window).long() + (position >= padded - shift).long() if shift else position * 0
    return region, (position + shift) % padded >= size


def region_labels(height: int, width: int, padded_h: int, padded_w: int, window: int, shift: int) -> torch.Tensor:
    """(Hp, Wp) int labels over the rolled, padded map: equal labels may attend each other within a window."""
    row_region, row_pad = _axis_labels(height, padded_h, window, shift)
    col_region, col_pad = _axis_labels(width, padded_w, window, shift)
    is_pad = (row_pad[:, None] | col_pad[None, :]).long()  # (Hp, Wp)
    return (row_region[:, None] * 3 + col_region[None, :]) * 2 + is_pad


def attention_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """(nW, N, N) float mask, 0 where query and key share a region label, -inf elsewhere (N = window^2)."""
    padded_h, padded_w = -(-height // window) * window, -(-width // window) * window
    labels = region_labels(height, width, padded_h, padded_w, window, shift)
    windows = window_partition(labels.view(1, padded_h, padded_w, 1), window)[0, ..., 0]  # (nW, N)
    same = windows.unsqueeze(-1) == windows.unsqueeze(-2)  # (nW, N, N)
    return torch.zeros(same.shape).masked_fill(~same, float("-inf"))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias per head."""

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        check_heads(dim, num_heads)
        self.num_heads, self.window = num_heads, window
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]) + (window - 1)  # (2, N, N), each in [0, 2w-2]
        self.register_buffer("bias_index", relative[0] * (2 * window - 1) + relative[1], persistent=False)

    def forward(self, windows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """windows (B, nW, N, C), mask (nW, N, N) additive -> (B, nW, N, C)."""
        batch, num_windows, tokens, channels = windows.shape
        qkv = self.qkv(windows).view(batch, num_windows, tokens, 3, self.num_heads, channels // self.num_heads)
        query, key, value = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each (B, nW, heads, N, C/heads)
        bias = self.bias_table[self.bias_index].permute(2, 0, 1)  # (heads, N, N)
        attn_bias = (bias.unsqueeze(0) + mask.unsqueeze(1)).to(query.dtype)  # (nW, heads, N, N)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_bias)  # (B, nW, heads, N, C/h)
        return self.proj(out.transpose(2, 3).reshape(batch, num_windows, tokens, channels))


class SwinLayer(nn.Module):
    """One Swin transformer layer on a (B, C, H, W) map: (shifted) window attention + MLP, both residual."""

    def __init__(self, dim: int, num_heads: int, window: int = DEFAULT_WINDOW, shift: int = 0):
        super().__init__()
        if window < 1 or not 0 <= shift < window:
            raise ValueError(f"Swin layer needs window >= 1 and 0 <= shift < window, got window={window}, "
                             f"shift={shift}")
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim)
        self._masks: dict[tuple[int, int, str], torch.Tensor] = {}

    def mask(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """The (nW, N, N) mask for a map size, cached per (H, W, device); built inline under torch.compile.

        ``int()`` turns traced sizes into constants, so a traced/ONNX export bakes the mask of its input size.
        """
        height, width = int(height), int(width)
        if torch.compiler.is_compiling():
            return attention_mask(height, width, self.window, self.shift).to(device)
        key = (height, width, str(device))
        if key not in self._masks:
            self._masks[key] = attention_mask(height, width, self.window, self.shift).to(device)
        return self._masks[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        tokens = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        normed = F.pad(self.norm1(tokens), (0, 0, 0, (-width) % self.window, 0, (-height) % self.window))
        padded_h, padded_w = normed.shape[1], normed.shape[2]
        rolled = torch.roll(normed, (-self.shift, -self.shift), (1, 2))  # (B, Hp, Wp, C)
        attended = self.attn(window_partition(rolled, self.window), self.mask(height, width, x.device))
        merged = window_merge(attended, self.window, padded_h, padded_w)  # (B, Hp, Wp, C)
        merged = torch.roll(merged, (self.shift, self.shift), (1, 2))[:, :height, :width]  # (B, H, W, C)
        tokens = tokens + merged
        tokens = tokens + self.mlp(self.norm2(tokens))
        return tokens.permute(0, 3, 1, 2)  # (B, C, H, W)


class SwinStage(nn.Sequential):
    """``depth`` Swin layers, unshifted and shifted by window // 2 in turn."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int = DEFAULT_WINDOW):
        super().__init__(*(SwinLayer(dim, num_heads, window, shift=(window // 2) * (i % 2)) for i in range(depth)))


class C3STRv2(C3):
    """Our C3STR variant: a Swin stage with qkv bias and an exact padding/shift mask (-inf), in (H, W) order.

    ``num_heads`` None = one head per 32 channels (at least 1).
    """

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5,
                 window: int = DEFAULT_WINDOW, num_heads: int | None = None):
        super().__init__(c1, c2, n, shortcut, g, e)
        hidden = int(c2 * e)
        heads = num_heads if num_heads is not None else max(hidden // CHANNELS_PER_HEAD, 1)
        self.m = SwinStage(hidden, n, heads, window)


class CrossLayerAttention(nn.Module):
    """TPH-YOLOv5++-style cross-layer attention: coarse tokens query the matching 2x finer window.

    Inputs [coarse (B, C, H, W), fine (B, Cf, Hf, Wf)] with Hf <= 2H, Wf <= 2W (stride 2 apart); each
    ``window`` x ``window`` window of the coarse map attends the 2*window x 2*window window of the fine map
    under it, so P3 predictions see P2 detail without a P2 head. Padded fine tokens are masked out.
    Output (B, C, H, W): coarse + attention, then + MLP (both residual).
    """

    def __init__(self, c1: int, c_fine: int, window: int = DEFAULT_WINDOW, num_heads: int | None = None):
        super().__init__()
        heads = num_heads if num_heads is not None else max(c1 // CHANNELS_PER_HEAD, 1)
        check_heads(c1, heads)
        if window < 1:
            raise ValueError(f"cross-layer attention needs window >= 1, got {window}")
        self.window, self.num_heads = window, heads
        self.norm_query, self.norm_fine = nn.LayerNorm(c1), nn.LayerNorm(c_fine)
        self.query, self.key_value, self.proj = nn.Linear(c1, c1), nn.Linear(c_fine, 2 * c1), nn.Linear(c1, c1)
        self.norm2, self.mlp = nn.LayerNorm(c1), Mlp(c1)

    def key_mask(self, fine_h: int, fine_w: int, padded_h: int, padded_w: int, device: torch.device) -> torch.Tensor:
        """(nW, 1, 1, 4*window^2) additive mask: -inf on fine tokens that are padding."""
        real = (torch.arange(padded_h, device=device)[:, None] < fine_h) & \
            (torch.arange(padded_w, device=device)[None, :] < fine_w)  # (2Hp, 2Wp)
        windows = window_partition(real.view(1, padded_h, padded_w, 1), 2 * self.window)[0, ..., 0]  # (nW, 4w^2)
        return torch.zeros(windows.shape, device=device).masked_fill(~windows, float("-inf"))[:, None, None]

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        coarse, fine = x[0].permute(0, 2, 3, 1), x[1].permute(0, 2, 3, 1)  # (B, H, W, C), (B, Hf, Wf, Cf)
        batch, height, width, channels = coarse.shape
        pad_h, pad_w = (-height) % self.window, (-width) % self.window
        query = F.pad(self.norm_query(coarse), (0, 0, 0, pad_w, 0, pad_h))  # (B, Hp, Wp, C)
        fine_pad_h, fine_pad_w = 2 * (height + pad_h) - fine.shape[1], 2 * (width + pad_w) - fine.shape[2]
        fine_normed = F.pad(self.norm_fine(fine), (0, 0, 0, fine_pad_w, 0, fine_pad_h))  # (B, 2Hp, 2Wp, Cf)
        head_dim = channels // self.num_heads
        query = window_partition(self.query(query), self.window)  # (B, nW, w^2, C)
        query = query.unflatten(-1, (self.num_heads, head_dim)).transpose(2, 3)  # (B, nW, heads, w^2, C/h)
        key_value = window_partition(self.key_value(fine_normed), 2 * self.window)  # (B, nW, 4w^2, 2C)
        key_value = key_value.unflatten(-1, (2, self.num_heads, head_dim)).permute(3, 0, 1, 4, 2, 5)
        mask = self.key_mask(fine.shape[1], fine.shape[2], fine_normed.shape[1], fine_normed.shape[2], coarse.device)
        out = F.scaled_dot_product_attention(query, key_value[0], key_value[1], attn_mask=mask.to(query.dtype))
        out = out.transpose(2, 3).flatten(-2)  # (B, nW, w^2, C)
        merged = window_merge(self.proj(out), self.window, height + pad_h, width + pad_w)[:, :height, :width]
        tokens = coarse + merged
        tokens = tokens + self.mlp(self.norm2(tokens))
        return tokens.permute(0, 3, 1, 2)  # (B, C, H, W)
