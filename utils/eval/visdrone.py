"""The VisDrone2019-DET evaluation protocol, following the official MATLAB toolkit
(VisDrone/VisDrone2018-DET-toolkit: evalDET.m, utils/saveAnnoRes.m, utils/dropObjectsInIgr.m,
utils/evalRes.m, utils/compOas.m, utils/calcAccuracy.m, utils/VOCap.m). Which rule comes from where:

- saveAnnoRes.m: GT column 5 (score) is inverted into an ignore flag: score-0 boxes are "ignore" GTs.
- dropObjectsInIgr.m: category-0 rows are ignored regions; they are painted on a pixel map of the
  image and every GT (of another category) and every detection with >= 50% of its (rounded) area on
  that map is dropped; the category-0 rows themselves leave the GT.
- calcAccuracy.m: classes 1..10; per image the first maxDets detections (1, 10, 100, 500) of all
  classes; recall = TP / number of GT rows of the class (ignore rows included); precision =
  TP / max(1, TP + FP); AP at maxDets 500; the means run over the classes present in the GT, each
  repeated once per image that contains it (the toolkit's ``evalClass`` list keeps duplicates).
- evalRes.m / compOas.m: greedy matching by score, ordinary GTs preferred; an ignore GT is matched by
  intersection / detection area and absorbs any number of detections, which are then neither TP nor FP.
- VOCap.m: all-point interpolated AP.
The toolkit takes the first maxDets rows of a result file as written (saveAnnoRes.m at 77b9393 no
longer sorts them); we sort each image's detections by score first, which is the same for result
files written by score (ours are) and keeps the best-scored maxDets of a file written in any order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.boxes import xyxy_to_ltwh
from utils.data.visdrone import DROP_FRACTION, IGNORED_REGION, ignored_fraction, read_annotation
from utils.eval.metrics import IOU_THRESHOLDS, BoxSet, ap_all_points, greedy_match, overlap_pairs, rank_in_group

logger = logging.getLogger(__name__)

CLASSES = tuple(range(1, 11))  # pedestrian .. motor; 0 = ignored region, 11 = others
MAX_DETS = (1, 10, 100, 500)


@dataclass
class VisDroneResult:
    """Toolkit figures as fractions in [0, 1] (the toolkit prints percentages)."""

    ap: np.ndarray  # (10, T) all-point AP per class (rows follow CLASSES) at maxDets 500
    ar: np.ndarray  # (10, T, 4) max recall per class at MAX_DETS
    class_weight: np.ndarray  # (10,) images containing each class: its weight in the means
    stats: dict[str, float]  # AP, AP50, AP75, AR1, AR10, AR100, AR500
    det_state: np.ndarray  # (T, D) int8 per input detection: 1 TP, 0 FP, -1 ignored, dropped or cut
    gt_count: dict[int, int]  # class -> GT rows left after dropping (the recall denominator)


def drop_in_ignored(gts: BoxSet, dets: BoxSet,
                    image_sizes: dict[int, tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Keep-masks (G,), (D,) after dropObjectsInIgr.m; category-0 GT rows are never kept.

    Args:
        image_sizes: image id -> (height, width); without an entry the extent of the image's boxes is used.
    """
    keep_gt, keep_det = gts.category != IGNORED_REGION, np.ones(len(dets), bool)
    regions = gts.category == IGNORED_REGION
    gt_order, det_order = np.argsort(gts.image, kind="stable"), np.argsort(dets.image, kind="stable")
    gt_sorted, det_sorted = gts.image[gt_order], dets.image[det_order]
    for image in np.unique(gts.image[regions]):  # only images that have ignored regions
        gt_idx = gt_order[np.searchsorted(gt_sorted, image) : np.searchsorted(gt_sorted, image, "right")]
        det_idx = det_order[np.searchsorted(det_sorted, image) : np.searchsorted(det_sorted, image, "right")]
        boxes = np.concatenate([gts.boxes[gt_idx], dets.boxes[det_idx]])
        extent = (int(np.ceil(boxes[:, 3].max())), int(np.ceil(boxes[:, 2].max())))
        height, width = image_sizes.get(int(image), extent)
        xywh = xyxy_to_ltwh(boxes)  # (n, 4)
        fraction = ignored_fraction(xywh, xywh[: len(gt_idx)][regions[gt_idx]], height, width)
        keep_gt[gt_idx] &= fraction[: len(gt_idx)] < DROP_FRACTION
        keep_det[det_idx] = fraction[len(gt_idx) :] < DROP_FRACTION
    return keep_gt, keep_det


