"""Conv + BatchNorm fusion for inference: one convolution instead of two ops, same outputs."""

from __future__ import annotations

import torch
import torch.nn as nn

from models.common import Conv


def fuse_conv_and_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A Conv2d with bias computing bn(conv(x)) in eval mode.

    w' = w * gamma / sqrt(var + eps) per output channel; b' = beta + (b - mean) * gamma / sqrt(var + eps).
    """
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True).requires_grad_(False).to(conv.weight.device)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_(bn.bias + (conv_bias - bn.running_mean) * scale)
    return fused


@torch.no_grad()
def fuse_model(model: nn.Module) -> nn.Module:
    """Fold the BatchNorm of every :class:`Conv` into its convolution, in place; returns the model."""
    for module in model.modules():
        if isinstance(module, Conv) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = fuse_conv_and_bn(module.conv, module.bn)
            module.bn = nn.Identity()
    return model
