"""COCO bbox evaluation, our own code following the rules of pycocotools' ``COCOeval`` exactly.

Rules (pycocotools ``cocoeval.py``): every category of the GT file is evaluated on every GT image;
per (image, category) the detections are sorted by score and cut to ``max(max_dets)``; matching is
greedy by score (utils.eval.metrics.greedy_match) with crowd GTs (``iscrowd``) matched by
intersection-over-detection-area, any number of times, and never counted; per area range a GT outside
the range is ignored, and so is an unmatched detection outside it; GT areas are the annotation's
``area`` field (w * h for detections); precision is interpolated at 101 recall points; a category
with no counted GT has precision -1 and is left out of the means.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.boxes import ltwh_to_xyxy, xyxy_to_ltwh
from utils.eval.metrics import (
    IOU_THRESHOLDS,
    RECALL_POINTS,
    BoxSet,
    coco101_precision,
    cumulative_pr,
    greedy_match,
    overlap_pairs,
    rank_in_group,
)

logger = logging.getLogger(__name__)

# COCO's area ranges in original-image pixels^2 (bounds inclusive, as in pycocotools).
AREA_RANGES = {"all": (0.0, 1e10), "small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, 1e10)}
MAX_DETS = (1, 10, 100)


@dataclass
class CocoResult:
    """Accumulated COCO figures; -1 marks an undefined value (no counted GT)."""

    precision: np.ndarray  # (T, 101, K, A, M)
    recall: np.ndarray  # (T, K, A, M)
    category_ids: np.ndarray  # (K,)
    max_dets: tuple[int, ...]
    stats: dict[str, float]  # AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl
    det_state: np.ndarray  # (T, D) int8 state of each input detection, area 'all' (1 TP, 0 FP, -1 ignored)
    det_evaluated: np.ndarray  # (D,) bool, False for detections cut by max_dets or of an unknown category

    def class_ap(self, iou_index: int | None = None) -> np.ndarray:
        """(K,) AP per category at maxDets = max, area 'all' (IoU .50:.95, or one threshold index); -1 undefined."""
        rows = slice(None) if iou_index is None else slice(iou_index, iou_index + 1)
        prec = self.precision[rows, :, :, 0, -1]  # (T', 101, K)
        return _masked_mean(prec.transpose(2, 0, 1).reshape(len(self.category_ids), -1), axis=1)


def _masked_mean(values: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """Mean of entries > -1, -1 where there are none (pycocotools ``summarize``)."""
    valid = values > -1
    total = np.where(valid, values, 0).sum(axis=axis)
    count = valid.sum(axis=axis)
    return np.where(count > 0, total / np.maximum(count, 1), -1.0)


def evaluate(gts: BoxSet, dets: BoxSet, image_ids: np.ndarray, category_ids: np.ndarray,
             max_dets: tuple[int, ...] = MAX_DETS) -> CocoResult:
    """COCO bbox evaluation of detections against GTs (``gts.ignore`` = iscrowd).

    Args:
        gts, dets: boxes in original-image pixels; dets need scores.
        image_ids: (I,) the evaluated image ids (images without GT count too).
        category_ids: (K,) evaluated categories (pycocotools: every category of the GT file).
        max_dets: per-image-and-category detection limits; the last one gives AP and AR figures.
    """
    image_ids, category_ids = np.unique(image_ids), np.unique(category_ids)
    unknown = np.setdiff1d(dets.image, image_ids)
    if len(unknown):
        raise ValueError(f"detections refer to image ids not in the ground truth: {unknown[:10].tolist()}")
    img_index = np.searchsorted(image_ids, dets.image)
    group = img_index * len(category_ids) + np.searchsorted(category_ids, dets.category)
    rank = rank_in_group(group, dets.score)
    evaluated = np.isin(dets.category, category_ids) & (rank < max(max_dets))
    gts = gts.subset(np.isin(gts.image, image_ids) & np.isin(gts.category, category_ids))
    kept = dets.subset(evaluated)
    pair_det, pair_gt, pair_overlap = overlap_pairs(kept, gts, gts.ignore, float(IOU_THRESHOLDS.min()))
    ranges = np.array(list(AREA_RANGES.values()))  # (A, 2)
    gt_out = (gts.area[None] < ranges[:, :1]) | (gts.area[None] > ranges[:, 1:])  # (A, G)
    state, _ = greedy_match(rank[evaluated], pair_det, pair_gt, pair_overlap, gts.ignore[None] | gt_out, gts.ignore)
    det_out = (kept.area[None] < ranges[:, :1]) | (kept.area[None] > ranges[:, 1:])  # (A, D')
    state[(state == 0) & det_out[:, None, :]] = -1  # unmatched detections outside the range are ignored
    precision, recall = _accumulate(state, kept, img_index[evaluated], rank[evaluated], gts, gt_out,
                                    category_ids, max_dets)
    det_state = np.zeros((len(IOU_THRESHOLDS), len(dets)), np.int8)
    det_state[:, evaluated] = state[0]
    return CocoResult(precision, recall, category_ids, tuple(max_dets), _summarize(precision, recall, max_dets),
                      det_state, evaluated)


def _accumulate(state: np.ndarray, dets: BoxSet, img_index: np.ndarray, rank: np.ndarray, gts: BoxSet,
                gt_out: np.ndarray, category_ids: np.ndarray,
                max_dets: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools ``accumulate``: (A, T, D) states -> precision (T, R, K, A, M), recall (T, K, A, M)."""
    num_t, num_k, num_a, num_m = len(IOU_THRESHOLDS), len(category_ids), state.shape[0], len(max_dets)
    precision = -np.ones((num_t, len(RECALL_POINTS), num_k, num_a, num_m))
    recall = -np.ones((num_t, num_k, num_a, num_m))
    gt_counted = ~(gts.ignore[None] | gt_out)  # (A, G)
    for k, cat in enumerate(category_ids):
        in_cat = np.flatnonzero(dets.category == cat)
        in_cat = in_cat[np.lexsort((rank[in_cat], img_index[in_cat], -dets.score[in_cat]))]  # pycocotools order
        for a in range(num_a):
            num_gt = int(gt_counted[a, gts.category == cat].sum())
            if num_gt == 0:
                continue
            for m, limit in enumerate(max_dets):
                chosen = in_cat[rank[in_cat] < limit]
                cat_state = state[a][:, chosen]  # (T, n)
                rc, pr = cumulative_pr(cat_state == 1, cat_state == 0, num_gt)
                recall[:, k, a, m] = rc[:, -1] if rc.shape[1] else 0.0
                precision[:, :, k, a, m] = coco101_precision(rc, pr)
    return precision, recall


