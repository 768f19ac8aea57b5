"""Weighted box fusion (Solovyev, Wang, Gabruseva 2019, arXiv:1910.13302) for ensembles and TTA.

Instead of keeping the best box of a cluster and dropping the rest (NMS), WBF averages the cluster's
coordinates weighted by confidence, and scales the cluster's mean confidence by how many models
voted for it: score = mean(score) * min(votes, num_models) / num_models.

Clustering here is vectorised: the cluster seeds are the boxes a class-aware greedy NMS keeps (at the
fusion IoU), and every box joins the same-class seed it overlaps most (each box dropped by NMS overlaps
some seed by more than the threshold). The paper builds clusters one box at a time against the running
fused boxes; the two agree whenever clusters are well separated, which is the usual case.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch

from utils.boxes import box_iou
from utils.nms import batched_nms

# The paper's default fusion IoU.
WBF_IOU = 0.55


def weighted_box_fusion(detections: Sequence[torch.Tensor], iou_thres: float = WBF_IOU,
                        weights: Optional[Sequence[float]] = None, skip_thres: float = 0.0,
                        max_det: int = 300) -> torch.Tensor:
    """Fuse the detections of several models (or passes) on one image.

    Args:
        detections: one (n_i, 6 + E) tensor per model, rows ``x1, y1, x2, y2, conf, cls, extra..``
            (NMS output, pixels). Extra columns are averaged with the same weights as the boxes.
        iou_thres: boxes of one class overlapping more than this are fused.
        weights: (num_models,) model weights (default all 1); they scale each model's confidences.
        skip_thres: boxes below this confidence are left out.
        max_det: fused boxes kept, by decreasing confidence.
    Returns:
        (n, 6 + E) fused detections, same columns, by decreasing confidence.
    """
    num_models = len(detections)
    if num_models == 0:
        raise ValueError("weighted_box_fusion needs at least one set of detections")
    weights = [1.0] * num_models if weights is None else list(weights)
    if len(weights) != num_models:
        raise ValueError(f"{len(weights)} weights given for {num_models} sets of detections")
    rows = torch.cat([det.float() for det in detections], 0)  # (N, 6 + E)
    model_weight = torch.cat([torch.full((len(det),), float(w)) for det, w in zip(detections, weights)]).to(rows)
    keep = rows[:, 4] >= skip_thres
    rows, model_weight = rows[keep], model_weight[keep]
    if len(rows) == 0:
        return rows
    vote = rows[:, 4] * model_weight  # (N,) each box's weight in its cluster
    seeds = batched_nms(rows[:, :4], vote, rows[:, 5], iou_thres)  # (S,)
    iou = box_iou(rows[:, :4], rows[seeds, :4])  # (N, S)
    iou[rows[:, 5, None] != rows[None, seeds, 5]] = -1.0  # never fuse across classes
    cluster = iou.argmax(1)  # (N,) seed index of each box
    cluster[seeds] = torch.arange(len(seeds), device=rows.device)  # a seed always leads its own cluster
    num_clusters = len(seeds)
    weight_sum = torch.zeros(num_clusters, device=rows.device).index_add_(0, cluster, vote)  # (S,)
    columns = torch.cat([rows[:, :4], rows[:, 6:]], 1)  # (N, 4 + E) averaged columns
    fused = torch.zeros(num_clusters, columns.shape[1], device=rows.device)
    fused.index_add_(0, cluster, columns * vote[:, None])
    fused /= weight_sum[:, None].clamp(min=1e-12)
    count = torch.zeros(num_clusters, device=rows.device).index_add_(0, cluster, torch.ones_like(vote))
    weight_total = torch.zeros(num_clusters, device=rows.device).index_add_(0, cluster, model_weight)
    score = weight_sum / weight_total.clamp(min=1e-12)  # weighted mean confidence of the cluster
    score = score * count.clamp(max=num_models) / num_models
    out = torch.cat([fused[:, :4], score[:, None], rows[seeds, 5:6], fused[:, 4:]], 1)  # (S, 6 + E)
    return out[out[:, 4].argsort(descending=True)[:max_det]]
