"""Anchors: defaults for a model built without data, k-means + genetic refinement, best possible recall.

A label fits an anchor when both size ratios (label / anchor and anchor / label) stay within ``thr``
(the assigner's ``anchor_t``, 4.0). Best possible recall (BPR) is the fraction of labels that fit at
least one anchor: the recall ceiling the anchors impose before any training.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

BPR_THRESHOLD = 0.98  # below this the given anchors are replaced by k-means ones
MIN_LABEL_PX = 2.0  # labels smaller than this (after scaling) are too few pixels to shape anchors
# Default anchors span 1.25x the finest stride to 8x the coarsest (YOLOv5's COCO anchors: 10 to 373 px).
DEFAULT_MIN_STRIDES, DEFAULT_MAX_STRIDES = 1.25, 8.0
DEFAULT_ASPECTS = (1.0, 0.5, 2.0)  # width / height, cycled over a level's anchors
KMEANS_ITERATIONS = 30
EVOLVE_GENERATIONS, EVOLVE_PROB, EVOLVE_SIGMA = 300, 0.9, 0.1
SCALE_JITTER = (0.9, 1.1)  # label sizes are jittered like the scale augmentation


def default_anchors(stride: torch.Tensor, num_anchors: int) -> torch.Tensor:
    """(nl,) strides -> (nl, A, 2) pixel anchors, sizes log-uniform and increasing with the level.

    Used when a YAML says ``anchors: N`` and no data has been seen (k-means replaces them at train time).
    """
    num_levels = len(stride)
    sizes = np.geomspace(DEFAULT_MIN_STRIDES * float(stride[0]), DEFAULT_MAX_STRIDES * float(stride[-1]),
                         num_levels * num_anchors)
    aspects = np.sqrt(np.resize(np.array(DEFAULT_ASPECTS), num_levels * num_anchors))
    wh = np.stack([sizes * aspects, sizes / aspects], 1)  # (nl*A, 2), areas increasing
    return torch.tensor(wh, dtype=torch.float32).view(num_levels, num_anchors, 2)


def check_anchor_order(anchors: torch.Tensor, stride: torch.Tensor, source: str = "model") -> None:
    """ValueError unless the mean anchor area grows with the stride (small anchors on fine levels)."""
    areas = anchors.prod(-1).mean(-1)[torch.argsort(stride)]  # (nl,) in stride order
    if (areas.diff() < 0).any():
        raise ValueError(f"{source}: anchors must go from small (finest stride) to large (coarsest stride); "
                         f"mean areas per level {areas.tolist()} for strides {sorted(stride.tolist())}")


def fit_metrics(wh: np.ndarray, anchors: np.ndarray, thr: float) -> tuple[float, float]:
    """(M, 2) label sizes and (A, 2) anchors (same units) -> (best possible recall, anchors above thr per label)."""
    ratio = wh[:, None] / anchors[None]  # (M, A, 2)
    fit = np.minimum(ratio, 1 / ratio).min(2)  # (M, A) worst side ratio, 1 = perfect fit
    best = fit.max(1)
    return float((best > 1 / thr).mean()), float((fit > 1 / thr).sum(1).mean())


def _fitness(wh: np.ndarray, anchors: np.ndarray, thr: float) -> float:
    """Mean best fit over labels, counting only fits within thr (what the genetic refinement maximises)."""
    ratio = wh[:, None] / anchors[None]  # (M, A, 2)
    best = np.minimum(ratio, 1 / ratio).min(2).max(1)  # (M,)
    return float((best * (best > 1 / thr)).mean())


def kmeans_wh(wh: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Lloyd k-means (k-means++ seeding) on whitened (M, 2) sizes -> (count, 2) centres in the input units."""
    scale = wh.std(0) + 1e-9
    points = wh / scale
    centres = points[rng.integers(len(points))][None]
    while len(centres) < count:
        distance = ((points[:, None] - centres[None]) ** 2).sum(-1).min(1)  # (M,)
        centres = np.vstack([centres, points[rng.choice(len(points), p=distance / distance.sum())]])
    for _ in range(KMEANS_ITERATIONS):
        nearest = ((points[:, None] - centres[None]) ** 2).sum(-1).argmin(1)  # (M,)
        centres = np.stack([points[nearest == k].mean(0) if np.any(nearest == k) else centres[k]
                            for k in range(count)])
    return centres * scale


