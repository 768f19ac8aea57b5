"""Turn collected detections and ground truths into ValResults figures under one protocol.

Used by utils/eval/validator.py (a model over a loader) and by val.py's ``--pred/--gt`` mode (saved files).
``yolov5`` (the default) is YOLOv5 v7.0's val.py metric; ``coco`` and ``visdrone`` share one greedy matching
(utils.eval.metrics.greedy_match). P and R are always YOLOv5's operating point on the protocol's IoU-.5 matches.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np

from utils.data.visdrone import annotation_path
from utils.eval import coco as coco_eval
from utils.eval import plots as metric_plots
from utils.eval import visdrone as visdrone_eval
from utils.eval import yolov5 as yolov5_eval
from utils.eval.metrics import BoxSet, ConfusionMatrix, PRCurves, pr_curves
from utils.eval.reliability import uncertainty_summary
from utils.log import log_once

logger = logging.getLogger(__name__)


def _class_rows(names: list[str], gts: BoxSet, counted_gt: np.ndarray, curves: PRCurves, ap50: np.ndarray,
                ap: np.ndarray, images: Optional[int] = None) -> list[dict[str, Any]]:
    """Per-class table rows for classes with counted GTs (class ids index ``names``, ap rows follow them).

    ``images``: the Images column of every row (YOLOv5 v7.0 prints all images seen); None = the images
    holding the class.
    """
    rows = []
    for row, cls in enumerate(curves.classes):
        mask = counted_gt & (gts.category == cls)
        seen = len(np.unique(gts.image[mask])) if images is None else images
        rows.append({"class": int(cls), "name": names[cls] if cls < len(names) else str(cls),
                     "images": int(seen), "instances": int(mask.sum()),
                     "P": float(curves.precision[row]), "R": float(curves.recall[row]),
                     "AP50": float(ap50[cls]), "AP": float(ap[cls])})
    return rows


def _uncertainty(dets: BoxSet, gts: BoxSet, state50: np.ndarray, det_extra: Optional[np.ndarray]
                 ) -> Optional[dict[str, Any]]:
    """The localization uncertainty (first extra column) read against the boxes' real IoU: utils/eval/reliability.py;
    None without one."""
    return None if det_extra is None or det_extra.shape[1] == 0 else uncertainty_summary(dets, gts, state50,
                                                                                       det_extra[:, 0])


def _operating_point(dets: BoxSet, state50: np.ndarray, gt_count: dict[int, int]) -> PRCurves:
    counted = state50 >= 0
    return pr_curves(state50[counted] == 1, dets.score[counted], dets.category[counted], gt_count)


def score_yolov5(dets: BoxSet, gts: BoxSet, names: list[str], image_ids: np.ndarray,
                 det_extra: Optional[np.ndarray] = None) -> tuple[dict[str, Any], PRCurves]:
    """YOLOv5 v7.0's val.py figures -> ValResults fields and the PR curves; YOLOv5 has no area ranges, so
    AP_small/medium/large are COCO's (pycocotools rules), which keeps results.csv's AP_small column filled."""
    result = yolov5_eval.evaluate(dets, gts, image_ids)
    area_stats = coco_eval.evaluate(gts, dets, image_ids, np.arange(len(names))).stats
    curves, counted_gt = result.curves, ~gts.ignore
    state50 = result.correct[:, 0].astype(np.int8)
    class_ap = np.zeros((max(len(names), int(curves.classes.max(initial=-1)) + 1), result.ap.shape[1]))
    class_ap[curves.classes] = result.ap  # (nc, T): _class_rows indexes by class id
    rows = _class_rows(names, gts, counted_gt, curves, class_ap[:, 0], class_ap.mean(1), len(image_ids))
    fields = {"precision": float(curves.precision.mean()) if result.has_tp else 0.0,
              "recall": float(curves.recall.mean()) if result.has_tp else 0.0,
              "map50": result.map50, "map50_95": result.map50_95, "map75": result.map75,
              "ap_small": area_stats["APs"], "ap_medium": area_stats["APm"], "ap_large": area_stats["APl"],
              "per_class": rows if result.has_tp else [],
              "uncertainty": _uncertainty(dets, gts, state50, det_extra)}
    return fields, curves


def score_coco(dets: BoxSet, gts: BoxSet, names: list[str], image_ids: np.ndarray,
               det_extra: Optional[np.ndarray] = None) -> tuple[dict[str, Any], PRCurves]:
    """COCO protocol figures (class ids 0..nc-1 = category ids) -> ValResults fields and the PR curves."""
    result = coco_eval.evaluate(gts, dets, image_ids, np.arange(len(names)))
    state50 = np.where(result.det_evaluated, result.det_state[0], -1)
    counted_gt = ~gts.ignore
    gt_count = {int(c): int((counted_gt & (gts.category == c)).sum()) for c in range(len(names))}
    curves = _operating_point(dets, state50, gt_count)
    stats = result.stats
    fields = {"precision": float(curves.precision.mean()) if len(curves.classes) else -1.0,
              "recall": float(curves.recall.mean()) if len(curves.classes) else -1.0,
              "map50": stats["AP50"], "map50_95": stats["AP"], "map75": stats["AP75"], "ap_small": stats["APs"],
              "ap_medium": stats["APm"], "ap_large": stats["APl"],
              "per_class": _class_rows(names, gts, counted_gt, curves, result.class_ap(0), result.class_ap()),
              "uncertainty": _uncertainty(dets, gts, state50, det_extra),
              "extra": {k: v for k, v in stats.items() if k.startswith("AR")}}
    return fields, curves


def score_visdrone(dets: BoxSet, gts: BoxSet, names: list[str], image_ids: np.ndarray,
                   image_sizes: dict[int, tuple[int, int]], det_extra: Optional[np.ndarray] = None
                   ) -> tuple[dict[str, Any], PRCurves]:
    """VisDrone protocol figures; ``gts``/``dets`` use toolkit categories (1..10; 0 ignored region, 11 others)."""
    result = visdrone_eval.evaluate(gts, dets, image_ids, image_sizes)
    state50 = result.det_state[0]
    zero_based = BoxSet(dets.image, dets.boxes, dets.category - 1, score=dets.score)
    curves = _operating_point(zero_based, state50, {c - 1: n for c, n in result.gt_count.items()})
    counted_gt = np.isin(gts.category, visdrone_eval.CLASSES)
    gts_zero = BoxSet(gts.image, gts.boxes, gts.category - 1, ignore=gts.ignore)
    stats = result.stats
    fields = {"precision": float(curves.precision.mean()) if len(curves.classes) else -1.0,
              "recall": float(curves.recall.mean()) if len(curves.classes) else -1.0,
              "map50": stats["AP50"], "map50_95": stats["AP"], "map75": stats["AP75"],
              "per_class": _class_rows(names, gts_zero, counted_gt, curves, result.ap[:, 0], result.ap.mean(1)),
              "uncertainty": _uncertainty(dets, gts, state50, det_extra),
              "extra": {k: v for k, v in stats.items() if k.startswith("AR")}}
    return fields, curves


def visdrone_ground_truth(gts: BoxSet, image_paths: list[str]) -> BoxSet:
    """Official annotations (with ignored regions and score-0 boxes) for the images when all are found
    beside them (``<split>/annotations/<stem>.txt``), else the loader's labels as categories 1..10."""
    files = [annotation_path(p) for p in image_paths]
    if image_paths and all(f.is_file() for f in files):
        return visdrone_eval.concat_boxsets([visdrone_eval.annotation_boxset(f, i) for i, f in enumerate(files)])
    log_once(logger, logging.WARNING, "VisDrone protocol without official annotation files beside the images "
             "(e.g. %s): scoring the YOLO labels, with no ignored regions", files[0] if files else "none")
    return BoxSet(gts.image, gts.boxes, gts.category + 1, ignore=gts.ignore)


