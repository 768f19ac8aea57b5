"""Tests for utils/torch_utils.py (ModelEMA, the mixed-precision helpers; device helpers are the lead's)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import utils.torch_utils as torch_utils
from utils.torch_utils import ModelEMA, autocast, autocast_dtype, cpu_has_native_bf16, float32_under_cpu_autocast


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_ema_follows_the_decay_formula():
    model = tiny_net()
    ema = ModelEMA(model, decay=0.9, tau=1.0)
    start = ema.ema[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    decay = 0.9 * (1 - math.exp(-1.0))
    expected = decay * start + (1 - decay) * model[0].weight
    assert torch.allclose(ema.ema[0].weight, expected)
    assert ema.updates == 1


def test_ema_copies_integer_buffers_and_freezes_its_params():
    model = tiny_net()
    ema = ModelEMA(model)
    model.train()
    model(torch.randn(4, 3))
    ema.update(model)
    assert ema.ema[1].num_batches_tracked.item() == 1
    assert not any(p.requires_grad for p in ema.ema.parameters())
    assert not ema.ema.training


def test_ema_state_round_trip():
    model = tiny_net()
    ema = ModelEMA(model)
    for _ in range(3):
        with torch.no_grad():
            model[0].bias.add_(0.5)
        ema.update(model)
    restored = ModelEMA(tiny_net())
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 3
    for key, value in ema.ema.state_dict().items():
        assert torch.equal(value, restored.ema.state_dict()[key])


def test_ema_rejects_a_foreign_state():
    ema = ModelEMA(tiny_net())
    with pytest.raises(RuntimeError):
        ema.load_state_dict({"ema": {"nope": torch.zeros(1)}, "updates": 0})


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """Write a fake /proc/cpuinfo with the given flags line and probe it afresh."""
    def write(flags: str) -> bool:
        path = tmp_path / "cpuinfo"
        path.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
        monkeypatch.setattr(torch_utils, "CPUINFO", path)
        cpu_has_native_bf16.cache_clear()
        return cpu_has_native_bf16()
    yield write
    cpu_has_native_bf16.cache_clear()


def test_native_bf16_probe_reads_the_amx_and_avx512_bf16_flags(cpuinfo, tmp_path, monkeypatch):
    assert cpuinfo("fpu sse avx2 avx512f avx512bw") is False  # AVX-512 alone only emulates bf16
    assert cpuinfo("fpu avx512f avx512_bf16") is True
    assert cpuinfo("fpu amx_tile amx_bf16") is True
    monkeypatch.setattr(torch_utils, "CPUINFO", tmp_path / "absent")  # not Linux: unknown means no
    cpu_has_native_bf16.cache_clear()
    assert cpu_has_native_bf16() is False


def test_cpu_without_native_bf16_never_autocasts(monkeypatch):
    monkeypatch.setattr(torch_utils, "cpu_has_native_bf16", lambda: False)
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu) is None
    with autocast(cpu, enabled=True):
        assert not torch.is_autocast_enabled("cpu")
        assert nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float32


def test_cpu_with_native_bf16_autocasts_only_when_enabled(monkeypatch):
    monkeypatch.setattr(torch_utils, "cpu_has_native_bf16", lambda: True)
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu) == torch.bfloat16 and autocast_dtype(torch.device("cuda", 0)) == torch.float16
    with autocast(cpu, enabled=False):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(cpu, enabled=True):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


class TwoLayers(nn.Module):
    """A bf16 'backbone' layer and a head layer wrapped by float32_under_cpu_autocast."""

    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

    @float32_under_cpu_autocast
    def head_forward(self, features):
        return self.head(features[0]), torch.is_autocast_enabled("cpu")

    def forward(self, x):
        return self.head_forward([self.body(x)])


def test_float32_head_runs_outside_cpu_autocast_on_float32_inputs():
    model, x = TwoLayers(), torch.randn(3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.body(x)
        out, autocast_inside = model(x)
    assert features.dtype == torch.bfloat16  # autocast is on around the head
    assert out.dtype == torch.float32 and not autocast_inside
    assert torch.equal(out, model.head(features.float()))  # the bf16 features, cast up, in float32
    plain, autocast_inside = model(x)  # outside autocast nothing changes
    assert plain.dtype == torch.float32 and not autocast_inside
