"""Convolutional building blocks of the YOLOv5 v6+ family (backbone and neck).

Every block takes ``(c1, c2, ...)``: input and output channels first, then its own settings, so the
YAML builder (models/parse.py, parse_model) can fill the channel arguments the same way for all of them.
Shapes: input (B, c1, H, W) -> output (B, c2, H', W').
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn as nn

IntOrPair = Union[int, tuple[int, int]]


def autopad(kernel: IntOrPair, padding: Optional[IntOrPair] = None, dilation: int = 1) -> IntOrPair:
    """'Same' padding for an odd kernel (so stride 1 keeps H, W and stride 2 halves them)."""
    if padding is not None:
        return padding
    if isinstance(kernel, int):
        return (dilation * (kernel - 1) + 1) // 2
    return tuple((dilation * (k - 1) + 1) // 2 for k in kernel)


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm + SiLU: the unit every other block is made of.

    After :func:`models.fuse.fuse_model` the BatchNorm is folded into the convolution and ``bn`` is an Identity.
    """

    def __init__(self, c1: int, c2: int, k: IntOrPair = 1, s: int = 1, p: Optional[IntOrPair] = None, g: int = 1,
                 d: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 conv, plus the input when ``shortcut`` and the channels match (a residual)."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(hidden, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.cv2(self.cv1(x))
        return x + out if self.add else out


class C3(nn.Module):
    """CSP block with 3 convs: a stack of n bottlenecks on one half, a plain 1x1 on the other, then merge.

    Subclasses (C3TR, C3STR) swap the bottleneck stack ``m`` for transformer blocks.
    """

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(c1, hidden, 1, 1)
        self.cv3 = Conv(2 * hidden, c2, 1)
        self.m: nn.Module = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPP(nn.Module):
    """Spatial pyramid pooling: max-pools of several sizes in parallel, concatenated (YOLOv3/v4 style)."""

    def __init__(self, c1: int, c2: int, k: tuple[int, ...] = (5, 9, 13)):
        super().__init__()
        hidden = c1 // 2
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(hidden * (len(k) + 1), c2, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=size, stride=1, padding=size // 2) for size in k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [pool(x) for pool in self.m], 1))


class SPPF(nn.Module):
    """Fast SPP: three chained k x k max-pools give the 5/9/13 receptive fields of SPP(5, 9, 13) for less work."""

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        hidden = c1 // 2
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(hidden * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        pooled1 = self.m(x)
        pooled2 = self.m(pooled1)
        return self.cv2(torch.cat((x, pooled1, pooled2, self.m(pooled2)), 1))


class Focus(nn.Module):
    """Space-to-depth (every 2x2 pixel block becomes 4 channels) then a Conv: the pre-v6 stem."""

    def __init__(self, c1: int, c2: int, k: IntOrPair = 1, s: int = 1, p: Optional[IntOrPair] = None, g: int = 1,
                 act: bool = True):
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, p, g, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, c2, H/2, W/2); H and W must be even."""
        return self.conv(torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1))


class Concat(nn.Module):
    """Concatenate a list of feature maps along ``dimension`` (channels by default)."""

    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)


class Upsample(nn.Upsample):
    """nn.Upsample under a YAML-friendly name: ``[None, 2, 'nearest']`` doubles H and W."""
