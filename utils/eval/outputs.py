"""Files a validation run writes besides results.json: txt labels and COCO JSON predictions.

``--save-txt`` writes one file per image in ``labels/``: YOLO txt (``class cx cy w h [conf]``
normalised to the original image, as YOLOv5 v7.0's val.py writes it) under the yolov5 and COCO protocols,
the VisDrone toolkit's result format (``x,y,w,h,score,category,-1,-1``) under the VisDrone protocol.
``--save-json`` writes ``<weights stem>_predictions.json`` (COCO results, named as YOLOv5 names it) with
the matching ``ground_truth.json`` and, when a reference evaluator imports, logs its figures beside ours. Image
ids are YOLOv5's ``int(stem)`` when every image stem is a distinct number (COCO's files, so the
predictions score against the official annotations), else the loader order.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from utils.data.yolo_txt import prediction_txt
from utils.eval import coco as coco_eval
from utils.eval import visdrone as visdrone_eval
from utils.eval.metrics import BoxSet
from utils.files import OutputNames, atomic_write_text

logger = logging.getLogger(__name__)


def write_txt(collected: Any, save_dir: Path, protocol: str, save_conf: bool, save_hybrid: bool) -> Path:
    """One txt per image in ``save_dir/labels``; ``save_hybrid`` adds the GT boxes at confidence 1."""
    labels_dir = save_dir / "labels"
    labels_dir.mkdir(parents=True, exist_ok=True)
    if save_hybrid:
        logger.warning("--save-hybrid: txt files hold predictions plus ground truth (for auto-labelling); "
                       "the metrics above are unaffected")
    names_out = OutputNames()  # d1/img.jpg and d2/img.jpg get distinct label files
    for index, (path, (height, width)) in enumerate(zip(collected.image_paths, collected.image_shapes)):
        dets = collected.dets.subset(collected.dets.image == index)
        if save_hybrid:
            gts = collected.gts.subset(collected.gts.image == index)
            dets = visdrone_eval.concat_boxsets([dets, BoxSet(gts.image, gts.boxes, gts.category,
                                                              score=np.ones(len(gts)))])
        if protocol == "visdrone":
            lines = visdrone_eval.result_lines(dets.boxes, dets.score, dets.category + 1)
            text = "".join(f"{line}\n" for line in lines)
        else:
            text = prediction_txt(dets.boxes, dets.category, (height, width), [dets.score] if save_conf else [])
        atomic_write_text(labels_dir / f"{names_out.stem(path)}.txt", text)
    logger.info("%d label files saved to %s", len(collected.image_paths), labels_dir)
    return labels_dir


def coco_image_ids(image_paths: list[str]) -> np.ndarray:
    """(I,) COCO image ids: ``int(stem)`` as YOLOv5 writes them when all stems are distinct numbers, else 0..I-1."""
    stems = [Path(path).stem for path in image_paths]
    if stems and all(stem.isdigit() for stem in stems) and len({int(stem) for stem in stems}) == len(stems):
        return np.array([int(stem) for stem in stems], np.int64)
    return np.arange(len(stems), dtype=np.int64)


def _with_image_ids(boxes: BoxSet, image_ids: np.ndarray) -> BoxSet:
    return BoxSet(image_ids[boxes.image], boxes.boxes, boxes.category, boxes.score, boxes.area, boxes.ignore)


def write_json(collected: Any, names: list[str], save_dir: Path, weights_stem: str = "") -> tuple[Path, Path]:
    """``<weights_stem>_predictions.json`` + ground_truth.json (COCO, original pixels, see coco_image_ids)."""
    image_ids = coco_image_ids(collected.image_paths)
    images = [{"id": int(i), "file_name": Path(p).name, "height": int(hw[0]), "width": int(hw[1])}
              for i, p, hw in zip(image_ids, collected.image_paths, collected.image_shapes)]
    gt_path, pred_path = save_dir / "ground_truth.json", save_dir / f"{weights_stem}_predictions.json"
    atomic_write_text(gt_path, json.dumps(coco_eval.coco_gt_json(_with_image_ids(collected.gts, image_ids), images,
                                                                 dict(enumerate(names)))))
    atomic_write_text(pred_path, json.dumps(coco_eval.coco_detections_json(_with_image_ids(collected.dets,
                                                                                             image_ids))))
    logger.info("COCO predictions saved to %s (ground truth: %s)", pred_path, gt_path)
    return gt_path, pred_path


def cross_check(gt_path: Path, pred_path: Path) -> dict[str, dict[str, float]] | None:
    """Our COCO figures and the reference evaluator's on the same files, logged side by side."""
    reference = coco_eval.reference_stats(gt_path, pred_path)
    if reference is None:
        return None
    gt = coco_eval.load_coco_gt(gt_path)
    ours = coco_eval.evaluate(gt.boxes, coco_eval.load_coco_detections(pred_path, gt.image_ids), gt.image_ids,
                              gt.category_ids).stats
    logger.info("%8s %10s %10s", "metric", "ours", "reference")
    for name, value in ours.items():
        logger.info("%8s %10.4f %10.4f", name, value, reference.get(name, float("nan")))
    return {"ours": ours, "reference": reference}


def save_outputs(collected: Any, names: list[str], save_dir: Path, *, protocol: str, save_txt: bool = False,
                 save_conf: bool = False, save_json: bool = False, save_hybrid: bool = False,
                 plots: bool = False, weights_stem: str = "") -> None:
    """Write the txt/JSON files asked for (plots are written while scoring)."""
    if save_txt or save_hybrid:
        write_txt(collected, save_dir, protocol, save_conf, save_hybrid)
    if save_json:
        cross_check(*write_json(collected, names, save_dir, weights_stem))