def evaluate(gts: BoxSet, dets: BoxSet, image_ids: np.ndarray,
             image_sizes: dict[int, tuple[int, int]] | None = None) -> VisDroneResult:
    """Score detections with the toolkit's rules.

    Args:
        gts: official GT rows: category 0..11, ``ignore`` = (score == 0); boxes xyxy pixels.
        dets: detections with categories 1..10 and scores.
        image_ids: (I,) evaluated images (results for other images are an error).
        image_sizes: image id -> (height, width) for the ignored-region map.
    """
    unknown = np.setdiff1d(dets.image, image_ids)
    if len(unknown):
        raise ValueError(f"detections refer to images without ground truth: {unknown[:10].tolist()}")
    keep_gt, keep_det = drop_in_ignored(gts, dets, image_sizes or {})
    image_rank = np.full(len(dets), max(MAX_DETS), np.int64)  # calcAccuracy.m cuts maxDets after the drop
    image_rank[keep_det] = rank_in_group(dets.image[keep_det], dets.score[keep_det])
    evaluated = keep_det & np.isin(dets.category, CLASSES) & (image_rank < max(MAX_DETS))
    gts_kept, dets_kept = gts.subset(keep_gt), dets.subset(evaluated)
    group = dets_kept.image * (max(CLASSES) + 1) + dets_kept.category
    min_overlap = float(IOU_THRESHOLDS.min())
    pair_det, pair_gt, pair_overlap = overlap_pairs(dets_kept, gts_kept, gts_kept.ignore, min_overlap)
    state, _ = greedy_match(rank_in_group(group, dets_kept.score), pair_det, pair_gt, pair_overlap,
                            gts_kept.ignore[None], gts_kept.ignore)
    state = state[0]  # (T, D')
    ap = np.zeros((len(CLASSES), len(IOU_THRESHOLDS)))
    ar = np.zeros((len(CLASSES), len(IOU_THRESHOLDS), len(MAX_DETS)))
    image_order = np.searchsorted(np.unique(image_ids), dets_kept.image)
    for row, cls in enumerate(CLASSES):
        num_gt = int((gts_kept.category == cls).sum())
        in_cls = np.flatnonzero(dets_kept.category == cls)
        in_cls = in_cls[np.lexsort((image_rank[evaluated][in_cls], image_order[in_cls], -dets_kept.score[in_cls]))]
        for m, limit in enumerate(MAX_DETS):
            chosen = in_cls[image_rank[evaluated][in_cls] < limit]
            tp = np.cumsum(state[:, chosen] == 1, axis=1)  # (T, n)
            fp = np.cumsum(state[:, chosen] == 0, axis=1)
            recall, precision = tp / max(1, num_gt), tp / np.maximum(1, tp + fp)
            ar[row, :, m] = recall[:, -1] if len(chosen) else 0.0
        ap[row] = ap_all_points(recall, precision)
    weight = np.array([len(np.unique(gts_kept.image[gts_kept.category == cls])) for cls in CLASSES], float)
    det_state = np.full((len(IOU_THRESHOLDS), len(dets)), -1, np.int8)
    det_state[:, evaluated] = state
    gt_count = {cls: int((gts_kept.category == cls).sum()) for cls in CLASSES}
    return VisDroneResult(ap, ar, weight, _summarize(ap, ar, weight), det_state, gt_count)


def _summarize(ap: np.ndarray, ar: np.ndarray, weight: np.ndarray) -> dict[str, float]:
    """calcAccuracy.m's means over ``evalClass`` (classes weighted by the images containing them)."""
    if weight.sum() == 0:
        return dict.fromkeys(("AP", "AP50", "AP75", "AR1", "AR10", "AR100", "AR500"), -1.0)
    t75 = int(np.argmin(abs(IOU_THRESHOLDS - 0.75)))
    stats = {"AP": np.average(ap.mean(1), weights=weight), "AP50": np.average(ap[:, 0], weights=weight),
             "AP75": np.average(ap[:, t75], weights=weight)}
    for m, limit in enumerate(MAX_DETS):
        stats[f"AR{limit}"] = np.average(ar[:, :, m].mean(1), weights=weight)
    return {name: float(value) for name, value in stats.items()}