def _summarize(precision: np.ndarray, recall: np.ndarray, max_dets: tuple[int, ...]) -> dict[str, float]:
    """The 12 standard COCO figures (fractions in [0, 1], -1 when undefined)."""
    t50, t75 = int(np.argmin(abs(IOU_THRESHOLDS - 0.5))), int(np.argmin(abs(IOU_THRESHOLDS - 0.75)))
    areas = {name: i for i, name in enumerate(AREA_RANGES)}
    stats = {"AP": _masked_mean(precision[..., 0, -1]), "AP50": _masked_mean(precision[t50, ..., 0, -1]),
             "AP75": _masked_mean(precision[t75, ..., 0, -1])}
    for suffix, area in (("s", "small"), ("m", "medium"), ("l", "large")):
        stats[f"AP{suffix}"] = _masked_mean(precision[..., areas[area], -1])
    for m, limit in enumerate(max_dets):
        stats[f"AR{limit}"] = _masked_mean(recall[..., 0, m])
    for suffix, area in (("s", "small"), ("m", "medium"), ("l", "large")):
        stats[f"AR{suffix}"] = _masked_mean(recall[..., areas[area], -1])
    return {name: float(value) for name, value in stats.items()}


@dataclass
class CocoGroundTruth:
    """A COCO GT file in array form."""

    boxes: BoxSet  # ignore = iscrowd, area = the annotation's area field (w * h when absent)
    image_ids: np.ndarray  # (I,)
    category_ids: np.ndarray  # (K,)
    category_names: dict[int, str]
    file_names: dict[int, str]


def _read_json(path: str | Path) -> object:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO JSON file {path} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from err
    except RecursionError as err:  # a hostile file nested thousands deep: COCO files are 4 levels deep
        raise ValueError(f"{path}: JSON nested too deeply to be a COCO file") from err


def _xywh_boxes(entries: list, path: Path, what: str) -> np.ndarray:
    """(N, 4) xyxy from COCO ``bbox`` [x, y, w, h] entries; names the file and entry on a bad box."""
    boxes = np.zeros((len(entries), 4))
    for index, entry in enumerate(entries):
        bbox = entry.get("bbox") if isinstance(entry, dict) else None
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)
                and bbox[2] >= 0 and bbox[3] >= 0):
            raise ValueError(f"{path}: {what} {index} has bbox {bbox!r}; expected [x, y, w, h] with w, h >= 0")
        boxes[index] = bbox
    return ltwh_to_xyxy(boxes)


