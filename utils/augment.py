"""Image and box augmentations for detection: letterbox first; the data helper adds the rest."""

from __future__ import annotations

from typing import Union

import cv2
import numpy as np

# YOLOv5's grey padding.
PAD_COLOR = (114, 114, 114)


def letterbox(
    image: np.ndarray,
    new_shape: Union[int, tuple[int, int]] = 640,
    color: tuple[int, int, int] = PAD_COLOR,
    auto: bool = True,
    scaleup: bool = True,
    stride: int = 32,
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Resize keeping the aspect ratio, then pad to ``new_shape`` (h, w).

    Args:
        image: (H, W, 3) uint8.
        auto: pad only to the next multiple of ``stride`` (minimum rectangle) instead of the full shape.
        scaleup: allow enlarging; False only shrinks (better val mAP for small images).
    Returns:
        (padded image, (ratio_w, ratio_h), (pad_w, pad_h)) with pads per side in pixels;
        a point maps as x' = x * ratio_w + pad_w.
    """
    height, width = image.shape[:2]
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    gain = min(new_shape[0] / height, new_shape[1] / width)
    if not scaleup:
        gain = min(gain, 1.0)
    resized_w, resized_h = int(round(width * gain)), int(round(height * gain))
    pad_w, pad_h = new_shape[1] - resized_w, new_shape[0] - resized_h
    if auto:
        pad_w, pad_h = np.mod(pad_w, stride), np.mod(pad_h, stride)
    pad_w, pad_h = pad_w / 2, pad_h / 2
    if (width, height) != (resized_w, resized_h):
        image = cv2.resize(image, (resized_w, resized_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(pad_h - 0.1)), int(round(pad_h + 0.1))
    left, right = int(round(pad_w - 0.1)), int(round(pad_w + 0.1))
    image = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return image, (resized_w / width, resized_h / height), (pad_w, pad_h)
