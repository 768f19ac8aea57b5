"""Tests for utils/engine/transfer.py: --weights never load box logits under other head settings."""

from __future__ import annotations

import logging

import pytest
import torch

from models.yolo import Model
from tests.conftest import TINY_MODEL_YAML
from utils.engine.transfer import detect_prefix, head_difference, transfer_weights

CBBL_K11_BETA5 = {"box": "cbbl", "bins": 11, "alpha": 4.0, "beta": 5.0}


def checkpoint_of(head: dict, seed: int = 1, with_yaml: bool = True) -> dict:
    torch.manual_seed(seed)
    model = Model(TINY_MODEL_YAML, head=head)
    checkpoint = {"model": model.state_dict(), "ema": None}
    if with_yaml:
        checkpoint["model_yaml"] = model.yaml
    return checkpoint


def split_by_detect(model: Model, state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(Detect entries, other entries) of a state dict, floating-point tensors only."""
    prefix = detect_prefix(model)
    floats = {name: value for name, value in state.items() if value.is_floating_point()}
    return ({k: v for k, v in floats.items() if k.startswith(prefix)},
            {k: v for k, v in floats.items() if not k.startswith(prefix)})


def transfer(checkpoint: dict, head: dict, caplog) -> tuple[Model, dict[str, torch.Tensor]]:
    """A fresh model with ``head`` after transferring ``checkpoint``; also returns its state before."""
    torch.manual_seed(2)
    model = Model(TINY_MODEL_YAML, head=head)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="utils.engine.transfer"):
        transfer_weights(model, checkpoint, "--weights ckpt.pt")
    return model, before


@pytest.mark.parametrize("stored, requested, expected", [
    ({"box": "regress"}, CBBL_K11_BETA5, "box regress -> cbbl"),
    (CBBL_K11_BETA5, {**CBBL_K11_BETA5, "beta": 3.0}, "beta 5.0 -> 3.0"),  # same shapes: the silent case
    (CBBL_K11_BETA5, {**CBBL_K11_BETA5, "bins": 15}, "bins 11 -> 15"),
    (CBBL_K11_BETA5, {**CBBL_K11_BETA5, "space": "linear"}, "space logit -> linear"),
])
def test_other_box_encoding_rebuilds_the_head_and_says_so(stored, requested, expected, caplog):
    checkpoint = checkpoint_of(stored)
    model, before = transfer(checkpoint, requested, caplog)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "--weights ckpt.pt" in warnings[0] and expected in warnings[0]
    detect_now, others_now = split_by_detect(model, model.state_dict())
    detect_before, _ = split_by_detect(model, before)
    _, others_source = split_by_detect(model, checkpoint["model"])
    assert all(torch.equal(value, detect_before[name]) for name, value in detect_now.items())  # kept its init
    assert others_now and all(torch.equal(value, others_source[name]) for name, value in others_now.items())


def test_same_encoding_loads_the_head_silently_even_with_another_restore(caplog):
    checkpoint = checkpoint_of(CBBL_K11_BETA5)
    model, _ = transfer(checkpoint, {**CBBL_K11_BETA5, "restore": "top2"}, caplog)  # decode-only setting
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    detect_now, _ = split_by_detect(model, model.state_dict())
    detect_source, _ = split_by_detect(model, checkpoint["model"])
    assert detect_now and all(torch.equal(value, detect_source[name]) for name, value in detect_now.items())


def test_a_bare_state_dict_counts_as_yolov5_regression(caplog):
    transfer(checkpoint_of({"box": "regress"}, with_yaml=False), {"box": "regress"}, caplog)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    transfer(checkpoint_of({"box": "regress"}, with_yaml=False), CBBL_K11_BETA5, caplog)
    assert any("no head settings stored" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_head_difference_ignores_settings_regression_does_not_use():
    assert head_difference({"box": "regress", "bins": 11}, {"box": "regress", "bins": 7, "beta": 3.0}) == ""
    assert head_difference(None, {"box": "regress"}) == ""
    assert head_difference(CBBL_K11_BETA5, {**CBBL_K11_BETA5, "alpha": 3.0}) == "alpha 4.0 -> 3.0"
