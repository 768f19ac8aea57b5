"""TPH-YOLOv5's own blocks (cv516Buaa/tph-yolov5 @052dfeb, models/common.py), computed as its code computes them.

Same layer names as TPH (so its checkpoints load by name) and the same arithmetic, quirks included:
- ``C3TR``: q/k/v linears (no bias) feed ``nn.MultiheadAttention`` (sequence first), a linear position
  embedding ``linear`` added to the tokens, LayerNorms ``ln1``/``ln2`` before attention and MLP, a ReLU MLP
  without biases, dropout 0.1 (training only).
- ``C3STR``: Swin layers without qkv bias on the *transposed* map (TPH permutes (B, C, H, W) to (B, W, H, C));
  heads = channels // 32; the shifted-window mask is TPH's: region labels from 3 x 3 slices, except that
  the first row slice is an index pair ``(0, -window)`` (so only 2 rows get their column's label and the rest
  of the top band stays 0), and masked pairs get -100 rather than -inf; stochastic depth 0.1 above 10 heads.
- ``CBAM``: a linear (biased) channel MLP with reduction 16 and a biased 7x7 spatial convolution.
Our own variants (models/tph.py, models/swin.py: ``C3TRv2``, ``C3STRv2``, ``CBAMv2``) are documented there.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.common import C3, Conv
from models.swin import window_merge, window_partition

# TPH's fixed settings: 4 C3TR heads, 32 channels per Swin head, window 8 (shift 4 on odd layers), CBAM r=16.
C3TR_HEADS = 4
SWIN_CHANNELS_PER_HEAD = 32
SWIN_WINDOW = 8
CBAM_REDUCTION = 16
CBAM_KERNEL = 7
# TPH's additive value for masked attention pairs (a large negative number, not -inf).
SWIN_MASK_VALUE = -100.0
# TPH's training-time regularisation: dropout in C3TR layers; stochastic depth in Swin layers of > 10 heads.
C3TR_DROPOUT = 0.1
SWIN_DROP_PATH, SWIN_DROP_PATH_MIN_HEADS = 0.1, 10


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: in training, zero a residual branch for whole samples with ``drop_prob``, rescale the rest."""
    if not training or drop_prob == 0.0:
        return x
    keep = 1.0 - drop_prob
    sample_mask = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device) < keep  # (B, 1...)
    return x * sample_mask / keep


