"""The library side of validation: run a detector over a loader and score it (val.py and train.py).

``validate`` collects per-image detections and ground truths in ORIGINAL image pixels (the letterbox
undone), then scores them with one protocol: ``yolov5`` (utils/eval/yolov5.py, YOLOv5 v7.0's val.py metric,
the default), ``coco`` (utils/eval/coco.py, pycocotools' rules) or ``visdrone`` (utils/eval/visdrone.py, the
official toolkit's rules). P and R are YOLOv5's: at the confidence of the best mean F1, from the protocol's
own IoU-.5 matching.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from utils.boxes import cxcywhn_to_xyxy, scale_boxes_to_original, xyxy_to_cxcywhn
from utils.data.config import SINGLE_CLASS_NAME
from utils.eval.metrics import BoxSet, ConfusionMatrix
from utils.eval.outputs import save_outputs
from utils.eval.plots import plot_batch, plot_reliability
from utils.eval.reliability import reliability_csv
from utils.eval.scoring import DEFAULT_PROTOCOL, PROTOCOLS, plot_metrics, protocol_named
from utils.files import atomic_write_text, read_image
from utils.infer.predictor import network_batch
from utils.infer.slicing import sliced_detect
from utils.infer.tta import tta_forward
from utils.infer.wbf import weighted_box_fusion
from utils.nms import non_max_suppression
from utils.torch_utils import TRAIN_GRID_FLOOR, autocast, max_stride, time_sync

logger = logging.getLogger(__name__)

MERGE_MODES = ("nms", "wbf")  # how an ensemble's members are merged: one NMS over all, or weighted box fusion
NUM_PLOTTED_BATCHES = 3  # val_batch0..2_{labels,pred}.jpg


@dataclass(frozen=True)
class Slicing:
    """``val.py --slice H W --overlap F [--slice-full-pass]``: tiles of (H, W) frame pixels, each run at ``imgsz``."""

    tile_hw: tuple[int, int]
    overlap: float
    imgsz: int
    full_pass: bool = False


@dataclass
class ValResults:
    """Validation figures (fractions in [0, 1]; -1 when undefined, e.g. no GT of any class)."""

    precision: float = -1.0
    recall: float = -1.0
    map50: float = -1.0
    map50_95: float = -1.0
    map75: float = -1.0
    ap_small: float = -1.0  # COCO's area-range APs (pycocotools rules) under the yolov5 and coco protocols
    ap_medium: float = -1.0
    ap_large: float = -1.0
    per_class: list[dict[str, Any]] = field(default_factory=list)  # name, images, instances, P, R, AP50, AP
    losses: Optional[dict[str, float]] = None  # mean box/obj/cls loss per batch
    speed_ms: dict[str, float] = field(default_factory=dict)  # preprocess/inference/nms per image
    uncertainty: Optional[dict[str, float]] = None  # mean C-BBL localization uncertainty of TPs and FPs
    protocol: str = DEFAULT_PROTOCOL
    extra: dict[str, float] = field(default_factory=dict)  # protocol figures beyond the above (AR...)

    @property
    def loss(self) -> Optional[dict[str, float]]:
        """Alias of ``losses`` (the training callbacks read ``results.loss``)."""
        return self.losses

    def fitness(self) -> float:
        """0.1 * mAP50 + 0.9 * mAP50-95 (undefined figures count as 0): what best.pt is chosen by."""
        return 0.1 * max(self.map50, 0.0) + 0.9 * max(self.map50_95, 0.0)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fitness": self.fitness()}


@dataclass
class Collected:
    """Everything one pass over the loader produced, in original-image pixels."""

    dets: BoxSet
    det_extra: np.ndarray  # (D, E) extra columns (C-BBL uncertainty) or (D, 0)
    gts: BoxSet
    image_paths: list[str]
    image_shapes: list[tuple[int, int]]  # (h0, w0)
    confusion: ConfusionMatrix
    losses: Optional[dict[str, float]]
    speed_ms: dict[str, float]


def _device_of(model: nn.Module) -> torch.device:
    if hasattr(model, "device") and isinstance(model.device, torch.device):
        return model.device
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _loss_terms(output: Any) -> dict[str, float]:
    """ComputeLoss output -> named floats: ``(total, {name: tensor})``, a dict, or ``(total, (box, obj, cls))``."""
    items = output[1] if isinstance(output, (tuple, list)) else output
    if isinstance(items, dict):
        return {name: float(value) for name, value in items.items()}
    return {name: float(value) for name, value in zip(("box", "obj", "cls"), items)}


def _model_fn(model: nn.Module) -> Callable[[torch.Tensor], tuple[torch.Tensor, Any]]:
    """A callable returning (pred, raw) for a Model (eval forward: (pred, raw)) or a backend (pred only)."""
    def call(images: torch.Tensor) -> tuple[torch.Tensor, Any]:
        out = model(images)
        return (out[0], out[1]) if isinstance(out, (tuple, list)) else (out, None)
    return call


def _original_gt(targets: torch.Tensor, index: int, net_hw: tuple[int, int], shape: Any) -> np.ndarray:
    """(m, 5) ``[class, x1, y1, x2, y2]`` original pixels of image ``index`` of a batch."""
    labels = targets[targets[:, 0] == index]
    boxes = cxcywhn_to_xyxy(labels[:, 2:6].double(), net_hw[1], net_hw[0])
    if shape is not None:
        boxes = scale_boxes_to_original(boxes, net_hw, shape[0], shape[1])
    return torch.cat([labels[:, 1:2].double(), boxes], 1).numpy()


def _original_dets(det: torch.Tensor, net_hw: tuple[int, int], shape: Any) -> np.ndarray:
    """NMS output (n, 6 + E) -> float64 numpy with boxes in original pixels."""
    det = det.detach().double().cpu().clone()
    if shape is not None:
        det[:, :4] = scale_boxes_to_original(det[:, :4], net_hw, shape[0], shape[1])
    return det.numpy()


def _stride_of(model: nn.Module) -> int:
    return max_stride(getattr(model, "stride", TRAIN_GRID_FLOOR))


def _detect(model: nn.Module, images: torch.Tensor, nc: int, nms_args: dict[str, Any], augment: bool,
            merge: str) -> tuple[list[torch.Tensor], Any, float, float]:
    """One batch -> (per-image NMS output (n, 6 + E), raw head output or None, seconds of inference and NMS).

    ``merge='wbf'`` runs NMS per ensemble member (``forward_each``) and fuses them with weighted box fusion.
    """
    call, start = _model_fn(model), time_sync()
    if merge == "wbf" and hasattr(model, "forward_each"):
        member_preds = model.forward_each(images)
        inference = time_sync() - start
        per_member = [non_max_suppression(p.float(), nc=nc, **nms_args) for p in member_preds]
        fused = [weighted_box_fusion(list(dets), max_det=nms_args["max_det"]) for dets in zip(*per_member)]
        return fused, None, inference, time_sync() - start - inference
    if augment:
        pred, raw = tta_forward(lambda x: call(x)[0], images, _stride_of(model)), None
    else:
        pred, raw = call(images)
    inference = time_sync() - start
    dets = non_max_suppression(pred.float(), nc=nc, **nms_args)
    return dets, raw, inference, time_sync() - start - inference


def plot_val_batch(images: torch.Tensor, targets: torch.Tensor, dets: list[torch.Tensor], names: list[str],
                   save_dir: Path, batch_index: int) -> None:
    """val_batch{i}_labels.jpg and val_batch{i}_pred.jpg, as YOLOv5's validation writes for its first batches.

    Args: images uint8 (B, 3, H, W); targets (M, 6) normalised labels; dets per image (n, 6+) network pixels.
    """
    height, width = images.shape[2:]
    rows = [torch.cat([torch.full((len(det), 1), float(index)), det[:, 5:6].float().cpu(),
                       xyxy_to_cxcywhn(det[:, :4].float().cpu(), width, height), det[:, 4:5].float().cpu()], 1)
            for index, det in enumerate(dets)]
    predictions = torch.cat(rows) if rows else torch.zeros((0, 7))  # (D, 7) [image, class, cx, cy, w, h, conf]
    plot_batch(images, targets, names, save_dir / f"val_batch{batch_index}_labels.jpg")
    plot_batch(images, predictions, names, save_dir / f"val_batch{batch_index}_pred.jpg")


def collect(model: nn.Module, dataloader: Any, nc: int, *, conf_thres: float, iou_thres: float, max_det: int,
            compute_loss: Optional[Callable] = None, augment: bool = False, half: bool = False,
            single_cls: bool = False, merge: str = "nms", desc: str = "val",
            plot_dir: Optional[Path] = None, names: Optional[list[str]] = None, cbbl_fusion: bool = False) -> Collected:
    """Run the detector over the loader: NMS'd detections and GTs per image, losses and timings.

    With ``plot_dir``, the first NUM_PLOTTED_BATCHES batches are drawn there (labels and predictions).
    """
    device = _device_of(model)
    nms_args = {"conf_thres": conf_thres, "iou_thres": iou_thres, "multi_label": True, "agnostic": single_cls,
                "max_det": max_det, "cbbl_fusion": cbbl_fusion}
    rows, loss_sums, num_batches = _Rows(ConfusionMatrix(1 if single_cls else nc)), {}, 0
    timings = np.zeros(3)
    for batch_index, (images_uint8, targets, paths, shapes) in enumerate(tqdm(dataloader, desc=desc, leave=False)):
        start = time_sync()
        images = images_uint8.to(device, non_blocking=True).float() / 255  # (B, 3, H, W) in [0, 1]
        net_hw = tuple(images.shape[2:])
        preprocess = time_sync() - start
        with torch.no_grad():
            with autocast(device, half):  # fp16 on CUDA, bf16 on a native-bf16 CPU (head and decode float32)
                dets, raw, inference, nms_time = _detect(model, images, nc, nms_args, augment, merge)
            if compute_loss is not None and raw is not None:  # float32, as YOLOv5's val computes it
                for name, value in _loss_terms(compute_loss(raw, targets.to(device))).items():
                    loss_sums[name] = loss_sums.get(name, 0.0) + value
        timings += (preprocess, inference, nms_time)
        if plot_dir is not None and batch_index < NUM_PLOTTED_BATCHES:
            plot_val_batch(images_uint8, targets, dets, names or [str(c) for c in range(nc)], plot_dir, batch_index)
        for index, det in enumerate(dets):
            shape = shapes[index] if shapes is not None else None
            det_np, gt_np = _original_dets(det, net_hw, shape), _original_gt(targets.cpu(), index, net_hw, shape)
            rows.add(det_np, gt_np, str(paths[index]), tuple(shape[0]) if shape is not None else net_hw, single_cls)
        num_batches += 1
    losses = {k: v / max(num_batches, 1) for k, v in loss_sums.items()} if compute_loss is not None else None
    return rows.collected(losses, timings)


def collect_sliced(model: nn.Module, dataset: Any, nc: int, slicing: Slicing, *, conf_thres: float,
                   iou_thres: float, max_det: int, augment: bool = False, half: bool = False,
                   single_cls: bool = False, merge: str = "nms", batch_size: int = 8, desc: str = "val",
                   cbbl_fusion: bool = False) -> Collected:
    """:func:`collect` for ``val.py --slice``: each frame of ``dataset`` is read at full size and detected by
    detect.py's sliced inference (utils/infer/slicing.py: tiles at ``slicing.imgsz``, cut boxes dropped,
    class-aware merge), against its labels in frame pixels. Timings: preprocess = reading the frame,
    inference = the whole sliced detection (tile NMS and merging included), nms = 0.
    """
    device, stride = _device_of(model), _stride_of(model)
    nms_args = {"conf_thres": conf_thres, "iou_thres": iou_thres, "multi_label": True, "agnostic": single_cls,
                "max_det": max_det, "cbbl_fusion": cbbl_fusion}

    def detect_tiles(crops: list[np.ndarray]) -> list[torch.Tensor]:
        batch, undo = network_batch(crops, (slicing.imgsz, slicing.imgsz), stride)
        with torch.no_grad(), autocast(device, half):
            dets = _detect(model, batch.to(device), nc, nms_args, augment, merge)[0]
        dets = [det.detach().float().cpu() for det in dets]
        for det, (boxed_shape, ratio_pad), crop in zip(dets, undo, crops):
            det[:, :4] = scale_boxes_to_original(det[:, :4], boxed_shape, crop.shape[:2], ratio_pad)
        return dets

    rows, timings = _Rows(ConfusionMatrix(1 if single_cls else nc)), np.zeros(3)
    for index in tqdm(range(len(dataset.im_files)), desc=f"{desc} (sliced)", leave=False):
        start = time_sync()
        image = read_image(dataset.im_files[index])
        if image is None:
            raise FileNotFoundError(f"image {dataset.im_files[index]} could not be read (changed since the scan?)")
        read = time_sync()
        det = sliced_detect(detect_tiles, image, slicing.tile_hw, slicing.overlap, iou_thres, single_cls,
                            slicing.full_pass, max_det, batch_size)
        timings += (read - start, time_sync() - read, 0.0)
        height, width = image.shape[:2]
        labels = dataset.labels[index].astype(np.float64)
        gt_np = np.c_[labels[:, :1], cxcywhn_to_xyxy(labels[:, 1:5], width, height)]
        rows.add(det.double().numpy(), gt_np, str(dataset.im_files[index]), (height, width), single_cls)
    return rows.collected(None, timings)


@dataclass
class _Rows:
    """Per-image detections and ground truths in original pixels, gathered into a :class:`Collected`."""

    confusion: ConfusionMatrix
    det_rows: list[np.ndarray] = field(default_factory=list)  # [image, x1, y1, x2, y2, conf, cls, extra..]
    gt_rows: list[np.ndarray] = field(default_factory=list)  # [image, cls, x1, y1, x2, y2]
    paths: list[str] = field(default_factory=list)
    shapes: list[tuple[int, int]] = field(default_factory=list)

    def add(self, det_np: np.ndarray, gt_np: np.ndarray, path: str, shape_hw: tuple[int, int],
            single_cls: bool) -> None:
        """One image: (n, 6 + E) detections and (m, 5) ``[class, x1, y1, x2, y2]`` ground truths."""
        if single_cls:
            det_np[:, 5], gt_np[:, 0] = 0, 0
        self.confusion.update(det_np[:, :4], det_np[:, 4], det_np[:, 5].astype(int), gt_np[:, 1:], gt_np[:, 0])
        self.det_rows.append(np.c_[np.full(len(det_np), len(self.paths)), det_np])
        self.gt_rows.append(np.c_[np.full(len(gt_np), len(self.paths)), gt_np])
        self.paths.append(path)
        self.shapes.append(shape_hw)

    def collected(self, losses: Optional[dict[str, float]], timings: np.ndarray) -> Collected:
        det_all = np.concatenate(self.det_rows) if self.det_rows else np.zeros((0, 7))
        gt_all = np.concatenate(self.gt_rows) if self.gt_rows else np.zeros((0, 6))
        dets = BoxSet(det_all[:, 0], det_all[:, 1:5], det_all[:, 6], score=det_all[:, 5])
        gts = BoxSet(gt_all[:, 0], gt_all[:, 2:6], gt_all[:, 1])
        speed = dict(zip(("preprocess", "inference", "nms"), (timings * 1e3 / max(len(self.paths), 1)).tolist()))
        return Collected(dets, det_all[:, 7:], gts, self.paths, self.shapes, self.confusion, losses, speed)


def validate(model: nn.Module, dataloader: Any, names: list[str], *, conf_thres: float = 0.001,
             iou_thres: float = 0.6, max_det: Optional[int] = None, compute_loss: Optional[Callable] = None,
             save_dir: Optional[Path] = None, plots: bool = False, verbose: bool = False,
             protocol: str = DEFAULT_PROTOCOL,
             augment: bool = False, half: bool = False, single_cls: bool = False, save_txt: bool = False,
             save_conf: bool = False, save_json: bool = False, save_hybrid: bool = False,
             merge: str = "nms", weights_stem: str = "", slicing: Optional[Slicing] = None,
             batch_size: int = 8, cbbl_fusion: bool = False) -> ValResults:
    """Validate a model (eval-mode ``Model`` or ``DetectBackend``) on a loader of the data contract.

    Args:
        names: class names (length nc); ``protocol``: a key of PROTOCOLS (utils.eval.scoring).
        max_det: detections kept per image after NMS (None: the protocol's).
        compute_loss: ``ComputeLoss`` to also report the mean val losses (needs a ``Model``).
        save_dir: where results.json and, when asked, plots, txt and JSON predictions go.
        merge: how an ensemble backend's members are merged: ``nms`` (one NMS over all) or ``wbf``.
        weights_stem: names the JSON predictions ``<weights_stem>_predictions.json``, as YOLOv5 does.
        slicing: detect on tiles of each full-size frame of ``dataloader.dataset`` (:func:`collect_sliced`,
            ``batch_size`` tiles per forward pass) instead of on the loader's letterboxed batches.
        cbbl_fusion: the model's predictions end in per-side variance columns (DetectBackend.decode_side_variance):
            NMS refines each kept box by variance voting (utils.nms.variance_voting).
    Returns:
        ValResults (also logged as a table).
    """
    scorer = protocol_named(protocol)
    if merge not in MERGE_MODES:
        raise ValueError(f"unknown ensemble merge {merge!r}; expected one of {MERGE_MODES}")
    nc = 1 if single_cls else len(names)
    detection = {"conf_thres": conf_thres, "iou_thres": iou_thres, "augment": augment, "half": half,
                 "single_cls": single_cls, "merge": merge, "cbbl_fusion": cbbl_fusion,
                 "max_det": scorer.max_det if max_det is None else int(max_det)}
    plot_dir = Path(save_dir) if plots and save_dir is not None else None
    if plot_dir is not None:
        plot_dir.mkdir(parents=True, exist_ok=True)
    collected = _collect_in_eval_mode(model, dataloader, list(names), detection, slicing=slicing,
                                      batch_size=batch_size, compute_loss=compute_loss, plot_dir=plot_dir)
    class_names = [SINGLE_CLASS_NAME] if single_cls else list(names)
    scored, curves = scorer.score(collected, class_names)
    results = ValResults(**scored, losses=collected.losses, speed_ms=collected.speed_ms, protocol=protocol)
    per_class = (verbose or (nc < 50 and compute_loss is None)) and nc > 1  # YOLOv5: not per epoch of training
    log_results(results, len(collected.image_paths), len(collected.gts), per_class)
    if save_dir is not None:  # after the table: a full disk cannot cost the metrics already computed
        _write_results(results, collected, curves, class_names, Path(save_dir), plots=plots,
                       save_txt=save_txt, save_conf=save_conf, save_json=save_json, save_hybrid=save_hybrid,
                       weights_stem=weights_stem)
    return results


def _collect_in_eval_mode(model: nn.Module, dataloader: Any, names: list[str], detection: dict[str, Any], *,
                          slicing: Optional[Slicing], batch_size: int, compute_loss: Optional[Callable],
                          plot_dir: Optional[Path]) -> Collected:
    """:func:`collect` (or :func:`collect_sliced`) with the model in eval mode; its training mode comes back after,
    also when collecting fails (train.py validates the model it goes on training)."""
    was_training = model.training
    model.eval()
    try:
        if slicing is not None:
            return collect_sliced(model, dataloader.dataset, len(names), slicing, batch_size=batch_size, **detection)
        return collect(model, dataloader, len(names), compute_loss=compute_loss, plot_dir=plot_dir, names=names,
                       **detection)
    finally:
        model.train(was_training)


def _write_results(results: ValResults, collected: Collected, curves: Any, class_names: list[str], save_dir: Path,
                   *, plots: bool, weights_stem: str, **outputs: bool) -> None:
    """Plots, the requested txt/JSON outputs (``outputs``: save_txt, save_conf, ...) and results.json."""
    if plots:
        plot_metrics(curves, collected.confusion, class_names, save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    if results.uncertainty and "reliability" in results.uncertainty:
        table = results.uncertainty["reliability"]
        atomic_write_text(save_dir / "reliability.csv", reliability_csv(table))
        if plots:
            plot_reliability(table, results.uncertainty["calibration_error"], save_dir / "reliability.png")
    save_outputs(collected, class_names, save_dir, protocol=results.protocol, plots=plots, weights_stem=weights_stem,
                 **outputs)
    atomic_write_text(save_dir / "results.json", json.dumps(results.as_dict(), indent=2))


def log_results(results: ValResults, num_images: int, num_instances: int, per_class: bool) -> None:
    """YOLOv5's table (its column widths), titled with the protocol: totals, then one row per class with GTs."""
    logger.info("%s", PROTOCOLS[results.protocol].title)
    header = f"{'Class':>22}{'Images':>11}{'Instances':>11}{'P':>11}{'R':>11}{'mAP50':>11}{'mAP50-95':>11}"
    logger.info(header)
    logger.info("%22s%11i%11i%11.3g%11.3g%11.3g%11.3g", "all", num_images, num_instances, results.precision,
                results.recall, results.map50, results.map50_95)
    for row in results.per_class if per_class else []:
        logger.info("%22s%11i%11i%11.3g%11.3g%11.3g%11.3g", row["name"], row["images"], row["instances"], row["P"],
                    row["R"], row["AP50"], row["AP"])
    if results.protocol == "coco":
        logger.info("AP75 %.3f  AP_small %.3f  AP_medium %.3f  AP_large %.3f", results.map75, results.ap_small,
                    results.ap_medium, results.ap_large)
    if results.extra:
        logger.info("  ".join(f"{k} {v:.3f}" for k, v in results.extra.items()))
    if results.uncertainty:
        found = results.uncertainty
        logger.info("localization uncertainty (nats): TP %.3f  FP %.3f; Spearman with 1 - IoU of the TPs %.3f%s",
                    found["tp"], found["fp"], found["spearman_vs_1-iou"],
                    f"; as expected IoU (out of fold), calibration error {found['calibration_error']:.3f}, Spearman "
                    f"with the IoU {found['spearman_calibrated']:.3f}" if "calibration_error" in found else "")
    speed = results.speed_ms
    if speed:
        logger.info("Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image", speed["preprocess"],
                    speed["inference"], speed["nms"])
