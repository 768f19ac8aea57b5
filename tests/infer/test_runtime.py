"""Tests for utils/infer/runtime.py: ONNX Runtime over an in-memory export, and the input-memory check."""

from __future__ import annotations

import resource

import cv2
import numpy as np
import pytest
import torch

from detect import run
from utils.infer.runtime import check_input_memory, load_backend


@pytest.mark.parametrize("box", ["regress", "cbbl"])
def test_onnxruntime_runtime_matches_torch_and_writes_nothing_beside_the_weights(tmp_path, tiny_checkpoint, box):
    pytest.importorskip("onnxruntime")
    weights = tiny_checkpoint(box)
    before = sorted(weights.parent.iterdir())
    ort = load_backend([str(weights)], torch.device("cpu"), runtime="onnxruntime")
    eager = load_backend([str(weights)], torch.device("cpu"))
    assert ort.is_onnx and not eager.is_onnx and (ort.nc, ort.num_extra) == (eager.nc, eager.num_extra)
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))  # any shape: dynamic export
    torch.testing.assert_close(ort(images), eager(images), atol=1e-3, rtol=1e-4)
    assert sorted(weights.parent.iterdir()) == before
    with pytest.raises(ValueError, match="runtime"):
        load_backend([str(weights)], torch.device("cpu"), runtime="tensorrt")


def test_onnxruntime_runtime_exports_the_side_variances_only_for_fusion(tiny_checkpoint):
    """--cbbl-fusion with --runtime onnxruntime: the in-memory export carries the side variances, and fuses as the
    PyTorch model does; without it the export skips them (they cost ONNX Runtime time on every call)."""
    weights = tiny_checkpoint("cbbl")
    assert not load_backend([str(weights)], torch.device("cpu"), runtime="onnxruntime").has_side_variance
    ort = load_backend([str(weights)], torch.device("cpu"), runtime="onnxruntime", cbbl_fusion=True)
    eager = load_backend([str(weights)], torch.device("cpu"))
    assert ort.decode_side_variance(True) and eager.decode_side_variance(True)
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ort(images), eager(images), atol=1e-3, rtol=1e-4)


def test_an_absurd_imgsz_is_refused_before_anything_is_allocated(tmp_path, tiny_checkpoint, monkeypatch):
    """--imgsz 100000 would letterbox a 30 GB image: refused in one line, under 1 GB of memory, no run folder."""
    monkeypatch.setattr("utils.infer.runtime.device_memory", lambda device: 128e9)
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((32, 32, 3), np.uint8))
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(ValueError, match="--imgsz 100000 100000: a batch of 1 needs more than 230 GB .* has 128 GB"):
        run(weights=str(tiny_checkpoint()), source=str(tmp_path / "a.png"), imgsz=100000, project=str(tmp_path / "r"))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 1024**2
    assert not (tmp_path / "r").exists()
    backend = load_backend([str(tiny_checkpoint())], torch.device("cpu"))
    check_input_memory(backend, (1536, 1536), 8)  # a real size passes