def _require_keys(entries: list, keys: tuple[str, ...], path: Path, what: str) -> None:
    for index, entry in enumerate(entries):
        missing = [key for key in keys if not isinstance(entry, dict) or key not in entry]
        if missing:
            raise ValueError(f"{path}: {what} {index} lacks {missing} (entry: {str(entry)[:120]})")


def load_coco_gt(path: str | Path) -> CocoGroundTruth:
    """Read a COCO GT JSON (images, annotations, categories) with errors naming the file and entry."""
    path, data = Path(path), _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or "annotations" not in data:
        raise ValueError(f"{path}: a COCO ground-truth file needs 'images' and 'annotations' lists")
    images, anns = data["images"], data["annotations"]
    _require_keys(images, ("id",), path, "image")
    _require_keys(anns, ("image_id", "category_id", "bbox"), path, "annotation")
    image_ids = np.array([im["id"] for im in images], np.int64)
    unknown = sorted({a["image_id"] for a in anns} - set(image_ids.tolist()))
    if unknown:
        raise ValueError(f"{path}: annotations refer to image ids {unknown[:10]} missing from 'images'")
    boxes = _xywh_boxes(anns, path, "annotation")
    area = [a.get("area", (b[2] - b[0]) * (b[3] - b[1])) for a, b in zip(anns, boxes)]
    categories = data.get("categories") or [{"id": c} for c in sorted({a["category_id"] for a in anns})]
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
    gts = BoxSet([a["image_id"] for a in anns], boxes, [a["category_id"] for a in anns], area=area,
                 ignore=[bool(a.get("iscrowd", 0)) for a in anns])
    return CocoGroundTruth(gts, np.unique(image_ids), np.array(sorted(names), np.int64), names,
                           {int(im["id"]): str(im.get("file_name", im["id"])) for im in images})


def load_coco_detections(path: str | Path, image_ids: np.ndarray) -> BoxSet:
    """Read COCO result JSON (a list of {image_id, category_id, bbox, score}); unknown image ids are an error."""
    path, data = Path(path), _read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: COCO results must be a JSON list of detections, got {type(data).__name__}")
    _require_keys(data, ("image_id", "category_id", "bbox", "score"), path, "detection")
    dets = BoxSet([d["image_id"] for d in data], _xywh_boxes(data, path, "detection"),
                  [d["category_id"] for d in data], score=[d["score"] for d in data])
    unknown = np.setdiff1d(dets.image, image_ids)
    if len(unknown):
        raise ValueError(f"{path}: detections refer to image ids {unknown[:10].tolist()} not in the ground truth")
    return dets


def coco_detections_json(dets: BoxSet) -> list[dict]:
    """COCO results entries (bbox [x, y, w, h] pixels) for a BoxSet of detections."""
    xywh = xyxy_to_ltwh(dets.boxes)
    return [{"image_id": int(i), "category_id": int(c), "bbox": [round(float(v), 3) for v in box],
             "score": round(float(s), 5)} for i, c, box, s in zip(dets.image, dets.category, xywh, dets.score)]


def coco_gt_json(gts: BoxSet, images: list[dict], category_names: dict[int, str]) -> dict:
    """A COCO GT dict; ``images`` entries carry id, file_name, width, height (original pixels)."""
    xywh = xyxy_to_ltwh(gts.boxes)
    anns = [{"id": n + 1, "image_id": int(i), "category_id": int(c), "bbox": [round(float(v), 3) for v in box],
             "area": round(float(area), 3), "iscrowd": int(crowd)}
            for n, (i, c, box, area, crowd) in enumerate(zip(gts.image, gts.category, xywh, gts.area, gts.ignore))]
    return {"images": images, "annotations": anns,
            "categories": [{"id": int(k), "name": v} for k, v in sorted(category_names.items())]}


def reference_stats(gt_path: str | Path, det_path: str | Path) -> dict[str, float] | None:
    """The 12 COCO figures from faster-coco-eval or pycocotools (whichever imports), None if neither does."""
    try:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    except ImportError:
        try:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval
        except ImportError:
            logger.info("neither faster-coco-eval nor pycocotools is installed: no reference cross-check")
            return None
    if not json.loads(Path(det_path).read_text()):
        logger.warning("%s holds no detections: no reference cross-check", det_path)
        return None
    with contextlib.redirect_stdout(io.StringIO()) as captured:  # the references print their progress
        coco_gt = COCO(str(gt_path))
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(str(det_path)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    logger.debug(captured.getvalue())
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
    return {name: float(value) for name, value in zip(names, evaluator.stats)}
