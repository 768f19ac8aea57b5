"""Tests for utils/torch_utils.py (ModelEMA; device helpers are the lead's)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from utils.torch_utils import ModelEMA


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