def score_detections(collected: Any, names: list[str], protocol: str) -> tuple[dict[str, Any], PRCurves]:
    """ValResults fields of a validator ``Collected`` and the curves :func:`plot_metrics` draws."""
    image_ids = np.arange(len(collected.image_paths))
    if protocol == "visdrone":
        dets = BoxSet(collected.dets.image, collected.dets.boxes, collected.dets.category + 1,
                      score=collected.dets.score)
        gts = visdrone_ground_truth(collected.gts, collected.image_paths)
        sizes = {i: tuple(int(v) for v in hw) for i, hw in enumerate(collected.image_shapes)}
        fields, curves = score_visdrone(dets, gts, names, image_ids, sizes, collected.det_extra)
    elif protocol == "coco":
        fields, curves = score_coco(collected.dets, collected.gts, names, image_ids, collected.det_extra)
    else:
        fields, curves = score_yolov5(collected.dets, collected.gts, names, image_ids, collected.det_extra)
    return fields, curves


def plot_metrics(curves: PRCurves, confusion: Optional[ConfusionMatrix], names: list[str], save_dir: Path) -> None:
    """PR, F1, P and R curves and the confusion matrix as PNGs in ``save_dir``."""

    save_dir.mkdir(parents=True, exist_ok=True)
    metric_plots.plot_curves(curves, names, save_dir)
    if confusion is not None:
        metric_plots.plot_confusion_matrix(confusion, names, save_dir / "confusion_matrix.png")
