"""utils/eval/validator.py: validate() with a scripted detector on a hand-made loader (no training needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from utils.eval.validator import ValResults, validate

NAMES = ["car", "person"]
IMG = 64


class ScriptedDetector(nn.Module):
    """Eval-mode stand-in for Model: returns (pred, raw) with the planted boxes of each batch in turn."""

    def __init__(self, preds: list[torch.Tensor]):
        super().__init__()
        self.preds, self.calls = preds, 0
        self.stride = torch.tensor([8.0, 16.0, 32.0])
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, images: torch.Tensor):
        pred = self.preds[self.calls % len(self.preds)]
        self.calls += 1
        return pred[: len(images)], [torch.zeros(1)]


def _prediction(boxes_cxcywh: list[list[float]], cls: list[int], conf: list[float], extra: list[float] | None = None):
    """(1, N, 5 + nc [+1]) rows: box, objectness = conf, one-hot class probabilities [, uncertainty]."""
    rows = []
    for index, (box, c, p) in enumerate(zip(boxes_cxcywh, cls, conf)):
        probs = [1.0 if k == c else 0.0 for k in range(len(NAMES))]
        rows.append(box + [p] + probs + ([extra[index]] if extra else []))
    return torch.tensor([rows], dtype=torch.float32)


def _batch(targets_rows: list[list[float]], original=(IMG, IMG)):
    """One image; letterbox identity unless ``original`` differs (then a plain scale)."""
    images = torch.zeros(1, 3, IMG, IMG, dtype=torch.uint8)
    gain = IMG / original[0]
    shapes = ((original, ((gain, gain), (0.0, 0.0))),)
    return images, torch.tensor(targets_rows, dtype=torch.float32).reshape(-1, 6), ["img0.jpg"], shapes


def test_perfect_detections_score_one_and_boxes_go_back_to_original_pixels(tmp_path: Path):
    targets = [[0, 0, 0.25, 0.25, 0.2, 0.2], [0, 1, 0.7, 0.6, 0.3, 0.4]]
    pred = _prediction([[16, 16, 12.8, 12.8], [44.8, 38.4, 19.2, 25.6]], [0, 1], [0.9, 0.8], extra=[0.2, 0.4])
    results = validate(ScriptedDetector([pred]), [_batch(targets, original=(128, 128))], NAMES, save_dir=tmp_path,
                       plots=True, save_json=True, save_txt=True, protocol="coco")
    assert results.map50 == pytest.approx(1.0) and results.map50_95 == pytest.approx(1.0)
    assert results.precision == pytest.approx(1.0) and results.recall == pytest.approx(1.0)
    assert results.ap_small == pytest.approx(1.0)  # 25.6 px and 38.4x51.2 px in the 128 px original
    assert results.ap_medium == pytest.approx(1.0) and results.ap_large == -1.0
    assert results.fitness() == pytest.approx(1.0)
    assert results.uncertainty == {"tp": pytest.approx(0.3), "fp": pytest.approx(float("nan"), nan_ok=True),
                                   "spearman_vs_1-iou": pytest.approx(float("nan"), nan_ok=True)}  # 2 TPs: no rank
    assert [row["instances"] for row in results.per_class] == [1, 1]
    for name in ("PR_curve.png", "F1_curve.png", "confusion_matrix.png", "results.json", "_predictions.json",
                 "val_batch0_labels.jpg", "val_batch0_pred.jpg"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "_predictions.json").read_text())  # YOLOv5's name when no weights are named
    assert saved[0]["bbox"] == pytest.approx([19.2, 19.2, 25.6, 25.6], abs=1e-3)  # original pixels
    assert saved[0]["image_id"] == 0  # 'img0' is not a number: the loader order
    assert (tmp_path / "labels" / "img0.txt").read_text().count("\n") == 2


def test_json_image_ids_are_numeric_stems_as_in_yolov5(tmp_path: Path):
    targets = [[0, 0, 0.25, 0.25, 0.2, 0.2]]
    pred = _prediction([[16, 16, 12.8, 12.8]], [0], [0.9])
    batches = [(*_batch(targets)[:2], [f"images/{stem}.jpg"], _batch(targets)[3]) for stem in ("000000139", "42")]
    validate(ScriptedDetector([pred]), batches, NAMES, save_dir=tmp_path, save_json=True, weights_stem="best")
    saved = json.loads((tmp_path / "best_predictions.json").read_text())
    assert [entry["image_id"] for entry in saved] == [139, 42]
    ground_truth = json.loads((tmp_path / "ground_truth.json").read_text())
    assert [image["id"] for image in ground_truth["images"]] == [139, 42]
    assert {a["image_id"] for a in ground_truth["annotations"]} == {139, 42}
    assert not list(tmp_path.glob("val_batch*")), "no plots unless asked"


def test_false_positive_lowers_precision_and_losses_are_averaged():
    targets = [[0, 0, 0.25, 0.25, 0.2, 0.2]]
    pred = _prediction([[16, 16, 12.8, 12.8], [50, 50, 10, 10]], [0, 0], [0.9, 0.95])
    calls = []

    def fake_loss(raw, targets):
        calls.append(len(targets))
        return torch.tensor(3.0), {"box": torch.tensor(0.5), "obj": torch.tensor(1.0), "cls": torch.tensor(0.1)}

    results = validate(ScriptedDetector([pred]), [_batch(targets)] * 2, NAMES, compute_loss=fake_loss)
    assert results.map50 == pytest.approx(0.5, abs=0.01)  # FP ranked first: precision 1/2 at recall 1
    assert results.losses == pytest.approx({"box": 0.5, "obj": 1.0, "cls": 0.1}) and calls == [1, 1]
    assert results.loss is results.losses


def test_perfect_detections_score_yolov5s_0995_under_its_metric():
    """YOLOv5's trapezoid over 101 recall points gives a perfect class 0.995, as its val.py prints."""
    targets = [[0, 0, 0.25, 0.25, 0.2, 0.2], [0, 1, 0.7, 0.6, 0.3, 0.4]]
    pred = _prediction([[16, 16, 12.8, 12.8], [44.8, 38.4, 19.2, 25.6]], [0, 1], [0.9, 0.8])
    results = validate(ScriptedDetector([pred]), [_batch(targets)], NAMES)
    assert results.protocol == "yolov5" and results.map50 == pytest.approx(0.995)
    assert results.map50_95 == pytest.approx(0.995) and results.precision == pytest.approx(1.0)
    assert [row["images"] for row in results.per_class] == [1, 1]
    assert results.ap_small == pytest.approx(1.0) and results.ap_large == -1.0  # COCO's area ranges


