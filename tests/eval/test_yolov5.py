"""utils/eval/yolov5.py: YOLOv5 v7.0's val metric, against outputs made by YOLOv5 7.0.14's own code.

tests/fixtures/make_yolov5_metrics.py made the references (its docstring says how); nothing here reads our
reading of their code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import REPO_ROOT
from utils.eval.metrics import BoxSet
from utils.eval.yolov5 import ap_per_class, evaluate, match_image

FIXTURES = REPO_ROOT / "tests" / "fixtures"
SHARED = REPO_ROOT.parent / "shared"


def _per_image(case) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Our matching over the fixture's images -> (correct, conf, pred_class, target_class) in YOLOv5's order."""
    dets, labels = case["dets"], case["labels"]
    correct, conf, pred_class = [], [], []
    for image in range(int(case["num_images"])):
        det, label = dets[dets[:, 0] == image, 1:], labels[labels[:, 0] == image, 1:]
        correct.append(match_image(det[:, :4], det[:, 5], label[:, 1:], label[:, 0]))
        conf.append(det[:, 4])
        pred_class.append(det[:, 5])
    return np.concatenate(correct), np.concatenate(conf), np.concatenate(pred_class), labels[:, 1]


def test_matching_and_ap_per_class_equal_yolov5_on_tied_scores_and_ious():
    case = np.load(FIXTURES / "yolov5_ap_per_class.npz")
    correct, conf, pred_class, target_class = _per_image(case)
    assert np.array_equal(correct, case["tp"])
    ap, curves = ap_per_class(correct, conf, pred_class, target_class)
    assert np.array_equal(curves.classes, case["ap_class"])
    np.testing.assert_allclose(ap, case["ap"], atol=1e-12)
    np.testing.assert_allclose(curves.precision, case["p"], atol=1e-12)
    np.testing.assert_allclose(curves.recall, case["r"], atol=1e-12)
    np.testing.assert_allclose(curves.f1, case["f1"], atol=1e-12)


def test_a_label_keeps_its_highest_scoring_detection_not_its_best_iou():
    """YOLOv5's quirk: after each detection keeps its best label, a label keeps the lowest-index detection."""
    gt = np.array([[0.0, 0.0, 10.0, 10.0]])
    dets = np.array([[0.0, 0.0, 10.0, 8.0], [0.0, 0.0, 10.0, 10.0]])  # IoU .8 (higher score), then 1.0
    correct = match_image(dets, np.zeros(2), gt, np.zeros(1), np.array([0.5, 0.9]))
    assert correct.tolist() == [[True, False], [False, True]]


def test_no_true_positive_gives_zero_everywhere():
    dets = BoxSet([0], [[50.0, 50.0, 60.0, 60.0]], [0], score=[0.9])
    result = evaluate(dets, BoxSet([0], [[0.0, 0.0, 10.0, 10.0]], [0]), np.array([0]))
    assert (result.map50, result.map50_95, result.has_tp) == (0.0, 0.0, False)


def test_val_table_equals_yolov5_val_on_real_frames(tmp_path: Path):
    """val.py's default table = YOLOv5 v7.0 val.py's, to 4 decimals: the real COCO yolov5n on 73 real VisDrone
    val frames labelled with COCO ids, the same label files on both sides."""
    weights = SHARED / "weights" / "yolov5n-coco-v6.1.pt"
    frames = SHARED / "data" / "visdrone-real" / "VisDrone2019-DET-val"
    if not weights.is_file() or not frames.is_dir():
        pytest.skip(f"real frames and COCO weights not found under {SHARED}")
    import val
    from tests.fixtures.make_yolov5_metrics import VAL_SETTINGS, write_coco_labels

    reference = json.loads((FIXTURES / "yolov5_val_visdrone.json").read_text())
    images = write_coco_labels(frames, tmp_path / "data")
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(images.parent), "train": "images", "val": "images", "nc": 80,
                                    "names": [f"class{i}" for i in range(80)]}))
    results = val.run(data=str(data), weights=str(weights), workers=0, project=str(tmp_path / "runs"), noplots=True,
                      **VAL_SETTINGS)
    assert results.protocol == "yolov5"
    ours = (results.precision, results.recall, results.map50, results.map50_95)
    theirs = (reference["mp"], reference["mr"], reference["map50"], reference["map50_95"])
    np.testing.assert_allclose(ours, theirs, atol=5e-5)
    rows = {str(row["class"]): row for row in results.per_class}
    assert sorted(rows) == sorted(reference["per_class"])
    for cls, expected in reference["per_class"].items():
        assert rows[cls]["instances"] == expected["instances"]
        assert rows[cls]["images"] == 73  # v7.0 prints every image seen in each row
        np.testing.assert_allclose([rows[cls][k] for k in ("P", "R", "AP50", "AP")],
                                   [expected[k] for k in ("P", "R", "AP50", "AP")], atol=5e-5)
