"""Tests for utils/engine/optim.py: parameter groups, optimizers, LR curves, accumulation."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.engine.optim import (
    BIAS_GROUP,
    TPH_ADAM_LR,
    TPH_RULES,
    YOLOV5_RULES,
    accumulate_steps,
    build_optimizer,
    choose_optimizer,
    lr_lambda,
    scaled_weight_decay,
    schedule_rules,
    split_param_groups,
    use_cosine_lr,
    warmup_accumulate,
    warmup_iterations,
)
from utils.hyp import load_hyp


def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1), nn.GroupNorm(1, 2))


def test_groups_cover_each_parameter_once():
    net = tiny_net()
    biases, weights, norm_weights = split_param_groups(net)
    assert len(norm_weights) == 2 and len(weights) == 2 and len(biases) == 3
    assert biases[0] is net[1].bias and norm_weights[0] is net[1].weight and weights[0] is net[0].weight
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
    tph_end = epochs if cosine else max(epochs - 1, 1)  # TPH-YOLOv5's linear curve ends an epoch earlier
    assert math.isclose(lr_lambda(epochs, lrf, cosine, TPH_RULES)(tph_end), lrf, rel_tol=1e-9, abs_tol=1e-12)
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


HYPS = Path(__file__).resolve().parents[2] / "data" / "hyps"


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize("hyp_file, flags, expected, warns", [
    ("hyp.scratch-low.yaml", {}, ("SGD", 0.01), False),  # YOLOv5's recipe from the file alone
    ("hyp.scratch-low.yaml", {"optimizer": "AdamW"}, ("AdamW", 0.01), True),  # SGD's lr0 under AdamW
    ("hyp.demo.yaml", {}, ("AdamW", 0.0032), False),
    ("hyp.demo.yaml", {"optimizer": "Adam"}, ("Adam", 0.0032), False),  # same family, same lr scale
    ("hyp.demo.yaml", {"optimizer": "SGD"}, ("SGD", 0.0032), True),
    ("hyp.VisDrone.yaml", {"adam": True}, ("Adam", TPH_ADAM_LR), False),  # TPH's --adam: lr0 unused
    ("hyp.VisDrone.yaml", {"optimizer": "Adam"}, ("Adam", 0.0032), True),
    ("hyp.VisDrone.yaml", {}, ("SGD", 0.0032), False),  # YOLOv5's SGD fine-tuning lr0
    ({"lr0": 0.001}, {}, ("SGD", 0.001), True),  # a YOLOv5 hyp without 'optimizer', tuned for Adam
])
def test_optimizer_comes_from_flags_or_the_hyp_file_and_mismatches_warn(hyp_file, flags, expected, warns, caplog):
    hyp = load_hyp(hyp_file if isinstance(hyp_file, dict) else HYPS / hyp_file)
    with caplog.at_level(logging.WARNING, logger="utils.engine.optim"):
        chosen = choose_optimizer(hyp, hyp_name="my-hyp", **flags)
    assert chosen == expected
    messages = warnings_of(caplog)
    assert len(messages) == int(warns)
    if warns:  # one line naming the file and the way out
        other = "AdamW" if hyp.optimizer == "SGD" and chosen[0] == "SGD" else hyp.optimizer
        assert "my-hyp" in messages[0] and f"--optimizer {other}" in messages[0] and "\n" not in messages[0]


def test_lr_schedule_comes_from_flags_or_the_hyp_file():
    tph, yolov5 = load_hyp(HYPS / "hyp.VisDrone.yaml"), load_hyp(HYPS / "hyp.scratch-low.yaml")
    assert use_cosine_lr(tph) and not use_cosine_lr(yolov5)  # TPH-YOLOv5's default vs YOLOv5 v7.0's
    assert not use_cosine_lr(tph, linear_lr=True) and use_cosine_lr(yolov5, cos_lr=True)


def test_warmup_length_has_the_recipes_minimum():
    assert warmup_iterations(3.0, 10) == YOLOV5_RULES.min_warmup_iterations == 100  # 30 batches -> the minimum
    assert warmup_iterations(2.0, 10, TPH_RULES) == TPH_RULES.min_warmup_iterations == 1000
    assert warmup_iterations(2.0, 1618) == warmup_iterations(2.0, 1618, TPH_RULES) == 3236  # VisDrone --batch 4
    assert warmup_iterations(0.0, 1618) == 0


def test_tph_rules_come_with_tph_only_flags():
    assert schedule_rules() is YOLOV5_RULES
    assert schedule_rules(adam=True) is schedule_rules(linear_lr=True) is TPH_RULES


def test_bias_group_is_v7s_first_group():
    optimizer = build_optimizer(tiny_net(), "SGD")
    assert BIAS_GROUP == 0 and len(optimizer.param_groups[BIAS_GROUP]["params"]) == 3


def test_warmup_accumulation_ramps_like_yolov5():
    ramp = [warmup_accumulate(i, 100, 16.0) for i in range(101)]
    assert ramp[0] == 1 and ramp[-1] == 16 and ramp == sorted(ramp)
    assert ramp[10] == 2 and ramp[50] == 8  # 1 + 15 * 0.1 = 2.5 -> 2 (half to even); 1 + 7.5 = 8.5 -> 8
    assert warmup_accumulate(0, 100, 0.5) == 1  # a batch above the nominal one never accumulates


def test_groups_of_yolov5n_equal_the_references_groups():
    """Our split of yolov5n (width 0.0625, nc 3) holds as many parameters per role as YOLOv5 v7.0's
    smart_optimizer and TPH-YOLOv5's train.py made of the same graph (tests/fixtures/make_lr_traces.py)."""
    import json

    import numpy as np
    import yaml

    from models.yolo import Model

    traces = np.load(Path(__file__).resolve().parents[1] / "fixtures" / "lr_traces.npz", allow_pickle=False)
    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "models" / "yolov5n.yaml").read_text())
    cfg.update(nc=3, width_multiple=0.0625)
    ours = dict(zip(("bias", "weight", "norm"), map(len, split_param_groups(Model(cfg)))))
    for case in json.loads(str(traces["about"]))["cases"].values():
        assert dict(zip(case["roles"], case["group_sizes"])) == ours


def test_checkpoints_saved_in_the_legacy_group_order_resume_into_v7s_order():
    """Checkpoints written before the groups followed v7.0 held them as [norm, weights, biases]."""
    import torch

    from utils.engine.optim import GROUP_ORDER, LEGACY_GROUP_ORDER, reorder_saved_groups

    net = tiny_net()
    biases, weights, norms = split_param_groups(net)
    legacy = torch.optim.SGD(norms, lr=0.01, momentum=0.9)
    legacy.add_param_group({"params": weights, "weight_decay": 0.1})
    legacy.add_param_group({"params": biases})
    for param in net.parameters():
        param.grad = torch.randn_like(param)
    legacy.step()
    optimizer = build_optimizer(net, "SGD", weight_decay=0.1)
    optimizer.load_state_dict(reorder_saved_groups(legacy.state_dict(), LEGACY_GROUP_ORDER))
    for param in net.parameters():
        assert torch.equal(optimizer.state[param]["momentum_buffer"], legacy.state[param]["momentum_buffer"])
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.0, 0.1, 0.0]
    assert reorder_saved_groups(optimizer.state_dict(), GROUP_ORDER)["param_groups"][0]["weight_decay"] == 0.0
