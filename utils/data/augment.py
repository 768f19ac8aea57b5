"""Image and box augmentations for detection: letterbox, mosaic, mixup, HSV, flips and random affine.

Every function takes explicit arguments and a ``numpy.random.Generator``; the dataset's adapter reads
the hyperparameters. Labels travelling through the pixel-space transforms are ``(n, 5)`` float32
arrays ``[class, x1, y1, x2, y2]`` in pixels of the current image, with continuous coordinates:
pixel ``i`` covers ``[i, i + 1)``, so a box drawn over pixels ``x1 .. x2 - 1`` has edges ``x1, x2``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

import cv2
import numpy as np

from utils.hyp import Hyp

# YOLOv5's grey padding.
PAD_COLOR = (114, 114, 114)
# Beta(32, 32) keeps the mixup ratio near 0.5 (YOLOv5's choice): both images stay visible.
MIXUP_BETA = 32.0


@dataclass(frozen=True)
class AugmentSettings:
    """The training-time augmentation a dataset applies, under the hyp files' names (the dataset sees these
    values, not the whole hyperparameter set). Build it with :meth:`from_hyp`."""

    hsv_h: float
    hsv_s: float
    hsv_v: float
    degrees: float
    translate: float
    scale: float
    shear: float
    perspective: float
    flipud: float
    fliplr: float
    mosaic: float
    mixup: float
    copy_paste: float
    box_min_px: float
    box_min_area_frac: float
    box_max_aspect: float

    @classmethod
    def from_hyp(cls, hyp: Union[Hyp, Mapping[str, Any], None] = None) -> AugmentSettings:
        """The augmentation keys of a Hyp or hyp dict (None: the built-in defaults of :class:`Hyp`)."""
        values = (hyp or Hyp()).to_dict() if not isinstance(hyp, Mapping) else hyp
        return cls(**{field.name: values[field.name] for field in dataclasses.fields(cls)})


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
        (padded image, (ratio_w, ratio_h), (pad_w, pad_h)) with the left/top padding in whole pixels;
        a point maps exactly as x' = x * ratio_w + pad_w.
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
    return image, (resized_w / width, resized_h / height), (float(left), float(top))


def augment_hsv(image: np.ndarray, hgain: float, sgain: float, vgain: float, rng: np.random.Generator) -> None:
    """Random hue/saturation/value gains, in place, through three lookup tables (fast: no float image).

    Args:
        image: (H, W, 3) uint8 BGR, modified in place.
        hgain, sgain, vgain: each channel is multiplied by a gain drawn from [1 - gain, 1 + gain].
    """
    if not (hgain or sgain or vgain):
        return
    gains = rng.uniform(-1, 1, 3) * (hgain, sgain, vgain) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(image, cv2.COLOR_BGR2HSV))
    levels = np.arange(256, dtype=np.float32)
    lut_hue = ((levels * gains[0]) % 180).astype(np.uint8)  # OpenCV's 8-bit hue range is [0, 180)
    lut_sat = np.clip(levels * gains[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(levels * gains[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR, dst=image)


def random_flip(
    image: np.ndarray, boxes_n: np.ndarray, fliplr: float, flipud: float, rng: np.random.Generator
) -> np.ndarray:
    """Flip left-right / up-down with the given probabilities.

    Args:
        image: (H, W, 3), flipped in place through a view swap (the returned array may be a view).
        boxes_n: (n, 4) cxcywh normalised, modified in place (a flip maps cx -> 1 - cx exactly).
    Returns:
        the (possibly flipped) image.
    """
    if rng.random() < flipud:
        image = np.flipud(image)
        boxes_n[:, 1] = 1 - boxes_n[:, 1]
    if rng.random() < fliplr:
        image = np.fliplr(image)
        boxes_n[:, 0] = 1 - boxes_n[:, 0]
    return image


def mixup(
    image1: np.ndarray, labels1: np.ndarray, image2: np.ndarray, labels2: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Blend two same-size images (Zhang et al. 2018, detection variant): all boxes of both are kept.

    Args:
        image1, image2: (H, W, 3) uint8 of one shape; labels1, labels2: (n, 5) ``[class, x1, y1, x2, y2]``.
    Returns:
        (blended (H, W, 3) uint8, concatenated (n1 + n2, 5) labels).
    """
    if image1.shape != image2.shape:
        raise ValueError(f"mixup needs images of one shape, got {image1.shape} and {image2.shape}")
    ratio = rng.beta(MIXUP_BETA, MIXUP_BETA)
    blended = cv2.addWeighted(image1, ratio, image2, 1 - ratio, 0)
    return blended, np.concatenate((labels1, labels2), 0)