def test_no_ground_truth_is_zero_under_yolov5_and_undefined_under_coco():
    pred = _prediction([[16, 16, 10, 10]], [0], [0.9])
    results = validate(ScriptedDetector([pred]), [_batch([])], NAMES)
    assert results.map50 == 0.0 and results.per_class == [] and results.fitness() == 0.0  # YOLOv5 prints zeros
    results = validate(ScriptedDetector([pred]), [_batch([])], NAMES, protocol="coco")
    assert results.map50 == -1.0 and results.per_class == [] and results.fitness() == 0.0


def test_visdrone_protocol_and_single_cls():
    targets = [[0, 0, 0.25, 0.25, 0.2, 0.2], [0, 1, 0.7, 0.6, 0.3, 0.4]]
    pred = _prediction([[16, 16, 12.8, 12.8], [44.8, 38.4, 19.2, 25.6]], [1, 0], [0.9, 0.8])  # classes swapped
    visdrone = validate(ScriptedDetector([pred]), [_batch(targets)], NAMES, protocol="visdrone")
    assert visdrone.map50 == 0.0 and visdrone.protocol == "visdrone" and "AR500" in visdrone.extra
    single = validate(ScriptedDetector([pred]), [_batch(targets)], NAMES, single_cls=True)
    assert single.map50 == pytest.approx(0.995)


def test_bad_protocol_is_an_error():
    with pytest.raises(ValueError, match="protocol"):
        validate(ScriptedDetector([_prediction([], [], [])]), [], NAMES, protocol="voc")


