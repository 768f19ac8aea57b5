"""Drawing detections so that tiny drone objects stay visible: thin lines, a small font, and the label
placed outside the box (above it, or below when there is no room) so it never hides the object.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Optional, Union

import cv2
import numpy as np
import torch

from utils.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh
from utils.files import checked_imwrite

ArrayLike = Union[np.ndarray, torch.Tensor]
_FONT = cv2.FONT_HERSHEY_SIMPLEX
# Hershey font scale per pixel of line thickness: about 8 px tall text at thickness 1.
_FONT_SCALE_PER_THICKNESS = 0.35
# Distinct hues for class colours (golden-ratio steps around the hue circle).
_HUE_STEP = 0.618033988749895


def class_color(class_id: int) -> tuple[int, int, int]:
    """A stable, saturated BGR colour per class id."""
    hue = (class_id * _HUE_STEP) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(blue * 255), int(green * 255), int(red * 255)


def default_thickness(image_shape: Sequence[int]) -> int:
    """1 px up to ~2000 px images, then growing slowly: thick lines would bury small objects."""
    return max(1, round(sum(image_shape[:2]) / 2 / 2000))


def _to_numpy(values: Optional[ArrayLike]) -> Optional[np.ndarray]:
    if values is None:
        return None
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def label_text(class_id: int, conf: Optional[float], names: Sequence[str], hide_conf: bool = False) -> str:
    """'car 0.87', or 'car' with hide_conf or no confidence; unknown ids print as their number."""
    name = names[class_id] if 0 <= class_id < len(names) else str(class_id)
    return name if hide_conf or conf is None else f"{name} {conf:.2f}"


def label_origin(box: Sequence[float], text_size: tuple[int, int], baseline: int,
                 image_shape: Sequence[int]) -> tuple[int, int, bool]:
    """Top-left (x, y) of a label's background outside ``box`` (xyxy) and whether it sits above it.

    Above the box if the label fits there, else just below it; shifted left to stay inside the image.
    """
    text_w, text_h = text_size
    height, width = image_shape[:2]
    x1, y1, y2 = int(box[0]), int(box[1]), int(box[3])
    label_h = text_h + baseline + 1
    above = y1 - label_h >= 0
    top = y1 - label_h if above else min(y2 + 1, max(height - label_h, 0))
    left = min(max(x1, 0), max(width - text_w - 1, 0))
    return left, top, above


def draw_detections(
    image_bgr: np.ndarray,
    boxes_xyxy: ArrayLike,
    classes: ArrayLike,
    confs: Optional[ArrayLike],
    names: Sequence[str],
    line_thickness: Optional[int] = None,
    hide_labels: bool = False,
    hide_conf: bool = False,
) -> np.ndarray:
    """Draw boxes and labels on a copy of the image.

    Args:
        image_bgr: (H, W, 3) uint8 BGR; left unchanged.
        boxes_xyxy: (N, 4) xyxy pixels of this image.
        classes: (N,) class ids. confs: (N,) confidences or None (labels without scores, e.g. ground truth).
        names: class names by id.
        line_thickness: box line width in pixels (None: 1 px for images up to ~2000 px).
    Returns:
        (H, W, 3) uint8 BGR annotated copy.
    """
    canvas = np.ascontiguousarray(image_bgr.copy())
    boxes = _to_numpy(boxes_xyxy).reshape(-1, 4)
    class_ids = _to_numpy(classes).reshape(-1).astype(int)
    scores = _to_numpy(confs)
    if len(class_ids) != len(boxes) or (scores is not None and len(scores.reshape(-1)) != len(boxes)):
        raise ValueError(f"draw_detections: {len(boxes)} boxes but {len(class_ids)} classes and "
                         f"{None if scores is None else len(scores.reshape(-1))} confidences")
    thickness = line_thickness or default_thickness(canvas.shape)
    font_scale = _FONT_SCALE_PER_THICKNESS * thickness
    font_thickness = max(thickness - 1, 1)
    for i, box in enumerate(boxes):
        color = class_color(class_ids[i])
        top_left, bottom_right = (int(box[0]), int(box[1])), (int(box[2]), int(box[3]))
        cv2.rectangle(canvas, top_left, bottom_right, color, thickness, cv2.LINE_AA)
        if hide_labels:
            continue
        text = label_text(class_ids[i], None if scores is None else float(scores.reshape(-1)[i]), names, hide_conf)
        (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, font_scale, font_thickness)
        left, top, _ = label_origin(box, (text_w, text_h), baseline, canvas.shape)
        cv2.rectangle(canvas, (left, top), (left + text_w, top + text_h + baseline), color, cv2.FILLED)
        cv2.putText(canvas, text, (left, top + text_h), _FONT, font_scale, (255, 255, 255), font_thickness,
                    cv2.LINE_AA)
    return canvas


def crop_box(image_bgr: np.ndarray, box_xyxy: Sequence[float], gain: float = 1.02, pad: int = 10) -> np.ndarray:
    """The region of one box, enlarged by ``gain`` and ``pad`` px for context, clipped to the image: (h, w, 3)."""
    height, width = image_bgr.shape[:2]
    box = np.asarray(box_xyxy)
    box = xyxy_to_cxcywh(box.astype(np.promote_types(box.dtype, np.float32)))  # (4,); integer boxes become floats
    box[2:] = box[2:] * gain + 2 * pad  # pad px on each side
    left, top, right, bottom = cxcywh_to_xyxy(box)
    x1, x2 = int(max(left, 0)), int(min(right, width))
    y1, y2 = int(max(top, 0)), int(min(bottom, height))
    return image_bgr[y1:y2, x1:x2].copy()


def save_feature_maps(layers: Sequence[torch.nn.Module], run_model: Callable[[], object], save_dir: Path,
                      max_channels: int = 16) -> list[Path]:
    """Save the first ``max_channels`` channels of each layer's output for the first image as a PNG grid.

    Args:
        layers: the model's layers (e.g. ``model.model``); their outputs are caught by forward hooks.
        run_model: runs the forward pass once (only the first image of its batch is drawn).
    Returns:
        The written files, ``save_dir/stage{i}_{Module}.png``.
    """
    caught: dict[int, torch.Tensor] = {}
    hooks = [layer.register_forward_hook(lambda _m, _i, out, i=i: caught.__setitem__(i, out))
             for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            run_model()
    finally:
        for hook in hooks:
            hook.remove()
    save_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index, output in caught.items():
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            continue  # the Detect head returns a tuple; nothing to draw
        maps = output[0, :max_channels].float().cpu()  # (C, h, w)
        maps = (maps - maps.amin((1, 2), keepdim=True)) / (maps.amax((1, 2), keepdim=True)
                                                            - maps.amin((1, 2), keepdim=True) + 1e-9)
        columns = int(np.ceil(np.sqrt(len(maps))))
        rows = int(np.ceil(len(maps) / columns))
        grid = torch.zeros(rows * columns, *maps.shape[1:])
        grid[: len(maps)] = maps
        tiled = grid.view(rows, columns, *maps.shape[1:]).permute(0, 2, 1, 3).reshape(rows * maps.shape[1], -1)
        # tiled: (rows * h, columns * w)
        path = save_dir / f"stage{index}_{type(layers[index]).__name__}.png"
        checked_imwrite(path, (tiled.numpy() * 255).astype(np.uint8))
        written.append(path)
    return written
