"""The library side of detect.py: options -> frames -> detections -> arrays (and files on request).

``run(opts)`` returns one :class:`ImageResult` per frame, so detection is usable from Python without
touching the disk; :class:`OutputWriter` writes annotated images/videos, YOLO txt files and crops when asked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch

from utils.annotate import save_feature_maps
from utils.boxes import scale_boxes_to_original
from utils.cbbl.calibration import UncertaintyCalibration
from utils.data.augment import letterbox
from utils.files import load_yaml_file, resolve_path
from utils.infer.backend import DetectBackend
from utils.infer.options import DetectOptions, ImageResult
from utils.infer.outputs import OutputWriter
from utils.infer.runtime import check_input_memory, load_backend
from utils.infer.slicing import SLICE_OFF, resolve_slice, sliced_detect
from utils.infer.sources import Frame, is_stream, iterate_frames, list_files
from utils.infer.tta import tta_forward
from utils.log import log_once
from utils.nms import non_max_suppression
from utils.torch_utils import max_stride, round_to_stride, select_device

logger = logging.getLogger(__name__)

ForwardFn = Callable[[torch.Tensor], torch.Tensor]


def network_batch(images: list[np.ndarray], imgsz: Sequence[int], stride: int, fixed_shape: bool = False):
    """Letterbox BGR images (H_i, W_i, 3) to one (B, 3, h, w) float RGB batch in [0, 1].

    ``fixed_shape`` pads to exactly ``imgsz``; otherwise same-shape images are padded only to the next multiple
    of ``stride``. Returns (batch, per image (letterboxed shape, ratio_pad) for scale_boxes_to_original).
    """
    auto = not fixed_shape and len({image.shape for image in images}) == 1
    boxed = [letterbox(image, tuple(imgsz), auto=auto, stride=stride) for image in images]
    batch = np.stack([padded[:, :, ::-1].transpose(2, 0, 1) for padded, _, _ in boxed])  # (B, 3, h, w) RGB
    undo = [(padded.shape[:2], ((ratio_h, ratio_w), pad)) for padded, (ratio_w, ratio_h), pad in boxed]
    return torch.from_numpy(np.ascontiguousarray(batch)).float().div_(255), undo


def detect_images(images: list[np.ndarray], forward: ForwardFn, imgsz: Sequence[int], stride: int, nc: int,
                  opts: DetectOptions, fixed_shape: bool = False, cbbl_fusion: bool = False) -> list[torch.Tensor]:
    """Letterbox, one forward pass for the batch, NMS, undo the letterbox.

    Args:
        images: list of (H_i, W_i, 3) uint8 BGR. forward: (B, 3, h, w) float [0, 1] RGB -> (B, N, 5 + nc + E).
        cbbl_fusion: the predictions end in per-side variance columns: NMS fuses boxes by them (utils.nms).
    Returns:
        per image (n, 6 + E) ``x1, y1, x2, y2, conf, cls, extra..`` in that image's pixels.
    """
    batch, undo = network_batch(images, imgsz, stride, fixed_shape)
    dets = non_max_suppression(forward(batch).float().cpu(), opts.conf_thres, opts.iou_thres,
                               list(opts.classes) if opts.classes is not None else None, opts.agnostic_nms,
                               max_det=opts.max_det, nc=nc, cbbl_fusion=cbbl_fusion)
    for det, (boxed_shape, ratio_pad), image in zip(dets, undo, images):
        det[:, :4] = scale_boxes_to_original(det[:, :4], boxed_shape, image.shape[:2], ratio_pad)
    return dets


def check_imgsz(imgsz: Sequence[int], stride: int) -> tuple[int, int]:
    """Round each side up to a multiple of the model's largest stride (warned when changed)."""
    height, width = (round_to_stride(size, max_stride(stride), "--imgsz") for size in imgsz)
    return height, width


def load_names(data: Union[str, Path], nc: int) -> list[str]:
    """Class names from a dataset YAML (``names`` as a list or an {id: name} mapping) for a model of ``nc``
    classes: a list of another length would relabel the model's classes, so it is refused."""
    path = resolve_path(data, "--data", "data")
    config = load_yaml_file(path) or {}
    names = config.get("names") if isinstance(config, dict) else None
    if isinstance(names, dict):
        names = [names[key] for key in sorted(names)]
    if not isinstance(names, list):
        raise ValueError(f"{path}: expected a 'names' list or mapping of class names")
    if len(names) != nc:
        raise ValueError(f"--data {path} names {len(names)} classes but the model predicts {nc}; give the dataset "
                         "YAML the model was trained on (or leave --data out to use the model's own names)")
    return [str(name) for name in names]


def build_forward(backend: DetectBackend, augment: bool) -> ForwardFn:
    """The batch forward function: the backend, or test-time augmentation around it (utils/infer/tta.py)."""
    if not augment:
        return backend
    return lambda images: tta_forward(backend, images, stride=backend.stride)


