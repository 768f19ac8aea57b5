"""Test-time augmentation: several scaled / flipped passes merged before NMS (TPH-YOLOv5's 6 passes).

Each pass runs the detector on a resized (and optionally left-right flipped) copy of the batch; its
boxes are mapped back to the frame of the original network input and all passes are concatenated
along N, so one NMS merges them. Only box centres and sizes change; objectness, class scores and the
C-BBL uncertainty column ride along untouched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Callable

import torch
import torch.nn.functional as F

# TPH-YOLOv5's test-time scales (applied to both sides of the image).
TTA_SCALES = (1.0, 0.83, 0.67)
# YOLOv5's padding grey (114 / 255) for the area a downscaled image no longer covers.
PAD_VALUE = 0.447


def scale_images(images: torch.Tensor, scale: float, stride: int = 32) -> torch.Tensor:
    """Resize a (B, 3, H, W) float batch by ``scale`` and pad right/bottom to a multiple of ``stride``.

    The image content stays anchored at the top-left corner, so a box in the result maps back by a
    plain division by ``scale`` (see :func:`deaugment`).
    """
    if scale == 1.0:
        return images
    height, width = images.shape[2:]
    new_h, new_w = max(1, int(round(height * scale))), max(1, int(round(width * scale)))
    resized = F.interpolate(images, size=(new_h, new_w), mode="bilinear", align_corners=False)
    pad_h, pad_w = math.ceil(new_h / stride) * stride - new_h, math.ceil(new_w / stride) * stride - new_w
    return F.pad(resized, (0, pad_w, 0, pad_h), value=PAD_VALUE)  # (B, 3, H', W')


def deaugment(pred: torch.Tensor, scale: float, flipped: bool, pass_width: int) -> torch.Tensor:
    """Map one pass's (B, N, 5 + nc + E) predictions (cx, cy, w, h pixels) back to the original input.

    Args:
        scale: the pass's resize factor; flipped: whether the pass saw the left-right mirror image.
        pass_width: W' of the image the pass saw (padded); the mirror maps x to W' - x, which puts the
            content back at the top-left, where :func:`scale_images` anchored it.
    Inverse of the pass: un-mirroring then dividing by ``scale`` undoes mirroring and resizing.
    """
    out = pred.clone()
    if flipped:
        out[..., 0] = pass_width - out[..., 0]
    out[..., :4] /= scale
    return out


def tta_forward(model_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, stride: int = 32,
                scales: Sequence[float] = TTA_SCALES, flips: Sequence[bool] = (False, True)) -> torch.Tensor:
    """Run every (scale, flip) pass and concatenate the de-augmented predictions.

    Args:
        model_fn: float images (B, 3, H, W) in [0, 1] -> decoded predictions (B, N, 5 + nc + E).
        images: (B, 3, H, W) float in [0, 1].
    Returns:
        (B, sum of N over passes, 5 + nc + E) predictions in the frame of ``images``.
    """
    passes = []
    for scale in scales:
        scaled = scale_images(images, scale, stride)
        for flipped in flips:
            pred = model_fn(scaled.flip(3) if flipped else scaled)
            passes.append(deaugment(pred, scale, flipped, scaled.shape[3]))
    return torch.cat(passes, 1)
