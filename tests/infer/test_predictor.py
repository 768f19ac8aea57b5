"""Tests for utils/infer/predictor.py: options, letterbox undo, results arrays and the files written from them."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from detect import run
from utils.infer.options import CBBL_FUSION_DEFAULT
from utils.infer.outputs import OutputWriter
from utils.infer.predictor import (
    DetectOptions,
    ImageResult,
    check_imgsz,
    detect_images,
    inference_size,
    load_names,
)


def test_options_normalise_and_validate():
    opts = DetectOptions(weights="a.pt", imgsz=[320], slice=[256], classes=[0, 2])
    assert opts.weights == ("a.pt",) and opts.imgsz == (320, 320) and opts.slice == (256, 256)
    assert opts.classes == (0, 2)
    with pytest.raises(ValueError, match="conf_thres=1.5"):
        DetectOptions(conf_thres=1.5)
    with pytest.raises(ValueError, match="overlap=1.0"):
        DetectOptions(overlap=1.0)
    with pytest.raises(ValueError, match="runtime='tensorrt'"):
        DetectOptions(runtime="tensorrt")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \[.colour.\]"):
        run(weights="a.pt", source=".", colour="red")


def test_check_imgsz_rounds_up_to_the_stride():
    assert check_imgsz((100, 64), 32) == (128, 64)


def test_detect_images_undoes_the_letterbox():
    """A fake network that always sees one box at its centre: it must land at the centre of the original."""
    seen_shapes = []

    def forward(images):
        seen_shapes.append(tuple(images.shape))
        height, width = images.shape[2:]
        pred = torch.zeros(images.shape[0], 1, 9)
        pred[:, 0, :5] = torch.tensor([width / 2, height / 2, width / 2, height / 4, 1.0])
        pred[:, 0, 5] = 1.0  # class 0
        pred[:, 0, 8] = 0.25  # uncertainty
        return pred

    image = np.zeros((100, 200, 3), dtype=np.uint8)
    opts = DetectOptions(conf_thres=0.5)
    dets = detect_images([image], forward, (64, 64), 16, 3, opts)
    assert seen_shapes == [(1, 3, 32, 64)], "auto letterbox pads only to the stride"
    assert dets[0].tolist() == [pytest.approx([50, 37.5, 150, 62.5, 1.0, 0.0, 0.25])]
    dets = detect_images([image], forward, (64, 64), 16, 3, opts, fixed_shape=True)
    assert seen_shapes[-1] == (1, 3, 64, 64)
    assert dets[0][0, :4].tolist() == pytest.approx([50, 25, 150, 75])


def test_result_arrays_and_txt_rows(tmp_path):
    dets = torch.tensor([[10.0, 20.0, 30.0, 60.0, 0.9, 2.0, 1.25]])
    result = ImageResult.from_detections(dets, "x.jpg", 0, (100, 200, 3), has_uncertainty=True)
    assert result.xyxy.dtype == np.float32 and result.cls.dtype == np.int64 and result.shape == (100, 200)
    writer = OutputWriter(DetectOptions(project=str(tmp_path), save_conf=True), ["a", "b", "c"], True)
    writer.write_txt(tmp_path / "x.txt", result)
    assert (tmp_path / "x.txt").read_text().split() == ["2", "0.1", "0.4", "0.1", "0.4", "0.9", "1.25"]


def test_load_names(tmp_path):
    (tmp_path / "list.yaml").write_text("names: [car, van]\n")
    (tmp_path / "map.yaml").write_text("names:\n  1: van\n  0: car\n")
    (tmp_path / "bad.yaml").write_text("nc: 2\n")
    assert load_names(tmp_path / "list.yaml", 2) == load_names(tmp_path / "map.yaml", 2) == ["car", "van"]
    with pytest.raises(ValueError, match="bad.yaml"):
        load_names(tmp_path / "bad.yaml", 2)
    assert len(load_names("VisDrone.yaml", 10)) == 10, "a bare name looks in data/, as train.py and val.py do"


def test_data_names_must_match_the_models_classes(tmp_path, tiny_checkpoint):
    """An 80-class model relabelled with 10 names would call cars 'bicycle': refused in one line."""
    (tmp_path / "ten.yaml").write_text(f"names: {[f'c{i}' for i in range(10)]}\n")
    with pytest.raises(ValueError, match="names 10 classes but the model predicts 3"):
        run(weights=str(tiny_checkpoint()), source=str(tmp_path), data=str(tmp_path / "ten.yaml"),
            project=str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()


def test_missing_or_unreadable_sources_leave_no_run_folder(tmp_path, tiny_checkpoint, caplog):
    """Every source unreadable is an error, not exit 0 with 'Results saved' and an empty folder."""
    weights = str(tiny_checkpoint())
    with pytest.raises(FileNotFoundError, match="missing"):
        run(weights=weights, source=str(tmp_path / "missing"), project=str(tmp_path / "runs"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"not a jpeg")
    (broken / "b.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="not one frame could be read"):
        run(weights=weights, source=str(broken), project=str(tmp_path / "runs"), save_txt=True)
    assert not (tmp_path / "runs").exists() and "Results saved" not in caplog.text


def test_a_fixed_size_export_says_it_ignores_imgsz(caplog):
    backend = SimpleNamespace(fixed_imgsz=(64, 64), stride=16, weights_name="fixed.onnx")
    with caplog.at_level(logging.WARNING):
        assert inference_size(backend, (64, 64)) == (64, 64)
    assert not caplog.text
    with caplog.at_level(logging.WARNING):
        assert inference_size(backend, (1280, 1280)) == (64, 64)
    assert caplog.messages == ["fixed.onnx was exported for fixed 64x64 inputs: --imgsz 1280 1280 is ignored (export "
                               "with --dynamic to choose the size here)"]
    assert inference_size(SimpleNamespace(fixed_imgsz=None, stride=32), (100, 64)) == (128, 64)


@pytest.mark.parametrize("box", ["regress", "cbbl"])
def test_run_returns_arrays_matching_the_txt_files(tmp_path, tiny_checkpoint, box):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in (("a.jpg", (90, 120, 3)), ("b.png", (64, 64, 3))):
        cv2.imwrite(str(images / name), rng.integers(0, 255, shape, dtype=np.uint8))
    results = run(weights=str(tiny_checkpoint(box)), source=str(images), imgsz=64, conf_thres=0.1, max_det=30,
                  save_txt=True, save_conf=True, save_crop=True, project=str(tmp_path / "runs"), name="exp")
    assert [r.path for r in results] == [str(images / "a.jpg"), str(images / "b.png")]
    out = tmp_path / "runs" / "exp"
    for result in results:
        assert 0 < len(result.conf) <= 30 and (result.conf > 0.1).all()
        assert (result.uncertainty is not None) == (box == "cbbl")
        assert (result.xyxy[:, 2:] <= [result.shape[1], result.shape[0]]).all()
        rows = np.loadtxt(out / "labels" / f"{result.path.rsplit('/', 1)[1].split('.')[0]}.txt", ndmin=2)
        assert rows.shape == (len(result.conf), 7 if box == "cbbl" else 6)
        np.testing.assert_array_equal(rows[:, 0], result.cls)
        np.testing.assert_allclose(rows[:, 5], result.conf, rtol=1e-5)
        height, width = result.shape
        rounded = np.round(result.xyxy)  # YOLOv5 v7.0 rounds the boxes to whole pixels in the txt files
        np.testing.assert_allclose(rows[:, 1] * width, (rounded[:, 0] + rounded[:, 2]) / 2, rtol=1e-4)
        if box == "cbbl":
            np.testing.assert_allclose(rows[:, 6], result.uncertainty, rtol=1e-5)
    assert (out / "a.jpg").is_file() and (out / "b.png").is_file()
    assert len(list((out / "crops").rglob("*.jpg"))) == sum(len(r.conf) for r in results)


@pytest.mark.parametrize("box, augment", [("regress", False), ("cbbl", False), ("cbbl", True)])
def test_cbbl_fusion_by_default_moves_cbbl_boxes_only(tmp_path, tiny_checkpoint, box, augment):
    """Also under TTA, whose flipped and rescaled passes keep each row's relative side variances valid."""
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8))
    weights = str(tiny_checkpoint(box))
    common = dict(weights=weights, source=str(images), imgsz=64, conf_thres=0.1, iou_thres=0.3, nosave=True,
                  augment=augment, project=str(tmp_path / "runs"))
    plain = run(**common, name="plain", cbbl_fusion=False)[0]
    fused = run(**common, name="fused")[0]
    np.testing.assert_array_equal(fused.conf, plain.conf)
    np.testing.assert_array_equal(fused.cls, plain.cls)
    if box == "cbbl":
        np.testing.assert_array_equal(fused.uncertainty, plain.uncertainty)
        assert not np.array_equal(fused.xyxy, plain.xyxy)
    else:
        np.testing.assert_array_equal(fused.xyxy, plain.xyxy)


