"""val.py CLI smoke tests: a tiny checkpoint on the synthetic set, and scoring saved predictions."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

import val
from tests.conftest import make_yolo_dataset
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.eval import run as eval_run
from utils.eval.run import run_study


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from models.yolo import Model

    model = Model("models/yolov5n.yaml", nc=5)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_checkpoint({"model": model.state_dict(), "ema": None, "model_yaml": model.yaml,
                     "names": ["car", "truck", "pedestrian", "bicycle", "bus"]}, path)
    return path


def test_weights_on_synthetic_data_writes_table_plots_and_files(tiny_checkpoint: Path, tmp_path: Path):
    val.main(["--weights", str(tiny_checkpoint), "--data", "data/synthetic.yaml", "--img", "64",
              "--batch-size", "16", "--workers", "0", "--project", str(tmp_path), "--name", "run",
              "--save-txt", "--save-json", "--verbose", "--conf-thres", "0.01"])
    run_dir = tmp_path / "run"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["protocol"] == "yolov5" and 0.0 <= results["map50"] <= 1.0
    assert len(results["per_class"]) == (5 if results["map50"] > 0 else 0)  # YOLOv5: no rows without a TP
    assert results["speed_ms"]["inference"] > 0
    for name in ("PR_curve.png", "confusion_matrix.png", "tiny_predictions.json", "ground_truth.json",
                 "options.json", "val_batch0_labels.jpg", "val_batch0_pred.jpg"):
        assert (run_dir / name).is_file(), name
    assert len(list((run_dir / "labels").glob("*.txt"))) > 0


def test_study_writes_its_table_and_plot_after_every_size(tiny_checkpoint: Path, tmp_path: Path):
    opts = val.ValOptions(weights=(str(tiny_checkpoint),), data="data/synthetic.yaml", batch_size=16, workers=0,
                          task="study")
    results = run_study(opts, tmp_path, sizes=(32, 64))
    with open(tmp_path / "study_synthetic_tiny.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["imgsz"]) for row in rows] == [32, 64] and len(results) == 2
    assert float(rows[1]["mAP50-95"]) == pytest.approx(results[1].map50_95, abs=1e-5)
    assert (tmp_path / "study.png").is_file() and (tmp_path / "imgsz32" / "results.json").is_file()


def test_visdrone_protocol_exports_toolkit_txt(tiny_checkpoint: Path, tmp_path: Path):
    results = val.run(weights=str(tiny_checkpoint), data="data/synthetic.yaml", imgsz=64, batch_size=32, workers=0,
                      project=str(tmp_path), name="vd", protocol="visdrone", save_txt=True, noplots=True,
                      conf_thres=0.01)
    assert results.protocol == "visdrone" and "AR500" in results.extra
    for path in (tmp_path / "vd" / "labels").glob("*.txt"):
        for line in path.read_text().splitlines():
            assert len(line.split(",")) == 8 and line.endswith(",-1,-1")


def test_score_saved_coco_json(aerial_coco_sample: Path, tmp_path: Path):
    folder = aerial_coco_sample / "coco_evaluate"
    results = val.run(pred=str(folder / "result.json"), gt=str(folder / "dataset.json"), project=str(tmp_path))
    assert results.map50 == pytest.approx(0.18498, abs=1e-4)  # pycocotools on the same files
    assert results.ap_small == -1.0  # the file's GT 'area' fields are all large (pycocotools' rule)
    assert (tmp_path / "exp" / "results.json").is_file()


def test_score_saved_visdrone_folders(tmp_path: Path):
    gt_dir, pred_dir = tmp_path / "annotations", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    (gt_dir / "a.txt").write_text("10,10,10,10,1,4,0,0\n30,30,10,10,1,1,0,0\n")
    (pred_dir / "a.txt").write_text("10,10,10,10,0.9,4,-1,-1\n")
    results = val.run(pred=str(pred_dir), gt=str(gt_dir), project=str(tmp_path / "runs"), noplots=True)
    assert results.protocol == "visdrone" and results.map50 == pytest.approx(0.5)  # car 1, pedestrian 0


def test_malformed_inputs_give_clear_errors(tmp_path: Path):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    pred = tmp_path / "pred.json"
    pred.write_text("[{\"image_id\": 1,")
    with pytest.raises(ValueError, match="pred.json: not valid JSON"):
        val.run(pred=str(pred), gt=str(gt), project=str(tmp_path / "runs"))
    pred.write_text(json.dumps([{"image_id": 3, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.3}]))
    with pytest.raises(ValueError, match=r"image ids \[3\]"):
        val.run(pred=str(pred), gt=str(gt), project=str(tmp_path / "runs"))
    with pytest.raises(ValueError, match="both be COCO JSON files or both VisDrone"):
        val.run(pred=str(pred), gt=str(tmp_path), project=str(tmp_path / "runs"))
    with pytest.raises(ValueError, match="--pred and --gt go together"):
        val.parse_options(["--pred", str(pred)])
    with pytest.raises(ValueError, match="unknown option"):
        val.run(weights="x.pt", bogus=1)


def test_pred_categories_unknown_to_the_gt_are_reported(tmp_path: Path, caplog):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [{"id": 1, "width": 100, "height": 100}],
                              "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20],
                                               "area": 400, "iscrowd": 0}],
                              "categories": [{"id": 1, "name": "a"}]}))
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps([{"image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 20], "score": 0.9},
                                {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.8}]))
    with caplog.at_level(logging.WARNING):
        val.run(pred=str(pred), gt=str(gt), project=str(tmp_path / "runs"), noplots=True)
    assert "1 prediction(s) have category_id [7], which" in caplog.text


def test_img_is_rounded_to_the_stride_like_train_and_detect(tiny_checkpoint: Path, tmp_path: Path, monkeypatch):
    images = make_yolo_dataset(tmp_path / "data", num_images=2)
    data = tmp_path / "data.yaml"
    data.write_text(json.dumps({"path": str(tmp_path / "data"), "train": "images", "val": "images",
                                "names": ["car", "truck", "pedestrian", "bicycle", "bus"]}))
    sizes = []
    original = eval_run.create_dataloader

    def recording(path, imgsz, *args, **kwargs):
        sizes.append(imgsz)
        return original(path, imgsz, *args, **kwargs)

    monkeypatch.setattr(eval_run, "create_dataloader", recording)
    val.run(weights=str(tiny_checkpoint), data=str(data), imgsz=100, workers=0, project=str(tmp_path / "runs"),
            noplots=True)
    assert sizes == [128] and images.is_dir()


def test_val_py_slice_scores_the_full_frames(tiny_checkpoint: Path, tmp_path: Path):
    val.main(["--weights", str(tiny_checkpoint), "--data", "data/synthetic.yaml", "--img", "64", "--workers", "0",
              "--slice", "96", "96", "--overlap", "0.2", "--slice-full-pass", "--project", str(tmp_path),
              "--name", "sliced", "--noplots"])
    options = json.loads((tmp_path / "sliced" / "options.json").read_text())
    assert options["slice"] == [96, 96] and options["slice_full_pass"] is True
    assert json.loads((tmp_path / "sliced" / "results.json").read_text())["map50"] >= 0
    with pytest.raises(ValueError, match="--slice takes two positive"):
        eval_run.ValOptions(weights=("w.pt",), slice=(0, 64))


def test_val_py_slices_a_tile_trained_checkpoint_by_default(tiny_checkpoint: Path, tmp_path: Path, caplog):
    tiled = tmp_path / "tiled.pt"
    save_checkpoint({**load_checkpoint(tiny_checkpoint), "opt": {"tile": 96, "tile_overlap": 0.2}}, tiled)
    common = ["--weights", str(tiled), "--data", "data/synthetic.yaml", "--img", "64", "--workers", "0",
              "--project", str(tmp_path), "--noplots"]
    with caplog.at_level("INFO"):
        val.main(common + ["--name", "auto"])
    assert "slicing each frame into 96x96 px tiles, overlap 0.2" in caplog.text
    val.main(common + ["--name", "explicit", "--slice", "96", "96", "--overlap", "0.2"])
    val.main(common + ["--name", "off", "--slice", "off"])
    results = {name: json.loads((tmp_path / name / "results.json").read_text()) for name in ("auto", "explicit", "off")}
    assert json.loads((tmp_path / "auto" / "options.json").read_text())["slice"] == "auto"
    assert results["auto"]["map50_95"] == results["explicit"]["map50_95"]
    assert results["auto"]["speed_ms"]["nms"] == 0 < results["off"]["speed_ms"]["nms"]  # sliced: NMS inside inference


def test_missing_weights_or_data_make_no_run_folder(tiny_checkpoint: Path, tmp_path: Path):
    """The inputs are checked before project/name is made, so the README's next command finds runs/val/exp."""
    with pytest.raises(FileNotFoundError, match="--weights .*missing.pt not found"):
        val.run(weights=str(tmp_path / "missing.pt"), project=str(tmp_path / "runs"))
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        val.run(weights=str(tiny_checkpoint), data=str(tmp_path / "missing.yaml"), project=str(tmp_path / "runs"))
    with pytest.raises(FileNotFoundError, match="nope.json"):
        val.run(pred=str(tmp_path / "nope.json"), gt=str(tmp_path / "gt.json"), project=str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()


def test_a_fixed_size_export_says_it_ignores_imgsz(tiny_checkpoint: Path, tmp_path: Path, caplog):
    from export import run as run_export

    make_yolo_dataset(tmp_path / "data", num_images=2)
    data = tmp_path / "data.yaml"
    data.write_text(json.dumps({"path": str(tmp_path / "data"), "train": "images", "val": "images",
                                "names": ["car", "truck", "pedestrian", "bicycle", "bus"]}))
    (onnx_path,) = run_export(weights=tiny_checkpoint, include=["onnx"], imgsz=64, check=False, project=str(tmp_path),
                              name="export")
    with caplog.at_level(logging.WARNING):
        val.run(weights=str(onnx_path), data=str(data), imgsz=128, workers=0, project=str(tmp_path / "runs"),
                noplots=True)
    assert f"{onnx_path} was exported for fixed 64x64 inputs: --imgsz 128 is ignored" in caplog.text


def test_an_absurd_imgsz_is_refused_in_one_line(tiny_checkpoint: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr("utils.infer.runtime.device_memory", lambda device: 128e9)
    make_yolo_dataset(tmp_path / "data", num_images=2)
    data = tmp_path / "data.yaml"
    data.write_text(json.dumps({"path": str(tmp_path / "data"), "train": "images", "val": "images",
                                "names": ["car", "truck", "pedestrian", "bicycle", "bus"]}))
    with pytest.raises(ValueError, match="--imgsz 100000 100000: a batch of 32 needs more than"):
        val.run(weights=str(tiny_checkpoint), data=str(data), imgsz=100000, workers=0, project=str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists(), "a failed run removes the folders it made"
    (tmp_path / "runs" / "exp").mkdir(parents=True)
    (tmp_path / "runs" / "exp" / "mine.txt").write_text("a user's file")
    with pytest.raises(ValueError, match="needs more than"):
        val.run(weights=str(tiny_checkpoint), data=str(data), imgsz=100000, workers=0, project=str(tmp_path / "runs"),
                exist_ok=True)
    assert sorted(p.name for p in (tmp_path / "runs" / "exp").iterdir()) == ["mine.txt", "options.json"]


def test_cbbl_fusion_is_on_by_default_for_cbbl_models_only(tmp_path: Path, monkeypatch):
    from tests.conftest import make_tiny_checkpoint
    from utils.eval import validator

    make_yolo_dataset(tmp_path / "data", num_images=2)
    data = tmp_path / "data.yaml"
    data.write_text(json.dumps({"path": str(tmp_path / "data"), "train": "images", "val": "images",
                                "names": ["car", "pedestrian", "van"]}))
    calls = []
    original = validator.non_max_suppression

    def recording(prediction, **kwargs):
        calls.append((prediction.shape[-1], kwargs["cbbl_fusion"]))
        return original(prediction, **kwargs)

    monkeypatch.setattr(validator, "non_max_suppression", recording)
    cases = (("cbbl", [], (5 + 3 + 1 + 4, True)), ("cbbl", ["--no-cbbl-fusion"], (5 + 3 + 1, False)),
             ("regress", [], (5 + 3, False)), ("regress", ["--cbbl-fusion"], (5 + 3, False)))
    for box, flags, expected in cases:
        calls.clear()
        weights = make_tiny_checkpoint(tmp_path / f"{box}.pt", box=box)
        val.main(["--weights", str(weights), "--data", str(data), "--img", "64", "--workers", "0", "--noplots",
                  "--project", str(tmp_path / "runs"), *flags])
        assert calls and set(calls) == {expected}, (box, flags)