def read_results_txt(path: Path) -> np.ndarray:
    """(n, 8) float rows of a result file ``x,y,w,h,score,category,-1,-1`` (the toolkit's format).

    Result files may stop after the category (6 columns); missing columns read as -1. A bad line is an
    error naming the file and the line. (Annotation files are read by utils.data.visdrone.read_annotation.)
    """
    rows = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = [f for f in line.replace(" ", "").split(",") if f != ""]
        try:
            values = [float(f) for f in fields]
        except ValueError:
            raise ValueError(f"{path}:{line_no}: non-numeric field in {line.strip()!r}; expected "
                             "x,y,w,h,score,category[,truncation,occlusion]") from None
        if not 6 <= len(values) <= 8 or values[2] < 0 or values[3] < 0:
            raise ValueError(f"{path}:{line_no}: {line.strip()!r} is not x,y,w,h,score,category[,trunc,occl] "
                             "with w, h >= 0")
        rows.append(values + [-1.0] * (8 - len(values)))
    return np.array(rows, np.float64).reshape(-1, 8)


def results_boxset(rows: np.ndarray, image_id: int) -> BoxSet:
    """Result rows (n, 8) -> detections (xyxy pixels, category, score) of one image."""
    boxes = np.c_[rows[:, :2], rows[:, :2] + rows[:, 2:4]]
    return BoxSet(np.full(len(rows), image_id), boxes, rows[:, 5], score=rows[:, 4])


def annotation_boxset(path: Path, image_id: int) -> BoxSet:
    """An official annotation file -> GT rows of one image (all categories; ``ignore`` = score 0)."""
    annotation = read_annotation(path)
    return BoxSet(np.full(len(annotation.boxes), image_id), annotation.boxes, annotation.category,
                  ignore=annotation.score == 0)


def image_size(image_dir: Path | None, stem: str) -> tuple[int, int] | None:
    """(height, width) of ``image_dir/stem.jpg`` read from its header (Pillow), None when absent."""
    if image_dir is None or not (image_dir / f"{stem}.jpg").is_file():
        return None
    from PIL import Image  # Pillow ships with matplotlib

    with Image.open(image_dir / f"{stem}.jpg") as image:
        return image.height, image.width


def load_folders(pred_dir: str | Path, gt_dir: str | Path,
                 image_dir: str | Path | None = None) -> tuple[BoxSet, BoxSet, np.ndarray, dict[int, tuple[int, int]]]:
    """Read a result folder and an annotation folder (one ``<image>.txt`` each) for :func:`evaluate`.

    Image ids are the positions of the sorted GT file names. A result file without a GT file is an error;
    a GT file without a result file counts as an image with no detections. Image sizes come from
    ``image_dir`` (default: the ``images`` folder beside ``gt_dir``), else from the boxes' extent.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for folder in (pred_dir, gt_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"VisDrone txt folder {folder} not found")
    gt_files = sorted(gt_dir.glob("*.txt"))
    if not gt_files:
        raise ValueError(f"{gt_dir}: no annotation .txt files")
    stems = {f.stem: i for i, f in enumerate(gt_files)}
    orphans = sorted(f.name for f in pred_dir.glob("*.txt") if f.stem not in stems)
    if orphans:
        raise ValueError(f"{pred_dir}: result files without a ground-truth file in {gt_dir}: {orphans[:5]}")
    image_dir = Path(image_dir) if image_dir else gt_dir.parent / "images"
    gt_parts, det_parts, sizes = [], [], {}
    for stem, image_id in stems.items():
        gt_parts.append(annotation_boxset(gt_dir / f"{stem}.txt", image_id))
        pred_file = pred_dir / f"{stem}.txt"
        det_parts.append(results_boxset(read_results_txt(pred_file) if pred_file.is_file() else np.zeros((0, 8)),
                                        image_id))
        if (size := image_size(image_dir, stem)) is not None:
            sizes[image_id] = size
    return concat_boxsets(det_parts), concat_boxsets(gt_parts), np.arange(len(gt_files)), sizes


def concat_boxsets(parts: list[BoxSet]) -> BoxSet:
    """One BoxSet from many (e.g. per image)."""
    fields = ("image", "boxes", "category", "score", "area", "ignore")
    if not parts:
        return BoxSet(np.zeros(0), np.zeros((0, 4)), np.zeros(0))
    return BoxSet(*[np.concatenate([getattr(p, name) for p in parts]) for name in fields])


def result_lines(boxes_xyxy: np.ndarray, scores: np.ndarray, categories: np.ndarray) -> list[str]:
    """Toolkit result rows ``x,y,w,h,score,category,-1,-1`` (pixels, category 1..10), by decreasing score."""
    order = np.argsort(-scores, kind="stable")
    xywh = xyxy_to_ltwh(boxes_xyxy[order])
    return [f"{x:.2f},{y:.2f},{w:.2f},{h:.2f},{s:.4f},{int(c)},-1,-1"
            for (x, y, w, h), s, c in zip(xywh, scores[order], categories[order])]