def test_cbbl_fusion_flag_parses_for_detect_and_val():
    import detect
    import val

    assert detect.parse_options(["--cbbl-fusion"]).cbbl_fusion and val.parse_options(["--weights", "x.pt",
                                                                                      "--cbbl-fusion"]).cbbl_fusion
    assert detect.parse_options(["--no-cbbl-fusion"]).cbbl_fusion is False
    default = CBBL_FUSION_DEFAULT
    assert detect.parse_options([]).cbbl_fusion is default is val.parse_options(["--weights", "x.pt"]).cbbl_fusion


@pytest.mark.parametrize("argv, expected", [([], "auto"), (["--slice", "auto"], "auto"), (["--slice", "off"], "off"),
                                           (["--slice", "640", "512"], (640, 512))])
def test_slice_flag_parses_for_detect_and_val(argv, expected):
    import detect
    import val

    assert detect.parse_options(argv).slice == expected == val.parse_options(["--weights", "x.pt", *argv]).slice
    assert detect.parse_options(argv).overlap is None  # auto: the training tiles' overlap, else 0.2


def test_a_tile_trained_checkpoint_is_sliced_by_default(tmp_path, tiny_checkpoint, caplog):
    """--slice auto (the default): a --tile checkpoint's frames are cut into its training windows, as
    --slice 48 48 --overlap 0.25 would; --slice off and whole-frame checkpoints see the whole frame."""
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (96, 160, 3), dtype=np.uint8))
    tiled = tiny_checkpoint(name="tiled.pt", opt={"tile": 48, "tile_overlap": 0.25, "tile_scale": 1.0})
    common = {"source": str(image), "imgsz": 64, "conf_thres": 0.1, "nosave": True, "project": str(tmp_path)}
    with caplog.at_level("INFO"):
        auto = run(weights=str(tiled), **common)[0]
    assert "slicing each frame into 48x48 px tiles, overlap 0.25 (--slice off: whole frames)" in caplog.text
    explicit = run(weights=str(tiled), slice=[48, 48], overlap=0.25, **common)[0]
    off = run(weights=str(tiled), slice="off", **common)[0]
    whole = run(weights=str(tiny_checkpoint(name="whole.pt")), **common)[0]
    np.testing.assert_array_equal(auto.xyxy, explicit.xyxy)
    np.testing.assert_array_equal(off.xyxy, whole.xyxy)
    assert len(auto.conf) and not np.array_equal(auto.xyxy, off.xyxy)


