"""YOLOv5's torch.hub inference interface: :class:`AutoShape` (any images in, NMS'd boxes out) and
:class:`Detections` (``.xyxy``, ``.xywhn``, ``.pandas()``, ``.save()``, ``.crop()``, ``.show()``, ``.tolist()``,
``.print()`` as YOLOv5 users expect).

Images may be file paths, ``pathlib.Path``, HWC uint8 RGB numpy arrays or PIL images (YOLOv5's convention:
arrays are RGB). Preprocessing and NMS are detect.py's (utils/infer/predictor.py), so hub results equal
detect.py's for the same settings.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn as nn

from models.detect import SIDE_VARIANCE_COLUMNS
from utils.annotate import crop_box, draw_detections
from utils.boxes import xyxy_to_cxcywh
from utils.cbbl.calibration import UncertaintyCalibration
from utils.data.tiles import TileSettings
from utils.files import checked_imwrite, increment_path, read_image
from utils.infer.options import DetectOptions, ImageResult, votes
from utils.infer.predictor import check_imgsz, detect_images
from utils.infer.slicing import SliceRequest, resolve_slice, sliced_detect
from utils.torch_utils import TRAIN_GRID_FLOOR, autocast, max_stride

logger = logging.getLogger(__name__)

ImageInput = Union[str, Path, np.ndarray, Any]  # Any: a PIL image
# Column names of Detections.pandas() (YOLOv5's).
XYXY_COLUMNS = ["xmin", "ymin", "xmax", "ymax", "confidence", "class", "name"]
XYWH_COLUMNS = ["xcenter", "ycenter", "width", "height", "confidence", "class", "name"]


def _rgb_array(image: ImageInput, index: int) -> tuple[np.ndarray, str]:
    """One input -> (HWC uint8 RGB array, file name for saving)."""
    if isinstance(image, (str, Path)):
        bgr = read_image(image)
        if bgr is None:
            raise FileNotFoundError(f"image {image} not found or not readable")
        return bgr[:, :, ::-1], Path(image).name
    if hasattr(image, "convert"):  # PIL image
        return np.asarray(image.convert("RGB")), Path(getattr(image, "filename", "") or f"image{index}.jpg").name
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image {index}: expected an HWC RGB array with 3 channels, got shape {array.shape}")
    return array.astype(np.uint8), f"image{index}.jpg"


# detect.py's defaults: hub inference runs at the same operating point unless a setting below is changed.
DETECT_DEFAULTS = DetectOptions()


class AutoShape(nn.Module):
    """Wraps an eval-mode detector: ``model(images, size=640)`` -> :class:`Detections` (YOLOv5's settings names)."""

    conf = DETECT_DEFAULTS.conf_thres  # NMS confidence threshold
    iou = DETECT_DEFAULTS.iou_thres  # NMS IoU threshold
    agnostic = DETECT_DEFAULTS.agnostic_nms  # class-agnostic NMS
    classes: Optional[Sequence[int]] = DETECT_DEFAULTS.classes  # keep only these classes
    max_det = DETECT_DEFAULTS.max_det  # detections kept per image
    amp = False  # autocast inference: fp16 on CUDA, bf16 on a CPU with native bf16 (head and decode float32)
    slice: SliceRequest = DETECT_DEFAULTS.slice  # 'auto' (a --tile model's training windows), 'off', or (h, w)
    overlap: Optional[float] = DETECT_DEFAULTS.overlap  # None: the training tiles' under auto, else 0.2
    cbbl_fusion: Optional[bool] = DETECT_DEFAULTS.cbbl_fusion  # variance voting; None: on for C-BBL models

    def __init__(self, model: nn.Module, trained_tile: Optional[TileSettings] = None,
                 calibration: Optional[UncertaintyCalibration] = None):
        super().__init__()
        self.model = model.eval()
        self.names, self.nc = list(model.names), int(model.nc)
        self.stride = max_stride(model.stride, TRAIN_GRID_FLOOR)
        self.has_uncertainty = int(getattr(model.detect, "num_extra", 0)) > 0  # C-BBL: one column after the classes
        self.trained_tile, self.calibration = trained_tile, calibration

    @torch.no_grad()
    def forward(self, images: Union[ImageInput, Sequence[ImageInput]],
                size: Union[int, Sequence[int]] = DETECT_DEFAULTS.imgsz) -> Detections:
        """One image or a list; ``size`` the long side (or (h, w)) the network sees, rounded to the stride."""
        batch = list(images) if isinstance(images, (list, tuple)) else [images]
        arrays, files = zip(*(_rgb_array(image, i) for i, image in enumerate(batch)))
        opts = DetectOptions(imgsz=size, conf_thres=self.conf, iou_thres=self.iou, max_det=self.max_det,
                             agnostic_nms=self.agnostic, classes=self.classes, slice=self.slice, overlap=self.overlap)
        imgsz = check_imgsz(opts.imgsz, self.stride)
        device = next(self.model.parameters()).device
        fusion = votes(self.cbbl_fusion, self.has_uncertainty)
        self.model.detect.side_variance = fusion
        width = 5 + self.nc + int(self.has_uncertainty) + (SIDE_VARIANCE_COLUMNS if fusion else 0)

        def forward(tensor: torch.Tensor) -> torch.Tensor:
            with autocast(device, self.amp):
                return self.model(tensor.to(device))[0][..., :width].float()

        def detect_fn(images: list[np.ndarray]) -> list[torch.Tensor]:
            return detect_images(images, forward, imgsz, self.stride, self.nc, opts, cbbl_fusion=fusion)

        images = [np.ascontiguousarray(a[:, :, ::-1]) for a in arrays]
        slicing = resolve_slice(opts.slice, opts.overlap, self.trained_tile, "the model")
        if slicing is None:
            dets = detect_fn(images)
        else:
            dets = [sliced_detect(detect_fn, image, slicing[0], slicing[1], opts.iou_thres, opts.agnostic_nms,
                                  max_det=opts.max_det, batch_size=opts.slice_batch) for image in images]
        localization = None
        if self.has_uncertainty:  # read as detect.py reads it (utils.infer.options.ImageResult.localization)
            localization = [ImageResult.from_detections(d, file, 0, array.shape, True, self.calibration).localization
                            for d, file, array in zip(dets, files, arrays)]
        return Detections(list(arrays), [d[:, :6] for d in dets], list(files), self.names, localization,
                          "uncertainty" if self.calibration is None else "expected_iou")


class Detections:
    """Per image (n, 6) ``x1, y1, x2, y2, conf, cls`` detections in its pixels, with YOLOv5's views and helpers."""

    def __init__(self, ims: list[np.ndarray], pred: list[torch.Tensor], files: list[str], names: Sequence[str],
                 localization: Optional[list[np.ndarray]] = None, localization_name: str = "uncertainty"):
        self.ims, self.pred, self.files, self.names = ims, pred, files, list(names)
        self.localization, self.localization_name = localization, localization_name  # C-BBL: per box, per image
        self.n = len(pred)
        gains = [torch.tensor([im.shape[1], im.shape[0], im.shape[1], im.shape[0], 1.0, 1.0]) for im in ims]
        self.xyxy = pred
        self.xywh = [torch.cat((xyxy_to_cxcywh(p[:, :4]), p[:, 4:]), 1) for p in pred]
        self.xyxyn = [p / g for p, g in zip(self.xyxy, gains)]
        self.xywhn = [p / g for p, g in zip(self.xywh, gains)]

    def __len__(self) -> int:
        return self.n

    def __str__(self) -> str:
        lines = []
        for i, (im, pred) in enumerate(zip(self.ims, self.pred)):
            counts = [f"{int((pred[:, 5] == c).sum())} {self.names[int(c)]}" for c in pred[:, 5].unique()]
            found = ", ".join(counts) or "(no detections)"
            lines.append(f"image {i + 1}/{self.n}: {im.shape[0]}x{im.shape[1]} {found}")
        return "\n".join(lines)

    def print(self) -> None:
        print(self)

    def render(self, labels: bool = True) -> list[np.ndarray]:
        """The images (RGB) with their boxes drawn."""
        return [draw_detections(im[:, :, ::-1], p[:, :4], p[:, 5], p[:, 4], self.names, hide_labels=not labels)
                [:, :, ::-1] for im, p in zip(self.ims, self.pred)]

    def save(self, labels: bool = True, save_dir: Union[str, Path] = "runs/detect/exp", exist_ok: bool = False
             ) -> Path:
        """Write the annotated images into a new folder (incremented unless ``exist_ok``); returns it."""
        folder = increment_path(save_dir, exist_ok=exist_ok, mkdir=True)
        for image, name in zip(self.render(labels), self.files):
            path = folder / name
            checked_imwrite(path, np.ascontiguousarray(image[:, :, ::-1]))
        logger.info("Saved %d image%s to %s", self.n, "s" * (self.n > 1), folder)
        return folder

    def crop(self, save: bool = True, save_dir: Union[str, Path] = "runs/detect/exp", exist_ok: bool = False
             ) -> list[dict[str, Any]]:
        """YOLOv5's ``results.crop()``: one dict per box, ``box`` (xyxy), ``conf``, ``cls``, ``label`` and ``im``
        (the region, enlarged as detect.py's --save-crop enlarges it, BGR as YOLOv5 returns it); with ``save``
        also written to <save_dir>/crops/<class>/<image stem>_<box>.jpg in a new folder."""
        folder = increment_path(save_dir, exist_ok=exist_ok, mkdir=True) if save else None
        crops = []
        for image, pred, file in zip(self.ims, self.pred, self.files):
            bgr = np.ascontiguousarray(image[:, :, ::-1])
            for index, (*box, conf, cls) in enumerate(pred.tolist()):
                name = self.names[int(cls)]
                crop = crop_box(bgr, box)
                if folder is not None:
                    checked_imwrite(folder / "crops" / name / f"{Path(file).stem}_{index}.jpg", crop)
                crops.append({"box": box, "conf": conf, "cls": int(cls), "label": f"{name} {conf:.2f}", "im": crop})
        if folder is not None:
            logger.info("Saved %d crop%s to %s", len(crops), "s" * (len(crops) != 1), folder / "crops")
        return crops

    def show(self, labels: bool = True) -> None:
        """Display the annotated images: inline in Jupyter, else in the system's image viewer. Where there is no
        display (a server, a container) one warning says so and points to ``save()``/``render()``."""
        from PIL import Image, ImageShow  # Pillow comes with matplotlib; only showing needs it

        images = [Image.fromarray(image) for image in self.render(labels)]
        if "ipykernel" in sys.modules:
            from IPython.display import display

            for image in images:
                display(image)
            return
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            logger.warning("results.show(): no display here (DISPLAY is not set); use results.save() to write the "
                           "images or results.render() to get them as arrays")
            return
        for image, file in zip(images, self.files):
            if not ImageShow.show(image, title=file):
                logger.warning("results.show(): no image viewer found; use results.save() or results.render()")
                return

    def tolist(self) -> list[Detections]:
        """One :class:`Detections` per image, as YOLOv5's ``results.tolist()`` (``for r in results.tolist()``)."""
        return [Detections([im], [pred], [file], self.names) for im, pred, file in zip(self.ims, self.pred, self.files)]

    def pandas(self) -> Any:
        """An object whose ``.xyxy``, ``.xyxyn``, ``.xywh``, ``.xywhn`` are lists of DataFrames (YOLOv5's columns)."""
        import pandas

        frames = type("PandasDetections", (), {})()
        for view, columns in (("xyxy", XYXY_COLUMNS), ("xyxyn", XYXY_COLUMNS), ("xywh", XYWH_COLUMNS),
                              ("xywhn", XYWH_COLUMNS)):
            tables = []
            for index, pred in enumerate(getattr(self, view)):
                rows = [[*row[:5].tolist(), int(row[5]), self.names[int(row[5])]] for row in pred]
                table = pandas.DataFrame(rows, columns=columns)
                if self.localization is not None:  # after YOLOv5's columns, so scripts that read those still do
                    table[self.localization_name] = self.localization[index]
                tables.append(table)
            setattr(frames, view, tables)
        return frames
