"""Model size figures: parameters and GFLOPs (YOLOv5's convention: 2 x thop multiply-accumulates)."""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

# thop runs at this square size and the count is scaled by area: cheap even for the x model.
# Exact for convolutions; window attention is also linear in pixels, global attention (C3TR) is not.
FLOPS_PROBE_SIZE = 64


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (all, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_gflops(model: nn.Module, imgsz: int = 640, channels: int = 3) -> float:
    """GFLOPs of one square ``imgsz`` image: 2 x thop MACs at FLOPS_PROBE_SIZE, scaled by (imgsz / probe)^2.

    Returns NaN (with a warning) when thop is not installed.
    """
    try:
        import thop
    except ImportError:
        logger.warning("thop is not installed: GFLOPs not computed (pip install thop)")
        return float("nan")
    probe = copy.deepcopy(model).eval()
    image = torch.zeros(1, channels, FLOPS_PROBE_SIZE, FLOPS_PROBE_SIZE, device=next(model.parameters()).device)
    macs, _ = thop.profile(probe, inputs=(image,), verbose=False)
    return 2 * macs / 1e9 * (imgsz / FLOPS_PROBE_SIZE) ** 2


def model_info(model: nn.Module, imgsz: int = 640) -> dict:
    """{'layers', 'params', 'gradients', 'gflops'} of a model at an ``imgsz`` square input."""
    return {"layers": len(list(model.modules())), "params": count_parameters(model),
            "gradients": count_parameters(model, trainable_only=True), "gflops": model_gflops(model, imgsz)}