def test_a_calibrated_cbbl_checkpoint_reports_expected_iou(tmp_path, tiny_checkpoint):
    """The calibration training stores in best.pt turns the uncertainty into expected IoU: in ImageResult and as
    the txt rows' last column; weights without one keep the raw entropy there."""
    from utils.cbbl.calibration import CHECKPOINT_KEY, UncertaintyCalibration
    from utils.checkpoint import load_checkpoint, save_checkpoint

    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8))
    raw = tiny_checkpoint("cbbl", name="raw.pt")
    calibration = UncertaintyCalibration((0.5, 2.5), (0.9, 0.3), 100)
    calibrated = tmp_path / "calibrated.pt"
    save_checkpoint({**load_checkpoint(raw), CHECKPOINT_KEY: calibration.to_dict()}, calibrated)
    common = {"source": str(image), "imgsz": 64, "conf_thres": 0.1, "save_txt": True, "save_conf": True,
              "nosave": True, "project": str(tmp_path)}
    plain = run(weights=str(raw), name="raw", **common)[0]
    read = run(weights=str(calibrated), name="calibrated", **common)[0]
    assert plain.expected_iou is None and len(read.conf)
    np.testing.assert_array_equal(read.uncertainty, plain.uncertainty)
    np.testing.assert_allclose(read.expected_iou, calibration.expected_iou(read.uncertainty), rtol=1e-6)
    assert ((read.expected_iou >= 0.3) & (read.expected_iou <= 0.9)).all()
    rows = {name: np.loadtxt(tmp_path / name / "labels" / "frame.txt", ndmin=2) for name in ("raw", "calibrated")}
    np.testing.assert_allclose(rows["calibrated"][:, 6], read.expected_iou, rtol=1e-5)
    np.testing.assert_allclose(rows["raw"][:, 6], plain.uncertainty, rtol=1e-5)
