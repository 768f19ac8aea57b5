"""Tests for hubconf.py: torch.hub entry points."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import hubconf


@pytest.mark.parametrize("suffix", [".onnx", ".torchscript"])
def test_custom_refuses_exported_files_by_name(tmp_path, suffix):
    """Not torch's advice to retry with weights_only=False (wrong and unsafe): what to use instead."""
    path = tmp_path / f"best{suffix}"
    path.write_bytes(b"exported")
    with pytest.raises(ValueError) as error:
        hubconf.custom(path=str(path))
    message = str(error.value)
    assert message.startswith(f"{path}: torch.hub 'custom' loads .pt checkpoints") and "weights_only" not in message
    assert f"detect.py or val.py --weights {path}" in message


def test_custom_loads_a_checkpoint(tiny_checkpoint):
    model = hubconf.custom(path=str(tiny_checkpoint()), device="cpu")
    assert model.names == ["car", "pedestrian", "van"]


def test_custom_slices_a_tile_trained_checkpoint_as_detect_py_does(tmp_path, tiny_checkpoint):
    """The hub model of a --tile checkpoint slices by default (``model.slice = 'off'`` for whole frames)."""
    from detect import run

    image = np.random.default_rng(0).integers(0, 255, (96, 160, 3), dtype=np.uint8)  # RGB
    cv2.imwrite(str(tmp_path / "frame.png"), image[:, :, ::-1])
    weights = tiny_checkpoint(name="tiled.pt", opt={"tile": 48, "tile_overlap": 0.25, "tile_scale": 1.0})
    model = hubconf.custom(path=str(weights), device="cpu")
    model.conf, model.max_det = 0.1, 10_000  # no cut at max_det, where equal confidences could tie
    sliced = model(image, size=64).xyxy[0]
    expected = run(weights=str(weights), source=str(tmp_path / "frame.png"), imgsz=64, conf_thres=0.1,
                   iou_thres=0.45, max_det=10_000, nosave=True, project=str(tmp_path))[0]
    assert 0 < len(sliced) < 10_000
    ours, theirs = (boxes[np.lexsort(boxes.T[::-1])] for boxes in (sliced[:, :4].numpy(), expected.xyxy))
    np.testing.assert_allclose(ours, theirs, atol=1e-3)  # sorted by position: equal confidences come in any order
    model.slice = "off"
    assert not np.array_equal(model(image, size=64).xyxy[0].numpy(), sliced.numpy())


def test_the_hub_model_of_a_cbbl_checkpoint_adds_its_localization_column(tmp_path, tiny_checkpoint):
    """YOLOv5's pandas columns first; then C-BBL's uncertainty, or expected IoU where the checkpoint is calibrated."""
    from utils.cbbl.calibration import CHECKPOINT_KEY, UncertaintyCalibration
    from utils.checkpoint import load_checkpoint, save_checkpoint

    image = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    raw = tiny_checkpoint("cbbl", name="raw.pt")
    calibration = UncertaintyCalibration((0.5, 2.5), (0.9, 0.3), 100)
    calibrated = tmp_path / "calibrated.pt"
    save_checkpoint({**load_checkpoint(raw), CHECKPOINT_KEY: calibration.to_dict()}, calibrated)
    tables = {}
    for name, path in (("raw", raw), ("calibrated", calibrated)):
        model = hubconf.custom(path=str(path), device="cpu")
        model.conf = 0.1
        tables[name] = model(image, size=64).pandas().xyxy[0]
    assert list(tables["raw"].columns)[:7] == ["xmin", "ymin", "xmax", "ymax", "confidence", "class", "name"]
    assert list(tables["raw"].columns)[7:] == ["uncertainty"] and list(tables["calibrated"].columns)[7:] == \
        ["expected_iou"] and len(tables["raw"])
    np.testing.assert_allclose(tables["calibrated"]["expected_iou"],
                               calibration.expected_iou(tables["raw"]["uncertainty"].to_numpy()), rtol=1e-6)
    assert list(hubconf.custom(path=str(tiny_checkpoint(name="ciou.pt")), device="cpu")(image, size=64)
                .pandas().xyxy[0].columns) == ["xmin", "ymin", "xmax", "ymax", "confidence", "class", "name"]


def test_the_hub_model_of_a_cbbl_checkpoint_votes_as_detect_py_does(tmp_path, tiny_checkpoint):
    """Variance voting is detect.py's default for C-BBL models, so the hub model's too (``cbbl_fusion = False``:
    plain NMS, as ``--no-cbbl-fusion``)."""
    from detect import run

    image = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)  # RGB
    cv2.imwrite(str(tmp_path / "frame.png"), image[:, :, ::-1])
    weights = tiny_checkpoint("cbbl", name="cbbl.pt")
    model = hubconf.custom(path=str(weights), device="cpu")
    model.conf, model.max_det = 0.1, 10_000
    boxes = {}
    for fusion in (None, False):
        model.cbbl_fusion = fusion
        ours = model(image, size=64).xyxy[0][:, :4].numpy()
        theirs = run(weights=str(weights), source=str(tmp_path / "frame.png"), imgsz=64, conf_thres=0.1,
                     max_det=10_000, cbbl_fusion=fusion, nosave=True, project=str(tmp_path))[0].xyxy
        assert len(ours) and ours.shape == theirs.shape
        np.testing.assert_allclose(*(b[np.lexsort(b.T[::-1])] for b in (ours, theirs)), atol=1e-3)
        boxes[fusion] = ours
    assert not np.array_equal(boxes[None], boxes[False])
