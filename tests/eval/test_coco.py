"""COCO protocol: hand-worked cases and agreement with pycocotools on shared and randomized data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from utils.eval.coco import (
    coco_detections_json,
    coco_gt_json,
    evaluate,
    load_coco_detections,
    load_coco_gt,
    reference_stats,
)
from utils.eval.metrics import BoxSet

AGREEMENT = 1e-3  # 0.1 AP points


def _eval(gts: BoxSet, dets: BoxSet, images=(1,), cats=(1,), **kwargs):
    return evaluate(gts, dets, np.array(images), np.array(cats), **kwargs)


def test_perfect_detection_scores_one():
    gts = BoxSet([1, 1], [[0, 0, 10, 10], [50, 50, 100, 100]], [1, 1])
    dets = BoxSet([1, 1], [[0, 0, 10, 10], [50, 50, 100, 100]], [1, 1], score=[0.9, 0.8])
    stats = _eval(gts, dets).stats
    assert stats["AP"] == pytest.approx(1.0) and stats["APs"] == pytest.approx(1.0)
    assert stats["APm"] == pytest.approx(1.0) and stats["APl"] == -1.0


def test_duplicate_is_false_positive_and_crowd_absorbs_detections():
    gts = BoxSet([1, 1], [[0, 0, 10, 10], [100, 100, 200, 200]], [1, 1], ignore=[False, True])
    dets = BoxSet([1] * 4, [[0, 0, 10, 10], [0, 0, 10, 10], [110, 110, 130, 130], [150, 150, 170, 170]],
                  [1] * 4, score=[0.9, 0.8, 0.7, 0.6])
    result = _eval(gts, dets)
    assert result.det_state[0].tolist() == [1, 0, -1, -1]  # duplicate FP; both inside the crowd: ignored
    # precision 1 until recall 1 is reached by the first detection: AP = 1 despite the later FP
    assert result.stats["AP50"] == pytest.approx(1.0)


def test_max_dets_truncation_per_image_and_category():
    gts = BoxSet([1, 1], [[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1])
    dets = BoxSet([1, 1], [[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], score=[0.9, 0.8])
    result = _eval(gts, dets, max_dets=(1,))
    assert result.stats["AR1"] == pytest.approx(0.5)
    assert result.det_evaluated.tolist() == [True, False]


def test_empty_images_classes_without_gt_and_no_detections():
    gts = BoxSet([1], [[0, 0, 10, 10]], [1])
    dets = BoxSet([2], [[0, 0, 10, 10]], [2], score=[0.5])  # FP on an image without GT, class without GT
    result = _eval(gts, dets, images=(1, 2), cats=(1, 2))
    assert result.class_ap().tolist() == [0.0, -1.0]  # class 2 has no GT: undefined, left out of the mean
    assert result.stats["AP"] == 0.0
    empty = _eval(BoxSet([], np.zeros((0, 4)), []), BoxSet([], np.zeros((0, 4)), [], score=[]))
    assert empty.stats["AP"] == -1.0


def test_unknown_image_id_is_an_error():
    with pytest.raises(ValueError, match="image ids"):
        _eval(BoxSet([1], [[0, 0, 1, 1]], [1]), BoxSet([7], [[0, 0, 1, 1]], [1], score=[1.0]))


def test_bad_json_names_file_and_line(tmp_path: Path):
    bad = tmp_path / "gt.json"
    bad.write_text('{"images": [\n{"id": 1},\n oops]}')
    with pytest.raises(ValueError, match=r"gt.json: not valid JSON .* line 3"):
        load_coco_gt(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1}]}))
    det = tmp_path / "det.json"
    det.write_text(json.dumps([{"image_id": 9, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]))
    with pytest.raises(ValueError, match=r"det.json: detections refer to image ids \[9\]"):
        load_coco_detections(det, load_coco_gt(good).image_ids)
    det.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, -1, 1], "score": 0.5}]))
    with pytest.raises(ValueError, match="detection 0 has bbox"):
        load_coco_detections(det, load_coco_gt(good).image_ids)


def _compare_with_reference(gt_path: Path, det_path: Path) -> None:
    pytest.importorskip("pycocotools")
    gt = load_coco_gt(gt_path)
    ours = evaluate(gt.boxes, load_coco_detections(det_path, gt.image_ids), gt.image_ids, gt.category_ids).stats
    reference = reference_stats(gt_path, det_path)
    assert reference is not None
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert ours[name] == pytest.approx(reference[name], abs=AGREEMENT), name


def test_agrees_with_pycocotools_on_shared_sample(aerial_coco_sample: Path):
    folder = aerial_coco_sample / "coco_evaluate"
    _compare_with_reference(folder / "dataset.json", folder / "result.json")


def _random_scene(seed: int, tmp_path: Path) -> tuple[Path, Path]:
    """Crowded scenes: many small boxes, jittered and duplicated detections, crowds, images without GT."""
    rng = np.random.default_rng(seed)
    gt_parts, det_parts = [], []
    for image in range(1, 7):
        num_gt = 0 if image == 6 else int(rng.integers(5, 60))
        xy = rng.uniform(0, 400, (num_gt, 2))
        wh = rng.choice([6.0, 20.0, 40.0, 120.0], (num_gt, 1)) * rng.uniform(0.5, 1.5, (num_gt, 2))
        boxes = np.round(np.concatenate([xy, xy + wh], 1))
        cats = rng.integers(1, 4, num_gt)
        gt_parts.append(BoxSet(np.full(num_gt, image), boxes, cats, ignore=rng.random(num_gt) < 0.05))
        picks = rng.integers(0, max(num_gt, 1), int(num_gt * 1.6) + 3) if num_gt else np.zeros(0, int)
        jitter = rng.normal(0, 3, (len(picks), 4))
        det_boxes = (boxes[picks] if num_gt else np.zeros((0, 4))) + jitter
        det_boxes[:, 2:] = np.maximum(det_boxes[:, 2:], det_boxes[:, :2] + 1)
        det_cats = np.where(rng.random(len(picks)) < 0.9, cats[picks] if num_gt else 1, rng.integers(1, 4))
        det_parts.append(BoxSet(np.full(len(picks), image), det_boxes, det_cats, score=rng.random(len(picks))))
    gts = BoxSet(*[np.concatenate([getattr(p, f) for p in gt_parts]) for f in ("image", "boxes", "category")],
                 ignore=np.concatenate([p.ignore for p in gt_parts]))
    dets = BoxSet(*[np.concatenate([getattr(p, f) for p in det_parts]) for f in ("image", "boxes", "category")],
                  score=np.concatenate([p.score for p in det_parts]))
    gt_path, det_path = tmp_path / f"gt{seed}.json", tmp_path / f"det{seed}.json"
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 500, "height": 500} for i in range(1, 7)]
    gt_path.write_text(json.dumps(coco_gt_json(gts, images, {1: "a", 2: "b", 3: "c"})))
    det_path.write_text(json.dumps(coco_detections_json(dets)))
    return gt_path, det_path


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_pycocotools_on_random_crowded_scenes(seed: int, tmp_path: Path):
    _compare_with_reference(*_random_scene(seed, tmp_path))


def test_deeply_nested_or_binary_json_is_one_line(tmp_path: Path):
    """A hostile --pred/--gt file is refused naming it, never a RecursionError."""
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=r"nested.json: JSON nested too deeply"):
        load_coco_gt(nested)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00\x01" * 10)
    with pytest.raises(ValueError, match=r"binary.json: not a UTF-8 text file"):
        load_coco_gt(binary)
