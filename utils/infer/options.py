"""What one detect run is asked to do (:class:`DetectOptions`) and what it finds per frame (:class:`ImageResult`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

# What runs a .pt checkpoint: PyTorch, or ONNX Runtime after an in-memory export (utils/infer/predictor.py).
RUNTIMES = ("torch", "onnxruntime")


@dataclass(frozen=True)
class DetectOptions:
    """Everything one detect run needs (YOLOv5's detect.py names), validated at construction."""

    weights: tuple[str, ...] = ("yolov5s.pt",)
    source: str = "data/images"
    data: Optional[str] = None
    imgsz: tuple[int, int] = (640, 640)
    conf_thres: float = 0.25
    iou_thres: float = 0.45
    max_det: int = 1000
    device: str = ""
    view_img: bool = False
    save_txt: bool = False
    save_conf: bool = False
    save_crop: bool = False
    nosave: bool = False
    classes: Optional[tuple[int, ...]] = None
    agnostic_nms: bool = False
    augment: bool = False
    visualize: bool = False
    project: str = "runs/detect"
    name: str = "exp"
    exist_ok: bool = False
    line_thickness: Optional[int] = None
    hide_labels: bool = False
    hide_conf: bool = False
    half: bool = False
    vid_stride: int = 1
    slice: Optional[tuple[int, int]] = None  # (tile_h, tile_w) frame pixels: sliced inference
    overlap: float = 0.2
    slice_full_pass: bool = False
    slice_batch: int = 8
    runtime: str = "torch"  # torch, or onnxruntime: a .pt runs through ONNX Runtime (faster on CPU)

    def __post_init__(self) -> None:
        fix = object.__setattr__  # normalise CLI/list inputs once; the object stays frozen afterwards
        weights = [self.weights] if isinstance(self.weights, (str, Path)) else self.weights
        fix(self, "weights", tuple(str(w) for w in weights))
        fix(self, "imgsz", _pair(self.imgsz))
        fix(self, "slice", None if self.slice is None else _pair(self.slice))
        fix(self, "source", str(self.source))
        fix(self, "classes", None if self.classes is None else tuple(int(c) for c in self.classes))
        self._validate()

    def _validate(self) -> None:
        checks = {"imgsz": len(self.imgsz) == 2 and min(self.imgsz) > 0, "conf_thres": 0 <= self.conf_thres <= 1,
                  "iou_thres": 0 <= self.iou_thres <= 1, "max_det": self.max_det > 0,
                  "vid_stride": self.vid_stride >= 1,
                  "overlap": 0 <= self.overlap < 1, "slice_batch": self.slice_batch >= 1,
                  "runtime": self.runtime in RUNTIMES,
                  "slice": self.slice is None or (len(self.slice) == 2 and min(self.slice) > 0)}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError("invalid detect option(s): " + ", ".join(f"{n}={getattr(self, n)!r}" for n in bad))


def _pair(size: Union[int, Sequence[int]]) -> tuple[int, ...]:
    """640 or [640] -> (640, 640); [h, w] -> (h, w)."""
    sizes = [int(s) for s in ([size] if isinstance(size, int) else size)]
    return tuple(sizes * 2 if len(sizes) == 1 else sizes)


@dataclass
class ImageResult:
    """Detections of one frame, in original-image pixels.

    Attributes:
        path: image, video or stream the frame came from; frame: frame index (0 for images).
        xyxy: (n, 4) float32 xyxy pixels. conf: (n,) float32. cls: (n,) int64.
        uncertainty: (n,) float32 C-BBL localization uncertainty (nats), or None for regression models.
        shape: (height, width) of the original frame.
    """

    path: str
    frame: int
    xyxy: np.ndarray
    conf: np.ndarray
    cls: np.ndarray
    uncertainty: Optional[np.ndarray]
    shape: tuple[int, int]

    @classmethod
    def from_detections(cls, dets: torch.Tensor, path: str, frame: int, shape: Sequence[int],
                        has_uncertainty: bool) -> ImageResult:
        """From (n, 6 + E) ``x1, y1, x2, y2, conf, cls, extra..`` detections."""
        array = dets.detach().float().cpu().numpy()
        return cls(path=path, frame=frame, xyxy=array[:, :4].copy(), conf=array[:, 4].copy(),
                   cls=array[:, 5].astype(np.int64), uncertainty=array[:, 6].copy() if has_uncertainty else None,
                   shape=(int(shape[0]), int(shape[1])))
