"""Tests for utils/infer/backend.py: .pt single and ensemble, attributes, and every bad-weights path.
(.onnx and .torchscript backends are exercised in tests/test_export.py.)"""

from __future__ import annotations

import pytest
import torch

from models.yolo import model_from_checkpoint
from utils.checkpoint import load_checkpoint
from utils.infer.backend import DetectBackend


@pytest.mark.parametrize("box, num_extra", [("regress", 0), ("cbbl", 1)])
def test_pt_backend_matches_the_model(tiny_checkpoint, box, num_extra):
    path = tiny_checkpoint(box)
    backend = DetectBackend(path, device="cpu", fuse=True)
    assert (backend.nc, backend.names, backend.stride) == (3, ["car", "pedestrian", "van"], 16)
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