def run(opts: DetectOptions) -> list[ImageResult]:
    """Detect on every frame of ``opts.source``.

    Returns one :class:`ImageResult` per frame read (after --vid-stride), in source order. The inputs (weights,
    --data names, the source) are checked before the run folder is made; a source none of whose frames can be
    read is an error.
    """
    backend = load_backend(opts.weights, select_device(opts.device), opts.half, opts.runtime, opts.cbbl_fusion)
    backend.decode_only_above(opts.conf_thres)
    fusion = backend.decode_side_variance(opts.cbbl_fusion)
    names = load_names(opts.data, backend.nc) if opts.data else backend.names
    files = None if is_stream(opts.source) else list_files(opts.source)
    imgsz = inference_size(backend, opts.imgsz)
    slicing = resolve_slice(opts.slice, opts.overlap, backend.trained_tile, backend.weights_name)
    opts = replace(opts, slice=slicing[0] if slicing else SLICE_OFF, overlap=slicing[1] if slicing else opts.overlap)
    check_input_memory(backend, imgsz, opts.slice_batch if slicing else 1)
    if backend.device.type != "cpu":
        backend.warmup(imgsz)
    forward = build_forward(backend, opts.augment)

    def detect_fn(images: list[np.ndarray]) -> list[torch.Tensor]:
        return detect_images(images, forward, imgsz, backend.stride, backend.nc, opts, backend.fixed_imgsz is not None,
                             fusion)

    if backend.num_extra and opts.save_txt and opts.save_conf:
        logger.info("txt rows end in %s", "each box's expected IoU (the calibration stored in the weights)"
                    if backend.calibration else "each box's C-BBL uncertainty in nats (these weights carry no "
                    "calibration: a training run of this version stores one in best.pt)")
    writer = OutputWriter(opts, names, backend.num_extra > 0, files or ())
    results, completed = [], False
    try:
        for frame in iterate_frames(opts.source, opts.vid_stride, files):
            results.append(detect_frame(frame, detect_fn, opts, backend.num_extra > 0, names, backend.calibration))
            if opts.visualize:
                visualize(backend, frame, imgsz, writer.save_dir / "features" / writer.frame_stem(frame))
            writer.write(frame, results[-1])
        if not results:
            raise ValueError(f"--source {opts.source}: not one frame could be read (every file unreadable, or "
                             "empty videos); nothing detected")
        completed = True
    finally:
        writer.close(completed)  # finish video files even when a later frame fails
    return results


def inference_size(backend: DetectBackend, imgsz: Sequence[int]) -> tuple[int, int]:
    """--imgsz rounded to the stride; an export frozen to one input size runs at that size, and says so."""
    if backend.fixed_imgsz is None:
        return check_imgsz(imgsz, backend.stride)
    if tuple(imgsz) != backend.fixed_imgsz:
        logger.warning("%s was exported for fixed %dx%d inputs: --imgsz %s is ignored (export with --dynamic to "
                       "choose the size here)", backend.weights_name, *backend.fixed_imgsz,
                       " ".join(str(size) for size in imgsz))
    return backend.fixed_imgsz


def detect_frame(frame: Frame, detect_fn: Callable[[list[np.ndarray]], list[torch.Tensor]], opts: DetectOptions,
                 has_uncertainty: bool, names: Sequence[str],
                 calibration: Optional[UncertaintyCalibration] = None) -> ImageResult:
    """One frame, sliced (``opts.slice`` resolved to tile sides) or in a single pass, as an :class:`ImageResult`
    (and one log line)."""
    start = time.perf_counter()
    if opts.slice != SLICE_OFF:
        dets = sliced_detect(detect_fn, frame.image, opts.slice, opts.overlap, opts.iou_thres, opts.agnostic_nms,
                             opts.slice_full_pass, opts.max_det, opts.slice_batch)
    else:
        dets = detect_fn([frame.image])[0]
    result = ImageResult.from_detections(dets, frame.path, frame.index, frame.image.shape, has_uncertainty,
                                         calibration)
    classes, counts = np.unique(result.cls, return_counts=True)
    found = ", ".join(f"{n} {names[c] if c < len(names) else c}" for c, n in zip(classes, counts)) or "no detections"
    logger.info("%s%s %dx%d: %s, %.1f ms", frame.path, f" frame {frame.index + 1}" if frame.is_video else "",
                frame.image.shape[1], frame.image.shape[0], found, (time.perf_counter() - start) * 1000)
    return result


def visualize(backend: DetectBackend, frame: Frame, imgsz: Sequence[int], save_dir: Path) -> None:
    """--visualize: feature maps of each layer of the (first) PyTorch model for one frame."""
    if not hasattr(backend, "models"):
        log_once(logger, logging.WARNING, "--visualize needs .pt weights; skipped for exported models")
        return
    batch, _ = network_batch([frame.image], imgsz, backend.stride)
    model = backend.models[0]
    batch = batch.to(backend.device, next(model.parameters()).dtype)
    save_feature_maps(model.model, lambda: model(batch), save_dir)
