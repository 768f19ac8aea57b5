"""VisDrone protocol (official toolkit rules) on hand-computed cases, plus the txt folder I/O."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from utils.eval.metrics import BoxSet
from utils.eval.visdrone import (
    evaluate,
    load_folders,
    read_results_txt,
    result_lines,
)

SIZES = {0: (100, 100), 1: (100, 100)}


def _gts(rows) -> BoxSet:
    """rows: (image, x1, y1, x2, y2, category, score)."""
    rows = np.array(rows, float).reshape(-1, 7)
    return BoxSet(rows[:, 0], rows[:, 1:5], rows[:, 5], ignore=rows[:, 6] == 0)


def _dets(rows) -> BoxSet:
    """rows: (image, x1, y1, x2, y2, category, score)."""
    rows = np.array(rows, float).reshape(-1, 7)
    return BoxSet(rows[:, 0], rows[:, 1:5], rows[:, 5], score=rows[:, 6])


def test_perfect_detections():
    gts = _gts([[0, 10, 10, 20, 20, 1, 1], [0, 40, 40, 60, 60, 1, 1]])
    dets = _dets([[0, 10, 10, 20, 20, 1, 0.9], [0, 40, 40, 60, 60, 1, 0.8]])
    stats = evaluate(gts, dets, np.array([0]), SIZES).stats
    assert stats["AP"] == pytest.approx(1.0) and stats["AR500"] == pytest.approx(1.0)
    assert stats["AR1"] == pytest.approx(0.5)


def test_boxes_in_ignored_regions_are_dropped():
    gts = _gts([[0, 60, 60, 80, 80, 1, 1], [0, 0, 0, 50, 50, 0, 0], [0, 10, 10, 20, 20, 1, 1]])
    dets = _dets([[0, 60, 60, 80, 80, 1, 0.5], [0, 12, 12, 22, 22, 1, 0.9], [0, 45, 45, 65, 65, 1, 0.8]])
    result = evaluate(gts, dets, np.array([0]), SIZES)
    # det 1 lies in the ignored region (dropped, like the GT there); det 2 is only 1/4 inside: a plain FP
    assert result.det_state[0].tolist() == [1, -1, 0]
    assert result.gt_count[1] == 1
    assert result.stats["AP50"] == pytest.approx(0.5)  # FP ranked above the only TP: precision 1/2 at recall 1


def test_score_zero_gt_absorbs_detections_and_counts_in_recall():
    gts = _gts([[0, 10, 10, 20, 20, 1, 1], [0, 50, 50, 90, 90, 1, 0]])
    dets = _dets([[0, 10, 10, 20, 20, 1, 0.9], [0, 60, 60, 70, 70, 1, 0.95]])
    result = evaluate(gts, dets, np.array([0]), SIZES)
    assert result.det_state[0].tolist() == [1, -1]  # inside the ignore box (IoA 1): neither TP nor FP
    # calcAccuracy.m divides by every GT row of the class, the ignore row included
    assert result.stats["AR500"] == pytest.approx(0.5)
    assert result.stats["AP"] == pytest.approx(0.5)


def test_at_most_500_detections_per_image_by_score():
    gts = _gts([[0, 0, 0, 10, 10, 1, 1]])
    far = [[0, 50, 50, 60, 60, 1, 0.9]] * 500
    dets = _dets(far + [[0, 0, 0, 10, 10, 1, 0.1]])  # the only TP ranks 501st: cut
    result = evaluate(gts, dets, np.array([0]), SIZES)
    assert result.stats["AR500"] == 0.0 and result.det_state[0, -1] == -1
    dets = _dets([[0, 0, 0, 10, 10, 1, 0.95]] + far)
    assert evaluate(gts, dets, np.array([0]), SIZES).stats["AR1"] == pytest.approx(1.0)


def test_classes_weighted_by_images_containing_them_and_empty_images():
    gts = _gts([[0, 0, 0, 10, 10, 1, 1], [1, 0, 0, 10, 10, 1, 1], [1, 50, 50, 60, 60, 2, 1]])
    dets = _dets([[0, 0, 0, 10, 10, 1, 0.9], [1, 0, 0, 10, 10, 1, 0.9], [2, 5, 5, 9, 9, 3, 0.9]])
    result = evaluate(gts, dets, np.array([0, 1, 2]), SIZES)  # image 2 has no GT; class 3 has no GT
    assert result.class_weight[:3].tolist() == [2, 1, 0]
    assert result.stats["AP"] == pytest.approx(2 / 3)  # class 1: AP 1 (2 images), class 2: AP 0 (1 image)


def test_no_gt_at_all_is_undefined():
    result = evaluate(_gts([]), _dets([[0, 0, 0, 5, 5, 1, 0.5]]), np.array([0]), SIZES)
    assert result.stats["AP"] == -1.0


def test_result_lines_round_trip_and_folder_errors(tmp_path: Path):
    gt_dir, pred_dir = tmp_path / "annotations", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    (gt_dir / "a.txt").write_text("10,10,10,10,1,1,0,0\n0,0,5,5,0,0,0,0\n")
    lines = result_lines(np.array([[10.0, 10, 20, 20]]), np.array([0.75]), np.array([1]))
    assert lines == ["10.00,10.00,10.00,10.00,0.7500,1,-1,-1"]
    (pred_dir / "a.txt").write_text("\n".join(lines) + "\n")
    dets, gts, image_ids, _ = load_folders(pred_dir, gt_dir)
    assert read_results_txt(pred_dir / "a.txt")[0, :6].tolist() == [10, 10, 10, 10, 0.75, 1]
    assert evaluate(gts, dets, image_ids).stats["AP"] == pytest.approx(1.0)
    (pred_dir / "a.txt").write_text("10,10,10,10,0.5,1,-1,-1\n1,2,x,4,0.5,1\n")
    with pytest.raises(ValueError, match=r"a.txt:2: non-numeric"):
        load_folders(pred_dir, gt_dir)
    (pred_dir / "a.txt").write_text("")
    (pred_dir / "b.txt").write_text("")
    with pytest.raises(ValueError, match="without a ground-truth file"):
        load_folders(pred_dir, gt_dir)


def test_shared_sample_ground_truth_scores_itself(visdrone_sample: Path, tmp_path: Path):
    gt_dir = visdrone_sample / "annotations"
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for path in sorted(gt_dir.glob("*.txt"))[:8]:
        rows = np.loadtxt(path, delimiter=",", ndmin=2, usecols=range(8))
        rows = rows[(rows[:, 5] >= 1) & (rows[:, 5] <= 10)]
        boxes = np.c_[rows[:, :2], rows[:, :2] + rows[:, 2:4]]
        (pred_dir / path.name).write_text("\n".join(result_lines(boxes, np.linspace(1, 0.5, len(rows)), rows[:, 5])))
    dets, gts, image_ids, sizes = load_folders(pred_dir, gt_dir, visdrone_sample / "images")
    assert len(sizes) == len(image_ids)
    stats = evaluate(gts.subset(gts.image < 8), dets, image_ids[:8], sizes).stats
    assert stats["AP"] == pytest.approx(1.0)
