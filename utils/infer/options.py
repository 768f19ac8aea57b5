"""What one detect run is asked to do (:class:`DetectOptions`, detect.py's flags are generated from it) and
what it finds per frame (:class:`ImageResult`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from utils.cbbl.calibration import UncertaintyCalibration
from utils.files import REPO_ROOT
from utils.infer.slicing import OVERLAP_HELP, SLICE_AUTO, SLICE_HELP, SliceRequest, parse_slice
from utils.options import option

# What runs a .pt checkpoint: PyTorch, or ONNX Runtime after an in-memory export (utils/infer/runtime.py).
RUNTIMES = ("torch", "onnxruntime")
# --cbbl-fusion's default, None: on for models with C-BBL distributions, plain NMS for the others. On the real
# VisDrone val frames voting raised C-BBL's YOLOv5 mAP50-95 from 0.0397 +- 0.0005 to 0.0418 +- 0.0006 (three seeds,
# t +4.7; benchmarks/results/visdrone_real/summary.md) for 1.023x / 1.013x detect.py's time at 640 / 1536 px.
CBBL_FUSION_DEFAULT: Optional[bool] = None
WEIGHTS_HELP = ".pt (several = ensemble), .onnx, .torchscript"


# The options detect.py and val.py share, declared once (a function each: every dataclass needs its own field).


def runtime_option() -> Any:
    """The ``--runtime`` field."""
    return option("torch", "what runs a .pt: torch, or onnxruntime after an in-memory ONNX export (faster on CPU)",
                  choices=RUNTIMES)


def cbbl_fusion_option() -> Any:
    """The ``--cbbl-fusion`` / ``--no-cbbl-fusion`` field."""
    return option(CBBL_FUSION_DEFAULT, "C-BBL variance voting: each kept box becomes the average of the same-class "
                  "boxes overlapping it above --iou-thres, weighted by IoU and each side's inverse variance (KL-Loss, "
                  "He et al. 2019); default: on for C-BBL models, plain NMS for regression heads")


def votes(requested: Optional[bool], has_distributions: bool) -> bool:
    """Whether NMS votes (--cbbl-fusion): as ``requested``, None meaning wherever there are C-BBL distributions."""
    return has_distributions and requested is not False


def exist_ok_option() -> Any:
    """The ``--exist-ok`` field (export.py's too)."""
    return option(False, "reuse an existing project/name")


def slice_option(scored: str = "") -> Any:
    """The ``--slice`` field (``scored``: what the merged boxes are then used for, in the help)."""
    return option(SLICE_AUTO, SLICE_HELP + scored, nargs="+", metavar="SLICE")


def overlap_option() -> Any:
    """The ``--overlap`` field (tiles of --slice)."""
    return option(None, OVERLAP_HELP)


@dataclass(frozen=True)
class DetectOptions:
    """Everything one detect run needs (YOLOv5's detect.py names), validated at construction."""

    weights: tuple[str, ...] = option(("yolov5s.pt",), WEIGHTS_HELP)
    source: str = option("data/images", "file, folder, glob, list .txt, video, img_%%04d.png sequence, webcam index "
                                        "or stream URL")
    data: Optional[str] = option(None, "dataset YAML whose class names replace the model's")
    imgsz: tuple[int, ...] = option((640,), "inference size: one value or h w", flags=("--img", "--img-size"))
    conf_thres: float = option(0.25, "confidence threshold")
    iou_thres: float = option(0.45, "NMS IoU threshold")
    max_det: int = option(1000, "maximum detections per image")
    device: str = option("", "cuda device, i.e. 0 or cpu")
    view_img: bool = option(False, "show results")
    save_txt: bool = option(False, "save YOLO txt labels per image")
    save_conf: bool = option(False, "append conf (and C-BBL uncertainty) to txt rows")
    save_crop: bool = option(False, "save cropped boxes per class")
    nosave: bool = option(False, "do not save annotated images/videos")
    classes: Optional[tuple[int, ...]] = option(None, "keep only these class ids")
    agnostic_nms: bool = option(False, "class-agnostic NMS")
    augment: bool = option(False, "test-time augmentation")
    visualize: bool = option(False, "save feature maps (.pt weights only)")
    project: str = option(str(REPO_ROOT / "runs" / "detect"), "save results to project/name")
    name: str = option("exp", "save results to project/name")
    exist_ok: bool = exist_ok_option()
    line_thickness: Optional[int] = option(None, "box line width in pixels (default 1)")
    hide_labels: bool = option(False, "draw boxes without labels")
    hide_conf: bool = option(False, "labels without confidences")
    half: bool = option(False, "FP16 inference (CUDA)")
    vid_stride: int = option(1, "use every n-th video frame")
    slice: SliceRequest = slice_option()
    overlap: Optional[float] = overlap_option()
    slice_full_pass: bool = option(False, "with --slice, also detect on the whole frame")
    slice_batch: int = option(8, "tiles per forward pass")
    runtime: str = runtime_option()
    cbbl_fusion: Optional[bool] = cbbl_fusion_option()

    def __post_init__(self) -> None:
        fix = object.__setattr__  # normalise CLI/list inputs once; the object stays frozen afterwards
        weights = [self.weights] if isinstance(self.weights, (str, Path)) else self.weights
        fix(self, "weights", tuple(str(w) for w in weights))
        fix(self, "imgsz", _pair(self.imgsz))
        fix(self, "slice", parse_slice(self.slice))
        fix(self, "source", str(self.source))
        fix(self, "project", str(self.project))
        fix(self, "classes", None if self.classes is None else tuple(int(c) for c in self.classes))
        self._validate()

    def _validate(self) -> None:
        checks = {"imgsz": len(self.imgsz) == 2 and min(self.imgsz) > 0, "conf_thres": 0 <= self.conf_thres <= 1,
                  "iou_thres": 0 <= self.iou_thres <= 1, "max_det": self.max_det > 0,
                  "vid_stride": self.vid_stride >= 1,
                  "overlap": self.overlap is None or 0 <= self.overlap < 1, "slice_batch": self.slice_batch >= 1,
                  "runtime": self.runtime in RUNTIMES}
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
        expected_iou: (n,) float32 the uncertainty read as the expected IoU of each box with its object, for
            C-BBL checkpoints that carry a calibration (utils/cbbl/calibration.py); None otherwise.
    """

    path: str
    frame: int
    xyxy: np.ndarray
    conf: np.ndarray
    cls: np.ndarray
    uncertainty: Optional[np.ndarray]
    shape: tuple[int, int]
    expected_iou: Optional[np.ndarray] = None

    @property
    def localization(self) -> Optional[np.ndarray]:
        """What a C-BBL box's localization column reports: the expected IoU where the weights carry a
        calibration, else the raw uncertainty (None for regression models)."""
        return self.expected_iou if self.expected_iou is not None else self.uncertainty

    @classmethod
    def from_detections(cls, dets: torch.Tensor, path: str, frame: int, shape: Sequence[int],
                        has_uncertainty: bool, calibration: Optional[UncertaintyCalibration] = None) -> ImageResult:
        """From (n, 6 + E) ``x1, y1, x2, y2, conf, cls, extra..`` detections (``calibration``: the weights')."""
        array = dets.detach().float().cpu().numpy()
        uncertainty = array[:, 6].copy() if has_uncertainty else None
        expected_iou = (calibration.expected_iou(uncertainty).astype(np.float32)
                        if calibration is not None and uncertainty is not None else None)
        return cls(path=path, frame=frame, xyxy=array[:, :4].copy(), conf=array[:, 4].copy(),
                   cls=array[:, 5].astype(np.int64), uncertainty=uncertainty, shape=(int(shape[0]), int(shape[1])),
                   expected_iou=expected_iou)
