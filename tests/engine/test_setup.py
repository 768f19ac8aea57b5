"""Tests for utils/engine/setup.py: the one builder derives size-dependent settings from the size trained."""

from __future__ import annotations

import pytest
import torch

from models.yolo import Model
from utils.engine.options import parse_options
from utils.engine.setup import build
from utils.loss import ComputeLoss


@pytest.mark.parametrize("img, trained, beta", [(1000, 1024, 3.0), (1024, 1024, 3.0), (1000 - 64, 960, 5.0)])
def test_cbbl_beta_follows_the_size_training_uses(img, trained, beta):
    opts = parse_options(["--img", str(img), "--box-loss", "cbbl", "--cbbl-grid", "in", "--cfg", "yolov5n.yaml"])
    model, criterion, imgsz = build(opts, ["a", "b"], torch.device("cpu"))
    assert imgsz == trained
    assert model.yaml["detect"]["beta"] == beta  # what checkpoints store as model_yaml
    assert isinstance(model, Model) and isinstance(criterion, ComputeLoss)
    assert Model(model.yaml).detect.grid.points.allclose(model.detect.grid.points)


def test_builder_names_and_freezes():
    opts = parse_options(["--img", "64", "--cfg", "yolov5n.yaml", "--freeze", "2", "--single-cls"])
    model, _, imgsz = build(opts, ["item"], torch.device("cpu"))
    frozen = {name.split(".")[1] for name, p in model.named_parameters() if not p.requires_grad}
    assert imgsz == 64 and model.names == ["item"] and frozen == {"0", "1"}
