"""Tests for hubconf.py: torch.hub entry points."""

from __future__ import annotations

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
