"""Tests for utils/engine/optim.py: parameter groups, optimizers, LR curves, accumulation."""

from __future__ import annotations

import math

import pytest
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.engine.optim import accumulate_steps, build_optimizer, lr_lambda, scaled_weight_decay, split_param_groups


def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1), nn.GroupNorm(1, 2))


def test_groups_cover_each_parameter_once():
    net = tiny_net()
    norm_weights, weights, biases = split_param_groups(net)
    assert len(norm_weights) == 2 and len(weights) == 2 and len(biases) == 3
    ids = [id(p) for p in norm_weights + weights + biases]
    assert sorted(ids) == sorted(id(p) for p in net.parameters())


def test_frozen_parameters_are_left_out():
    net = tiny_net()
    net[0].weight.requires_grad_(False)
    _, weights, _ = split_param_groups(net)
    assert all(p is not net[0].weight for p in weights)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_only_weights_decay(name):
    optimizer = build_optimizer(tiny_net(), name, lr=0.01, momentum=0.9, weight_decay=0.1)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.0, 0.1, 0.0]
    assert all(g["lr"] == 0.01 for g in optimizer.param_groups)


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="RMSprop"):
        build_optimizer(tiny_net(), "RMSprop")


@settings(deadline=None, max_examples=25)
@given(epochs=st.integers(1, 300), lrf=st.floats(0.001, 1.0), cosine=st.booleans())
def test_lr_curve_ends(epochs, lrf, cosine):
    factor = lr_lambda(epochs, lrf, cosine)
    assert math.isclose(factor(0), 1.0)
    assert math.isclose(factor(epochs), lrf, rel_tol=1e-9, abs_tol=1e-12)
    values = [factor(e) for e in range(epochs + 1)]
    assert all(a >= b - 1e-12 for a, b in zip(values, values[1:]))


def test_accumulation_reaches_nominal_batch():
    assert accumulate_steps(16) == 4
    assert accumulate_steps(128) == 1
    assert accumulate_steps(8, 64) * 8 == 64
    assert math.isclose(scaled_weight_decay(5e-4, 16, 4), 5e-4)
    assert math.isclose(scaled_weight_decay(5e-4, 8, 1), 5e-4 / 8)  # --nbs 8: same decay per image
    with pytest.raises(ValueError):
        accumulate_steps(0)


def test_nominal_batch_auto_keeps_yolov5_value_on_large_sets():
    from utils.engine.optim import nominal_batch

    assert nominal_batch(0, 6471) == 64  # VisDrone train: YOLOv5's accumulation
    assert nominal_batch(0, 96) == 8  # the synthetic demo set: >= 12 steps per epoch
    assert nominal_batch(0, 5) == 1
    assert nominal_batch(32, 96) == 32  # an explicit --nbs wins