def mosaic4(
    images: list[np.ndarray], labels: list[np.ndarray], size: int, rng: np.random.Generator, min_area_frac: float
) -> tuple[np.ndarray, np.ndarray]:
    """Tile four images around a random centre of a (2*size, 2*size) canvas.

    Each image keeps its scale and is cut at the centre lines; its boxes are clipped to the part that is
    visible, and a box keeps only if at least ``min_area_frac`` of its area is still visible.

    Args:
        images: four (h_i, w_i, 3) uint8 images (long side usually ``size``).
        labels: four (n_i, 5) ``[class, x1, y1, x2, y2]`` pixel arrays of those images.
    Returns:
        (canvas (2*size, 2*size, 3) uint8, labels (n, 5) in canvas pixels).
    """
    if len(images) != 4 or len(labels) != 4:
        raise ValueError(f"mosaic4 needs 4 images and 4 label arrays, got {len(images)} and {len(labels)}")
    centre_x, centre_y = (int(v) for v in rng.uniform(size // 2, 3 * size // 2, 2))
    canvas = np.full((2 * size, 2 * size, 3), PAD_COLOR[0], dtype=np.uint8)
    kept = []
    for tile, (image, tile_labels) in enumerate(zip(images, labels)):
        height, width = image.shape[:2]
        # canvas corner of the image: top-left, top-right, bottom-left, bottom-right of the centre
        offset_x = centre_x - width if tile in (0, 2) else centre_x
        offset_y = centre_y - height if tile in (0, 1) else centre_y
        x1, y1 = max(offset_x, 0), max(offset_y, 0)
        x2, y2 = min(offset_x + width, 2 * size), min(offset_y + height, 2 * size)
        canvas[y1:y2, x1:x2] = image[y1 - offset_y:y2 - offset_y, x1 - offset_x:x2 - offset_x]
        shifted = tile_labels.astype(np.float32, copy=True)
        shifted[:, [1, 3]] += offset_x
        shifted[:, [2, 4]] += offset_y
        kept.append(clip_to_window(shifted, (x1, y1, x2, y2), min_area_frac))
    return canvas, np.concatenate(kept, 0)


def clip_to_window(labels: np.ndarray, window: tuple[int, int, int, int], min_area_frac: float) -> np.ndarray:
    """Clip (n, 5) pixel labels, in place, to a visible window (x1, y1, x2, y2) and return those keeping
    at least ``min_area_frac`` of their area (and some area): mosaic's and tile training's rule for cut boxes."""
    area_before = (labels[:, 3] - labels[:, 1]) * (labels[:, 4] - labels[:, 2])
    labels[:, [1, 3]] = labels[:, [1, 3]].clip(window[0], window[2])
    labels[:, [2, 4]] = labels[:, [2, 4]].clip(window[1], window[3])
    area_after = (labels[:, 3] - labels[:, 1]) * (labels[:, 4] - labels[:, 2])
    return labels[(area_after > 0) & (area_after >= min_area_frac * area_before)]


def affine_matrix(
    height: int, width: int, out_height: int, out_width: int, degrees: float, translate: float, scale: float,
    shear: float, perspective: float, rng: np.random.Generator,
) -> tuple[np.ndarray, float]:
    """A random 3x3 homography (pixel-centre coordinates) about the image centre, and its scale factor.

    Rotation in [-degrees, degrees], scale in [1 - scale, 1 + scale], shear in [-shear, shear] degrees,
    perspective terms in [-perspective, perspective], translation of +-translate of the output size.
    """
    centre = np.eye(3)
    centre[:2, 2] = (-width / 2, -height / 2)
    warp = np.eye(3)
    warp[2, :2] = rng.uniform(-perspective, perspective, 2)
    rotate = np.eye(3)
    scale_factor = float(rng.uniform(1 - scale, 1 + scale))
    rotate[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=float(rng.uniform(-degrees, degrees)), scale=scale_factor)
    skew = np.eye(3)
    skew[0, 1], skew[1, 0] = np.tan(np.radians(rng.uniform(-shear, shear, 2)))
    move = np.eye(3)
    move[:2, 2] = rng.uniform(0.5 - translate, 0.5 + translate, 2) * (out_width, out_height)
    return move @ skew @ rotate @ warp @ centre, scale_factor


def transform_boxes(labels: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Map (n, 5) ``[class, x1, y1, x2, y2]`` through a 3x3 pixel-centre homography: the box enclosing the
    four moved corners, which is exactly the extent of the moved rectangle. Edges sit half a pixel from
    pixel centres, hence the -0.5 / +0.5."""
    corners = labels[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(-1, 2) - 0.5  # (n*4, 2): x1y1, x2y2, x1y2, x2y1
    homogeneous = np.concatenate((corners, np.ones((len(corners), 1))), 1) @ matrix.T  # (n*4, 3)
    moved = (homogeneous[:, :2] / homogeneous[:, 2:3]).reshape(-1, 8) + 0.5  # (n, 8)
    out = np.empty_like(labels)
    out[:, 0] = labels[:, 0]
    out[:, 1:3] = np.stack((moved[:, 0::2].min(1), moved[:, 1::2].min(1)), 1)
    out[:, 3:5] = np.stack((moved[:, 0::2].max(1), moved[:, 1::2].max(1)), 1)
    return out


def box_candidates(
    before: np.ndarray, after: np.ndarray, min_px: float, min_area_frac: float, max_aspect: float
) -> np.ndarray:
    """Which transformed boxes survive: (n, 4) xyxy before (already scaled by the transform's gain) and
    after -> (n,) bool. A box survives if both sides are > min_px, it keeps > min_area_frac of its area
    and its aspect ratio stays < max_aspect. Thresholds are hyps so 3-8 px drone objects survive."""
    width_before, height_before = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    width, height = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    aspect = np.maximum(width / (height + 1e-16), height / (width + 1e-16))
    area_kept = width * height / (width_before * height_before + 1e-16)
    return (width > min_px) & (height > min_px) & (area_kept > min_area_frac) & (aspect < max_aspect)


def random_affine(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, degrees: float = 0.0, translate: float = 0.1,
    scale: float = 0.5, shear: float = 0.0, perspective: float = 0.0, border: tuple[int, int] = (0, 0),
    min_px: float = 1.5, min_area_frac: float = 0.1, max_aspect: float = 50.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Random rotation/scale/shear/translation/perspective of an image and its boxes.

    Args:
        image: (H, W, 3) uint8. labels: (n, 5) ``[class, x1, y1, x2, y2]`` pixels.
        border: (bw, bh) added to each side of the output; negative crops (mosaic uses -size/2).
        min_px, min_area_frac, max_aspect: what survives, see :func:`box_candidates`.
    Returns:
        (image (H + 2*bh, W + 2*bw, 3), surviving labels (m, 5) clipped to the output).
    """
    out_height, out_width = image.shape[0] + 2 * border[1], image.shape[1] + 2 * border[0]
    matrix, scale_factor = affine_matrix(image.shape[0], image.shape[1], out_height, out_width, degrees,
                                         translate, scale, shear, perspective, rng)
    if perspective:
        image = cv2.warpPerspective(image, matrix, dsize=(out_width, out_height), borderValue=PAD_COLOR)
    else:
        image = cv2.warpAffine(image, matrix[:2], dsize=(out_width, out_height), borderValue=PAD_COLOR)
    if not len(labels):
        return image, labels
    moved = transform_boxes(labels, matrix)
    moved[:, [1, 3]] = moved[:, [1, 3]].clip(0, out_width)
    moved[:, [2, 4]] = moved[:, [2, 4]].clip(0, out_height)
    keep = box_candidates(labels[:, 1:5] * scale_factor, moved[:, 1:5], min_px, min_area_frac, max_aspect)
    return image, moved[keep]