def kmean_anchors(wh: np.ndarray, count: int, thr: float = 4.0, generations: int = EVOLVE_GENERATIONS,
                  seed: int = 0) -> np.ndarray:
    """(M, 2) label sizes in training pixels -> (count, 2) anchors sorted by area.

    k-means gives the start; a genetic refinement (multiplicative Gaussian mutations, keep if fitter)
    then maximises :func:`_fitness`. Labels under MIN_LABEL_PX are left out.
    """
    rng = np.random.default_rng(seed)
    usable = wh[(wh >= MIN_LABEL_PX).all(1)].astype(np.float64)
    if len(usable) < count:
        raise ValueError(f"k-means needs at least {count} labels of >= {MIN_LABEL_PX} px, got {len(usable)}")
    anchors = kmeans_wh(usable, count, rng)
    best_fitness = _fitness(usable, anchors, thr)
    for _ in range(generations):
        mutate = rng.random(anchors.shape) < EVOLVE_PROB
        factors = np.clip(1 + rng.standard_normal(anchors.shape) * EVOLVE_SIGMA * mutate, 0.3, 3.0)
        candidate = np.maximum(anchors * factors, MIN_LABEL_PX)
        fitness = _fitness(usable, candidate, thr)
        if fitness > best_fitness:
            anchors, best_fitness = candidate, fitness
    return anchors[np.argsort(anchors.prod(1))]


def label_wh(labels: list[np.ndarray], shapes: np.ndarray, imgsz: int, seed: int = 0) -> np.ndarray:
    """Label sizes in pixels at training size: (n, 5) [cls, cx, cy, w, h] normalised per image,
    (N, 2) original [w, h] -> (M, 2), each image letterboxed to ``imgsz`` and scale-jittered."""
    rng = np.random.default_rng(seed)
    shapes = np.asarray(shapes, dtype=np.float64)
    resized = imgsz * shapes / shapes.max(1, keepdims=True)  # (N, 2) letterboxed image [w, h]
    per_image = [np.asarray(lab, dtype=np.float64)[:, 3:5] * size for lab, size in zip(labels, resized) if len(lab)]
    if not per_image:
        return np.zeros((0, 2))
    wh = np.concatenate(per_image)
    return wh * rng.uniform(*SCALE_JITTER, size=(len(wh), 1))


def check_anchors(dataset: Any, model: torch.nn.Module, thr: float = 4.0, imgsz: int = 640) -> bool:
    """Replace the model's anchors by k-means ones when its config asked for data anchors or BPR < 0.98.

    ``dataset`` needs ``labels`` (list of (n, 5) normalised) and ``shapes`` ((N, 2) original [w, h]).
    Updates ``model.detect.anchors`` (grid units), ``model.yaml['anchors']`` (pixels) and
    ``model.anchors_from_data``; returns True when the anchors changed.
    """
    detect = model.detect
    wh = label_wh(dataset.labels, dataset.shapes, imgsz)
    current = (detect.anchors * detect.stride.view(-1, 1, 1)).view(-1, 2).cpu().numpy()  # (nl*A, 2) pixels
    bpr, per_label = fit_metrics(wh, current, thr) if len(wh) else (1.0, 0.0)
    logger.info("anchors: %.2f anchors/target, best possible recall %.4f", per_label, bpr)
    if not getattr(model, "anchors_from_data", False) and bpr >= BPR_THRESHOLD:
        return False
    new = kmean_anchors(wh, detect.nl * detect.na, thr)
    new_bpr, _ = fit_metrics(wh, new, thr)
    if not model.anchors_from_data and new_bpr <= bpr:
        logger.info("anchors: k-means anchors (BPR %.4f) are no better; keeping the original ones", new_bpr)
        return False
    anchors = torch.tensor(new, dtype=detect.anchors.dtype, device=detect.anchors.device).view_as(detect.anchors)
    detect.anchors.copy_(anchors / detect.stride.view(-1, 1, 1))
    model.yaml["anchors"] = [level.flatten().tolist() for level in anchors]
    model.anchors_from_data = False
    pairs = ", ".join(f"{round(w)},{round(h)}" for w, h in anchors.view(-1, 2).tolist())  # YOLOv5's rounding
    logger.info("anchors: k-means anchors, best possible recall %.4f: %s", new_bpr, pairs)
    return True