class TransformerLayer(nn.Module):
    """TPH's encoder layer on tokens (N, B, C): x + MHA(q, k, v of LN(x)), then x + MLP(LN(x)) (ReLU, no biases)."""

    def __init__(self, c: int, num_heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(c)
        self.q, self.k, self.v = (nn.Linear(c, c, bias=False) for _ in range(3))
        self.ma = nn.MultiheadAttention(embed_dim=c, num_heads=num_heads)
        self.ln2 = nn.LayerNorm(c)
        self.fc1 = nn.Linear(c, 4 * c, bias=False)
        self.fc2 = nn.Linear(4 * c, c, bias=False)
        self.dropout = nn.Dropout(C3TR_DROPOUT)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        normed = self.ln1(tokens)
        attended = self.ma(self.q(normed), self.k(normed), self.v(normed), need_weights=False)[0]
        tokens = tokens + self.dropout(attended)
        return tokens + self.dropout(self.fc2(self.dropout(F.relu(self.fc1(self.ln2(tokens))))))


class TransformerBlock(nn.Module):
    """Optional 1x1 Conv to c2, tokens + linear position embedding, ``num_layers`` TPH encoder layers."""

    def __init__(self, c1: int, c2: int, num_heads: int, num_layers: int):
        super().__init__()
        self.conv = Conv(c1, c2) if c1 != c2 else None
        self.linear = nn.Linear(c2, c2)
        self.tr = nn.Sequential(*(TransformerLayer(c2, num_heads) for _ in range(num_layers)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            x = self.conv(x)
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).permute(2, 0, 1)  # (H*W, B, C)
        tokens = self.tr(tokens + self.linear(tokens))
        return tokens.permute(1, 2, 0).reshape(batch, channels, height, width)


class C3TR(C3):
    """TPH-YOLOv5's C3TR: a C3 whose bottleneck stack is TPH's transformer block (4 heads)."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__(c1, c2, n, shortcut, g, e)
        hidden = int(c2 * e)
        self.m = TransformerBlock(hidden, hidden, C3TR_HEADS, n)


def tph_shift_mask(rows: int, cols: int, window: int, shift: int) -> torch.Tensor:
    """TPH's shifted-window mask over a padded (rows, cols) map: (nW, N, N), 0 or -100 (N = window^2).

    Column regions are [0:-window], [-window:-shift], [-shift:] (labels 0, 1, 2); rows 0 and rows-window take
    the first band's labels 0/1/2 (TPH indexes that band with the pair (0, -window)), rows [-window:-shift]
    get 3/4/5, rows [-shift:] 6/7/8, and every other row stays 0.
    """
    col, row = torch.arange(cols), torch.arange(rows)
    col_region = (col >= cols - window).long() + (col >= cols - shift).long()  # (cols,)
    row_band = (row >= rows - window).long() + (row >= rows - shift).long()  # (rows,) bands 0, 1, 2
    has_columns = (row_band > 0) | (row == 0)  # rows that TPH labels by column
    labels = row_band[:, None] * 3 + col_region[None, :] * has_columns[:, None]  # (rows, cols)
    windows = window_partition(labels.view(1, rows, cols, 1), window)[0, ..., 0]  # (nW, N)
    different = windows.unsqueeze(1) != windows.unsqueeze(2)  # (nW, N, N)
    return torch.zeros(different.shape).masked_fill(different, SWIN_MASK_VALUE)


class WindowAttention(nn.Module):
    """TPH's window attention: qkv (bias optional), relative position bias table, output projection."""

    def __init__(self, dim: int, window: int, num_heads: int, qkv_bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        relative = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, N, N), each in [0, 2w-2]
        self.register_buffer("relative_position_index", relative[0] * (2 * window - 1) + relative[1])
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """windows (B, nW, N, C), additive mask (nW, N, N) or None -> (B, nW, N, C)."""
        batch, num_windows, tokens, channels = windows.shape
        qkv = self.qkv(windows).view(batch, num_windows, tokens, 3, self.num_heads, channels // self.num_heads)
        query, key, value = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each (B, nW, heads, N, C/heads)
        bias = self.relative_position_bias_table[self.relative_position_index].permute(2, 0, 1)  # (heads, N, N)
        attn_bias = bias if mask is None else bias + mask.unsqueeze(1)  # (heads | nW x heads, N, N)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_bias.to(query.dtype))
        return self.proj(out.transpose(2, 3).reshape(batch, num_windows, tokens, channels))


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 (TPH's Swin MLP, hidden = 4 x dim)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinTransformerLayer(nn.Module):
    """TPH's Swin layer on (B, C, H, W): window attention (shifted by ``shift``) + MLP, both residual."""

    def __init__(self, c: int, num_heads: int, window: int = SWIN_WINDOW, shift: int = 0):
        super().__init__()
        self.window, self.shift = window, shift
        self.drop_prob = SWIN_DROP_PATH if num_heads > SWIN_DROP_PATH_MIN_HEADS else 0.0
        self.norm1 = nn.LayerNorm(c)
        self.attn = WindowAttention(c, window, num_heads)
        self.norm2 = nn.LayerNorm(c)
        self.mlp = Mlp(c, 4 * c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.permute(0, 3, 2, 1)  # (B, W, H, C): TPH attends over the transposed map
        rows, cols = tokens.shape[1], tokens.shape[2]
        normed = F.pad(self.norm1(tokens), (0, 0, 0, (-cols) % self.window, 0, (-rows) % self.window))
        padded_rows, padded_cols = normed.shape[1], normed.shape[2]
        mask = None
        if self.shift:
            normed = torch.roll(normed, (-self.shift, -self.shift), (1, 2))
            mask = tph_shift_mask(padded_rows, padded_cols, self.window, self.shift).to(x.device)
        attended = self.attn(window_partition(normed, self.window), mask)  # (B, nW, N, C)
        merged = window_merge(attended, self.window, padded_rows, padded_cols)  # (B, Wp, Hp, C)
        if self.shift:
            merged = torch.roll(merged, (self.shift, self.shift), (1, 2))
        tokens = tokens + drop_path(merged[:, :rows, :cols], self.drop_prob, self.training)
        tokens = tokens + drop_path(self.mlp(self.norm2(tokens)), self.drop_prob, self.training)
        return tokens.permute(0, 3, 2, 1)  # (B, C, H, W)


class SwinTransformerBlock(nn.Module):
    """Optional 1x1 Conv to c2, then ``num_layers`` Swin layers, unshifted and shifted by window // 2 in turn."""

    def __init__(self, c1: int, c2: int, num_heads: int, num_layers: int, window: int = SWIN_WINDOW):
        super().__init__()
        self.conv = Conv(c1, c2) if c1 != c2 else None
        self.tr = nn.Sequential(*(SwinTransformerLayer(c2, num_heads, window, (window // 2) * (i % 2))
                                  for i in range(num_layers)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tr(self.conv(x) if self.conv is not None else x)


class C3STR(C3):
    """TPH-YOLOv5's C3STR: a C3 whose bottleneck stack is TPH's Swin block (channels // 32 heads, at least 1)."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__(c1, c2, n, shortcut, g, e)
        hidden = int(c2 * e)
        self.m = SwinTransformerBlock(hidden, hidden, max(hidden // SWIN_CHANNELS_PER_HEAD, 1), n)


class ChannelAttentionModule(nn.Module):
    """CBAM's channel weights: sigmoid(MLP(avg pool) + MLP(max pool)), (B, C, H, W) -> (B, C, 1, 1)."""

    def __init__(self, c1: int, reduction: int = CBAM_REDUCTION):
        super().__init__()
        self.shared_MLP = nn.Sequential(nn.Linear(c1, c1 // reduction), nn.ReLU(), nn.Linear(c1 // reduction, c1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.shared_MLP(x.mean((2, 3))) + self.shared_MLP(x.amax((2, 3)))  # (B, C)
        return logits.sigmoid()[..., None, None]


class SpatialAttentionModule(nn.Module):
    """CBAM's position weights: sigmoid(7x7 conv over [mean, max] across channels), (B, C, H, W) -> (B, 1, H, W)."""

    def __init__(self):
        super().__init__()
        self.conv2d = nn.Conv2d(2, 1, CBAM_KERNEL, 1, CBAM_KERNEL // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2d(torch.cat((x.mean(1, keepdim=True), x.amax(1, keepdim=True)), 1)).sigmoid()


class CBAM(nn.Module):
    """TPH-YOLOv5's CBAM: reweight channels, then positions; keeps (B, C, H, W). ``c2`` must equal ``c1``."""

    def __init__(self, c1: int, c2: int):
        super().__init__()
        if c1 != c2:
            raise ValueError(f"CBAM keeps its channels: asked for {c2} output channels from {c1}")
        self.channel_attention = ChannelAttentionModule(c1)
        self.spatial_attention = SpatialAttentionModule()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.channel_attention(x) * x
        return self.spatial_attention(x) * x
