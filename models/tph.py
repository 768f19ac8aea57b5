"""Our variants of TPH-YOLOv5 blocks: a transformer-encoder C3 (C3TRv2), CBAM attention (CBAMv2), BiFPN fusion.

TPH's own blocks, computed as TPH computes them, are in models/tph_yolov5.py under TPH's names.

All take and return (B, C, H, W) feature maps; the YAML builder fills ``c1`` (and ``c2``) from the graph.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from models.common import C3, Conv

# MLP width of a transformer layer relative to its embedding width (the usual ViT choice).
MLP_RATIO = 4.0
# Keeps BiFPN's normalised fusion weights finite when all raw weights are clipped to 0.
BIFPN_EPS = 1e-4


def check_heads(dim: int, num_heads: int) -> None:
    """ValueError unless ``num_heads`` >= 1 divides ``dim`` (every head needs an equal share of channels)."""
    if num_heads < 1 or dim % num_heads:
        raise ValueError(f"attention with {dim} channels cannot be split into {num_heads} heads "
                         f"(channels must be a multiple of the number of heads)")


class Mlp(nn.Sequential):
    """Linear -> GELU -> Linear on the last axis (the feed-forward half of a transformer layer)."""

    def __init__(self, dim: int, ratio: float = MLP_RATIO):
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class TransformerLayer(nn.Module):
    """Pre-norm transformer encoder layer over tokens (B, N, C): global self-attention, then an MLP."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        check_heads(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        normed = self.norm1(tokens)
        tokens = tokens + self.attn(normed, normed, normed, need_weights=False)[0]
        return tokens + self.mlp(self.norm2(tokens))


class TransformerBlock(nn.Module):
    """Feature map -> tokens -> ``num_layers`` transformer layers -> feature map.

    Position comes from a depthwise 3x3 conv added to the input (a conditional position encoding), so the
    block works at any H, W. Cost is quadratic in H*W: use it on the coarsest level only.
    """

    def __init__(self, c1: int, c2: int, num_heads: int, num_layers: int):
        super().__init__()
        self.proj = Conv(c1, c2) if c1 != c2 else nn.Identity()
        self.position = nn.Conv2d(c2, c2, 3, 1, 1, groups=c2)
        self.layers = nn.Sequential(*(TransformerLayer(c2, num_heads) for _ in range(num_layers)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        x = x + self.position(x)
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
        tokens = self.layers(tokens)
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)  # (B, C, H, W)


class C3TRv2(C3):
    """Our C3TR variant: pre-norm layers, depthwise-conv position encoding, biased MLP (GELU), so it runs at
    any H, W without a learned per-token embedding. TPH's own C3TR is models/tph_yolov5.py's ``C3TR``."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5,
                 num_heads: int = 4):
        super().__init__(c1, c2, n, shortcut, g, e)
        hidden = int(c2 * e)
        self.m = TransformerBlock(hidden, hidden, num_heads, n)


class CBAMv2(nn.Module):
    """Our CBAM variant: reweight channels (bias-free 1x1-conv MLP), then positions (bias-free k x k conv).

    Unlike TPH's ``CBAM`` (models/tph_yolov5.py) it takes the reduction and kernel size as YAML arguments.

    Keeps the shape (B, C, H, W); TPH-YOLOv5 uses it to find attention regions in dense drone scenes.
    """

    def __init__(self, c1: int, reduction: int = 16, kernel_size: int = 7):
        super().__init__()
        hidden = max(c1 // reduction, 1)
        self.channel_mlp = nn.Sequential(nn.Conv2d(c1, hidden, 1, bias=False), nn.ReLU(),
                                         nn.Conv2d(hidden, c1, 1, bias=False))
        self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel_logits = self.channel_mlp(x.mean((2, 3), keepdim=True)) + self.channel_mlp(x.amax((2, 3), keepdim=True))
        x = x * channel_logits.sigmoid()  # (B, C, 1, 1) broadcast
        pooled = torch.cat((x.mean(1, keepdim=True), x.amax(1, keepdim=True)), 1)  # (B, 2, H, W)
        return x * self.spatial(pooled).sigmoid()  # (B, 1, H, W) broadcast


class BiFPNConcat(nn.Module):
    """BiFPN fast normalised fusion, then concatenation: out = cat(w_i / (sum_j w_j + eps) * x_i), w = relu(w).

    The learned non-negative weights let the network rank its inputs (TPH-YOLOv5's 'BiFPN' is a plain concat).
    """

    def __init__(self, num_inputs: int, dimension: int = 1):
        super().__init__()
        if num_inputs < 2:
            raise ValueError(f"BiFPNConcat fuses at least 2 inputs, got {num_inputs}")
        self.d = dimension
        self.weight = nn.Parameter(torch.ones(num_inputs))

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        weights = self.weight.relu()
        weights = weights / (weights.sum() + BIFPN_EPS)  # (num_inputs,)
        return torch.cat([weight * feature for weight, feature in zip(weights, x)], self.d)
