"""utils/anchors.py: default anchors, order check, BPR, k-means + evolution on real VisDrone labels."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from models.yolo import Model
from utils.anchors import (
    BPR_THRESHOLD,
    check_anchor_order,
    check_anchors,
    default_anchors,
    fit_metrics,
    kmean_anchors,
    label_wh,
)

MODELS = Path(__file__).resolve().parents[1] / "models"
YOLOV5_COCO_ANCHORS = np.array([[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119], [116, 90], [156, 198],
                                [373, 326]], dtype=float)


def read_visdrone_sample(root: Path) -> SimpleNamespace:
    """Official VisDrone txt (x, y, w, h, score, category, ...) -> labels (n, 5) normalised, shapes (N, 2)."""
    with open(root / "manifest.csv", newline="") as f:
        sizes = {Path(row["file"]).stem: (float(row["width"]), float(row["height"])) for row in csv.DictReader(f)}
    labels, shapes = [], []
    for stem, (width, height) in sorted(sizes.items()):
        rows = np.loadtxt(root / "annotations" / f"{stem}.txt", delimiter=",", ndmin=2, usecols=range(6))
        rows = rows[(rows[:, 4] == 1) & (rows[:, 5] >= 1) & (rows[:, 5] <= 10)]  # evaluated objects only
        centre = (rows[:, :2] + rows[:, 2:4] / 2) / (width, height)
        labels.append(np.column_stack([rows[:, 5] - 1, centre, rows[:, 2:4] / (width, height)]))
        shapes.append((width, height))
    return SimpleNamespace(labels=labels, shapes=np.array(shapes))


def test_default_anchors_grow_with_stride():
    anchors = default_anchors(torch.tensor([4.0, 8.0, 16.0, 32.0]), 4)
    assert anchors.shape == (4, 4, 2)
    areas = anchors.prod(-1).flatten()
    assert (areas.diff() > 0).all()
    assert areas[0].sqrt() == pytest.approx(1.25 * 4, rel=1e-5) and areas[-1].sqrt() == pytest.approx(8 * 32, rel=1e-5)
    check_anchor_order(anchors, torch.tensor([4.0, 8.0, 16.0, 32.0]))
    with pytest.raises(ValueError, match="small"):
        check_anchor_order(anchors.flip(0), torch.tensor([4.0, 8.0, 16.0, 32.0]), "my.yaml")


def test_fit_metrics_hand_case():
    wh = np.array([[10.0, 10.0], [100.0, 10.0], [30.0, 20.0]])
    bpr, per_label = fit_metrics(wh, np.array([[10.0, 10.0], [20.0, 20.0]]), thr=4.0)
    # label 0 fits both, label 1 none (100/20 = 5 > 4), label 2 fits both (30/10 = 3, 20/20 = 1)
    assert bpr == pytest.approx(2 / 3) and per_label == pytest.approx(4 / 3)


def test_label_wh_scales_to_the_training_size():
    labels = [np.array([[0, 0.5, 0.5, 0.5, 0.5]]), np.zeros((0, 5)), np.array([[1, 0.5, 0.5, 0.1, 0.2]])]
    wh = label_wh(labels, np.array([[200.0, 100.0], [10.0, 10.0], [100.0, 400.0]]), imgsz=100)
    base = np.array([[50.0, 25.0], [2.5, 20.0]])
    assert wh.shape == (2, 2) and np.all(wh / base >= 0.9 - 1e-9) and np.all(wh / base <= 1.1 + 1e-9)
    assert np.allclose(wh[:, 0] / wh[:, 1], base[:, 0] / base[:, 1])  # one jitter factor per label


def test_kmeans_on_visdrone_sample_beats_coco_anchors(visdrone_sample):
    dataset = read_visdrone_sample(visdrone_sample)
    wh = label_wh(dataset.labels, dataset.shapes, 640)
    assert len(wh) > 6000
    anchors = kmean_anchors(wh, 9, thr=4.0, generations=100)
    assert anchors.shape == (9, 2) and (np.diff(anchors.prod(1)) >= 0).all()
    bpr, _ = fit_metrics(wh, anchors, 4.0)
    coco_bpr, _ = fit_metrics(wh, YOLOV5_COCO_ANCHORS, 4.0)
    assert bpr >= BPR_THRESHOLD and bpr >= coco_bpr
    assert np.allclose(anchors, kmean_anchors(wh, 9, thr=4.0, generations=100))  # seeded: reproducible


def test_check_anchors_replaces_data_anchors_and_updates_the_yaml(visdrone_sample):
    dataset = read_visdrone_sample(visdrone_sample)
    model = Model(MODELS / "yolov5n-xs-tph.yaml")
    assert check_anchors(dataset, model, thr=4.0, imgsz=640)
    pixels = model.detect.anchors * model.stride.view(-1, 1, 1)  # (4, 4, 2)
    assert not model.anchors_from_data and (pixels.prod(-1).flatten().diff() >= 0).all()
    assert torch.allclose(torch.tensor(model.yaml["anchors"]).view(4, 4, 2), pixels, atol=0.01)
    rebuilt = Model(model.yaml)
    assert torch.equal(rebuilt.detect.anchors, model.detect.anchors)
    assert not check_anchors(dataset, rebuilt, thr=4.0, imgsz=640)  # now good enough: kept


def test_too_few_labels_raise():
    with pytest.raises(ValueError, match="at least 9 labels"):
        kmean_anchors(np.full((5, 2), 10.0), 9)
