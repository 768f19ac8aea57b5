"""Tests for utils/infer/backend.py: .pt single and ensemble, attributes, and every bad-weights path.
(.onnx and .torchscript backends are exercised in tests/test_export.py.)"""

from __future__ import annotations

import logging

import pytest
import torch

import utils.torch_utils as torch_utils
from models.yolo import model_from_checkpoint
from tests.conftest import FOREIGN_FILES, assert_parity, foreign_checkpoint
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.infer.backend import DetectBackend
from utils.nms import non_max_suppression
from utils.torch_utils import cpu_has_native_bf16


@pytest.mark.parametrize("box, num_extra", [("regress", 0), ("cbbl", 1)])
def test_pt_backend_matches_the_model(tiny_checkpoint, box, num_extra):
    path = tiny_checkpoint(box)
    backend = DetectBackend(path, device="cpu", fuse=True)
    # the model's largest stride is 16; images still pad to 32, YOLOv5's DetectMultiBackend floor (as training)
    assert (backend.nc, backend.names, backend.stride) == (3, ["car", "pedestrian", "van"], 32)
    assert (backend.num_extra, backend.box_mode, backend.is_onnx) == (num_extra, box, False)
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    pred = backend(images)
    assert pred.shape == (2, 3 * (8 * 12 + 4 * 6), 5 + 3 + num_extra)
    reference = model_from_checkpoint(load_checkpoint(path), use_ema=True)(images)[0]  # unfused
    torch.testing.assert_close(pred, reference, atol=1e-4, rtol=1e-4)
    assert backend.channels_last  # CPU runs channels-last (the comparison above covers its outputs)
    assert backend.models[0].model[0].conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_ensemble_concatenates_members(tiny_checkpoint):
    first, second = tiny_checkpoint("cbbl", name="a.pt", seed=0), tiny_checkpoint("cbbl", name="b.pt", seed=1)
    ensemble = DetectBackend([first, second])
    images = torch.rand(1, 3, 64, 64)
    each = ensemble.forward_each(images)
    assert len(each) == 2 and not torch.equal(each[0], each[1])
    torch.testing.assert_close(ensemble(images), torch.cat(each, 1))
    torch.testing.assert_close(each[1], DetectBackend(second)(images))


def test_mixed_ensemble_drops_the_uncertainty_column(tiny_checkpoint):
    mixed = DetectBackend([tiny_checkpoint("cbbl"), tiny_checkpoint("regress")])
    assert mixed.num_extra == 0 and mixed.box_mode == "mixed"
    assert mixed(torch.rand(1, 3, 32, 32)).shape[-1] == 8


def test_ensemble_with_other_classes_is_refused(tiny_checkpoint):
    other = tiny_checkpoint("regress", name="other.pt", names=["a", "b", "c"])
    with pytest.raises(ValueError, match="disagree on classes"):
        DetectBackend([tiny_checkpoint("regress"), other])


def test_bad_weights_raise_naming_the_file(tmp_path, tiny_checkpoint):
    with pytest.raises(ValueError, match=r"model\.h5.*unsupported"):
        DetectBackend(tmp_path / "model.h5")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        DetectBackend(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt.pt"):
        DetectBackend(corrupt)
    not_onnx = tmp_path / "fake.onnx"
    not_onnx.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="fake.onnx"):
        DetectBackend(not_onnx)
    with pytest.raises(ValueError, match="ensemble takes .pt"):
        DetectBackend([tiny_checkpoint("regress"), tmp_path / "fake.onnx"])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        DetectBackend(tiny_checkpoint("regress"))(torch.rand(3, 32, 32))


def test_nan_weights_are_refused_naming_the_file(tmp_path, tiny_checkpoint):
    checkpoint = load_checkpoint(tiny_checkpoint())
    name = next(key for key, value in checkpoint["model"].items() if value.is_floating_point())
    checkpoint["model"][name] = torch.full_like(checkpoint["model"][name], float("nan"))
    save_checkpoint(checkpoint, tmp_path / "diverged.pt")
    with pytest.raises(ValueError, match=r"diverged\.pt: 1 weight tensor\(s\) hold NaN/inf"):
        DetectBackend(tmp_path / "diverged.pt")


def test_nan_outputs_stop_with_a_clear_message(tiny_checkpoint, monkeypatch):
    backend = DetectBackend(tiny_checkpoint())
    model = backend.models[0]
    monkeypatch.setattr(model, "forward", lambda images: (torch.full((len(images), 4, 5 + model.nc), float("inf")),))
    with pytest.raises(ValueError, match="outputs hold NaN/inf"):
        backend(torch.zeros(1, 3, 64, 64))