def test_as_dict_has_every_figure():
    row = ValResults(map50=0.5, map50_95=0.25).as_dict()
    assert row["fitness"] == pytest.approx(0.1 * 0.5 + 0.9 * 0.25)
    assert {"precision", "recall", "map75", "ap_small", "per_class", "speed_ms"} <= set(row)


@pytest.mark.parametrize("box", ["regress", "cbbl"])
def test_sliced_validation_equals_whole_frame_when_one_slice_covers_the_frame(tmp_path: Path, box: str):
    """64 px frames at --img 64, one 64 x 64 slice: the same pixels reach the model, so every protocol scores the
    same; smaller slices run too and score on the same full-frame ground truth."""
    from tests.conftest import make_tiny_checkpoint, make_yolo_dataset
    from utils.data.dataset import create_dataloader
    from utils.eval.scoring import PROTOCOLS
    from utils.eval.validator import Slicing
    from utils.infer.runtime import load_backend

    images = make_yolo_dataset(tmp_path / "data", num_images=4, size=(64, 64))
    backend = load_backend([str(make_tiny_checkpoint(tmp_path / "tiny.pt", box=box))], torch.device("cpu"))
    loader, _ = create_dataloader(images, 64, 4, backend.stride, rect=True, pad=0.0, nc=3)
    names = ["car", "pedestrian", "van"]
    for protocol in PROTOCOLS:
        args = {"conf_thres": 0.2, "protocol": protocol, "max_det": 100}
        whole = validate(backend, loader, names, **args)
        sliced = validate(backend, loader, names, **args, slicing=Slicing((64, 64), 0.2, 64))
        assert whole.map50 > 0, "the check needs detections that match"
        for name in ("precision", "recall", "map50", "map50_95"):
            assert getattr(sliced, name) == pytest.approx(getattr(whole, name), abs=1e-6), (protocol, name)
    small = validate(backend, loader, names, conf_thres=0.2, slicing=Slicing((32, 32), 0.25, 64, full_pass=True))
    assert 0 <= small.map50 <= 1 and small.speed_ms["inference"] > 0


def test_a_cbbl_model_gets_a_reliability_table_and_plot(tmp_path: Path):
    """60 objects on 2 images, each found with a corner error that grows with its planted uncertainty: the
    uncertainty ranks the IoUs, and val writes the out-of-fold reliability of the expected IoU it maps to."""
    generator = torch.Generator().manual_seed(0)
    preds, batches = [], []
    for _ in range(2):
        grid = torch.stack(torch.meshgrid(torch.arange(6), torch.arange(5), indexing="ij"), -1).reshape(30, 2)
        centres = (grid + 0.5) / torch.tensor([6.0, 5.0])  # apart: no object suppresses another
        uncertainty = torch.rand(30, generator=generator)
        targets = [[0, 0, float(x), float(y), 0.1, 0.1] for x, y in centres]
        shift = (0.2 + uncertainty[:, None]) * 0.6 * torch.randn(30, 2, generator=generator).sign()  # px
        boxes = torch.cat([centres * IMG + shift, torch.full((30, 2), 0.1 * IMG)], 1)
        preds.append(_prediction(boxes.tolist(), [0] * 30, [0.9] * 30, extra=uncertainty.tolist()))
        batches.append(_batch(targets))
    results = validate(ScriptedDetector(preds), batches, NAMES, save_dir=tmp_path, plots=True)
    found = results.uncertainty
    assert found["spearman_vs_1-iou"] > 0.5 and 0 <= found["calibration_error"] < 0.2
    assert 0.5 < found["spearman_calibrated"] <= 1  # expected IoU against IoU: the same sign as entropy vs 1 - IoU
    assert sum(row["boxes"] for row in found["reliability"]) == 60 and found["calibration"]["num_boxes"] == 60
    lines = (tmp_path / "reliability.csv").read_text().splitlines()
    assert lines[0] == "boxes,predicted_iou,measured_iou" and len(lines) == 1 + len(found["reliability"])
    assert (tmp_path / "reliability.png").stat().st_size > 0
