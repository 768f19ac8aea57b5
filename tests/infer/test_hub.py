"""Tests for utils/infer/hub.py's Detections helpers that YOLOv5 users call: crop(), show(), tolist(); AutoShape.amp."""

from __future__ import annotations

import inspect
import logging
import sys

import numpy as np
import pytest
import torch

from utils.annotate import crop_box
from utils.infer.hub import AutoShape, Detections
from utils.infer.options import DetectOptions
from utils.torch_utils import cpu_has_native_bf16


@pytest.fixture
def results() -> Detections:
    """Two RGB images: two boxes in the first, none in the second."""
    rng = np.random.default_rng(0)
    ims = [rng.integers(0, 255, (60, 80, 3), dtype=np.uint8), rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)]
    pred = [torch.tensor([[10.0, 5.0, 30.0, 25.0, 0.9, 1.0], [40.0, 20.0, 70.0, 50.0, 0.5, 0.0]]), torch.zeros(0, 6)]
    return Detections(ims, pred, ["a.jpg", "b.png"], ["car", "van"])


def test_tolist_gives_one_detections_per_image(results):
    parts = results.tolist()
    assert [len(part) for part in parts] == [1, 1] and [part.files for part in parts] == [["a.jpg"], ["b.png"]]
    assert torch.equal(parts[0].xyxy[0], results.xyxy[0]) and torch.equal(parts[1].xywhn[0], results.xywhn[1])
    assert parts[0].names == ["car", "van"] and parts[0].ims[0] is results.ims[0]


def test_crop_returns_and_saves_each_box(results, tmp_path):
    crops = results.crop(save=True, save_dir=tmp_path / "exp")
    assert [(c["cls"], c["label"]) for c in crops] == [(1, "van 0.90"), (0, "car 0.50")]
    assert crops[0]["box"] == [10.0, 5.0, 30.0, 25.0]
    expected = crop_box(np.ascontiguousarray(results.ims[0][:, :, ::-1]), [10.0, 5.0, 30.0, 25.0])
    np.testing.assert_array_equal(crops[0]["im"], expected)  # BGR, as YOLOv5's crop() returns it
    saved = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.jpg"))
    assert saved == ["exp/crops/car/a_1.jpg", "exp/crops/van/a_0.jpg"]
    assert len(results.crop(save=False)) == 2 and len(list(tmp_path.rglob("*.jpg"))) == 2
    assert results.crop(save=True, save_dir=tmp_path / "exp")[0]["label"] == "van 0.90"
    assert (tmp_path / "exp2" / "crops" / "van" / "a_0.jpg").is_file(), "a new folder, as YOLOv5 increments it"


def test_show_without_a_display_says_so(results, monkeypatch, caplog):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    with caplog.at_level(logging.WARNING):
        results.show()
    assert caplog.messages == ["results.show(): no display here (DISPLAY is not set); use results.save() to write "
                               "the images or results.render() to get them as arrays"]
    caplog.clear()
    monkeypatch.setenv("DISPLAY", ":99")
    shown = []
    monkeypatch.setattr("PIL.ImageShow.show", lambda image, title=None: shown.append((image.size, title)) or False)
    with caplog.at_level(logging.WARNING):
        results.show()
    assert shown == [((80, 60), "a.jpg")] and "no image viewer found" in caplog.text


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bfloat16 (amx_bf16/avx512_bf16)")
def test_autoshape_amp_runs_bf16_on_a_native_cpu_with_a_float32_head():
    """YOLOv5's ``model.amp = True``: autocast inference (bf16 on CPU), the prediction convs float32."""
    from models.yolo import Model
    from tests.conftest import TINY_MODEL_YAML

    torch.manual_seed(0)
    hub = AutoShape(Model(TINY_MODEL_YAML))
    hub.conf = 0.0
    seen = []
    hub.model.detect.m[0].register_forward_hook(lambda m, args, out: seen.append(args[0].dtype))
    first = next(m for m in hub.model.modules() if isinstance(m, torch.nn.Conv2d))
    first.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    hub(image, size=64)
    hub.amp = True
    hub(image, size=64)
    assert seen == [torch.float32, torch.float32, torch.bfloat16, torch.float32]


def test_autoshape_settings_are_detect_py_defaults():
    """torch.hub users get detect.py's operating point: AutoShape reads DetectOptions' defaults, not copies."""
    defaults = DetectOptions()
    assert (AutoShape.conf, AutoShape.iou, AutoShape.agnostic, AutoShape.classes, AutoShape.max_det,
            AutoShape.cbbl_fusion) == (defaults.conf_thres, defaults.iou_thres, defaults.agnostic_nms, defaults.classes,
                                       defaults.max_det, defaults.cbbl_fusion)
    assert inspect.signature(AutoShape.forward).parameters["size"].default == defaults.imgsz