@pytest.mark.parametrize("name", FOREIGN_FILES)
def test_foreign_checkpoints_give_their_authors_output(name, caplog):
    """YOLOv5 v7.0 and TPH-YOLOv5 files, loaded as detect/val/export load --weights (fused, EMA when present),
    give the output of the code that made them. Slow-ish (up to ~10 s each): real 0.5-12M parameter models."""
    path, expected = foreign_checkpoint(name)
    with caplog.at_level(logging.INFO):
        backend = DetectBackend(path, device="cpu")
    assert "read without running its pickled code" in caplog.text
    assert backend.nc == expected["nc"] and backend.stride == max(expected["strides"])
    assert_parity(backend(expected["input"]), expected["output"])


def test_sparse_decode_keeps_the_same_detections(tiny_checkpoint):
    backend = DetectBackend(tiny_checkpoint("cbbl"))
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    dense_pred = backend(images)
    dense = non_max_suppression(dense_pred, conf_thres=0.25, iou_thres=0.5, nc=backend.nc)
    backend.decode_only_above(0.25)
    sparse_pred = backend(images)
    sparse = non_max_suppression(sparse_pred, conf_thres=0.25, iou_thres=0.5, nc=backend.nc)
    assert sum(len(d) for d in dense) > 0 and (sparse_pred != dense_pred).any()  # some rows skipped, ...
    assert all(torch.equal(a, b) for a, b in zip(dense, sparse))  # ... none that NMS keeps


def test_side_variance_columns_toggle_for_cbbl_and_never_touch_a_regression_model(tiny_checkpoint, caplog):
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    cbbl = DetectBackend([str(tiny_checkpoint("cbbl"))], device=torch.device("cpu"))
    plain = cbbl(images)
    assert cbbl.decode_side_variance(True) and cbbl.num_extra == 5
    with_variance = cbbl(images)
    assert with_variance.shape == (*plain.shape[:2], plain.shape[2] + 4)
    assert torch.equal(with_variance[..., : plain.shape[2]], plain)
    assert not cbbl.decode_side_variance(False) and cbbl.num_extra == 1 and torch.equal(cbbl(images), plain)
    assert cbbl.decode_side_variance(None) and cbbl.num_extra == 5  # the default: on for C-BBL
    regress = DetectBackend([str(tiny_checkpoint("regress"))], device=torch.device("cpu"))
    before = regress(images)
    with caplog.at_level(logging.WARNING):
        assert not regress.decode_side_variance(None)
    assert not caplog.text  # by default a regression model is not told what it lacks
    with caplog.at_level(logging.WARNING):
        assert not regress.decode_side_variance(True)
    assert "no C-BBL box distributions" in caplog.text
    assert regress.num_extra == 0 and torch.equal(regress(images), before)


def test_half_on_a_cpu_without_native_bf16_runs_float32_with_one_warning(tiny_checkpoint, monkeypatch, caplog):
    monkeypatch.setattr(torch_utils, "cpu_has_native_bf16", lambda: False)
    path = tiny_checkpoint("cbbl")
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING):
        half = DetectBackend(path, device="cpu", half=True)
    assert not (half.bf16 or half.fp16) and "running in float32" in caplog.text
    assert torch.equal(half(images), DetectBackend(path, device="cpu")(images))


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bfloat16 (amx_bf16/avx512_bf16)")
@pytest.mark.parametrize("box", ["regress", "cbbl"])
def test_half_on_a_native_bf16_cpu_autocasts_with_a_float32_head(tiny_checkpoint, box):
    path = tiny_checkpoint(box)
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    half, full = DetectBackend(path, device="cpu", half=True), DetectBackend(path, device="cpu")
    assert half.bf16 and not half.fp16
    head = set(map(id, half.models[0].detect.parameters()))
    dtypes = {p.dtype for p in half.models[0].parameters() if id(p) not in head}
    assert dtypes == {torch.bfloat16} and all(p.dtype == torch.float32 for p in half.models[0].detect.parameters())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # the weights cast once, as autocast casts
        assert torch.equal(half(images), full.models[0](images.contiguous(memory_format=torch.channels_last))[0])
    inputs = []
    half.models[0].detect.m[0].register_forward_hook(lambda m, args, out: inputs.append(args[0].dtype))
    pred, reference = half(images), full(images)
    assert inputs == [torch.float32] and pred.dtype == torch.float32
    assert not torch.equal(pred, reference)  # bf16 did run
    torch.testing.assert_close(pred, reference, atol=0.5, rtol=0.02)  # boxes within 0.5 px, scores 2 %
