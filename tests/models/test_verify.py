"""models/verify.py: a checkpoint's graph is checked against its weights before anything real is built."""

from __future__ import annotations

import copy
import time

import pytest
import torch

from models.parse import parse_model
from models.verify import check_graph
from models.yolo import Model, load_model_yaml, model_from_checkpoint
from tests.conftest import REPO_ROOT
from utils.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture
def tiny(tmp_path):
    """(model_yaml, state dict) of a small real model."""
    model = Model(REPO_ROOT / "models" / "yolov5n.yaml", nc=3)
    return model.yaml, model.state_dict()


def meta_state(model_yaml: dict) -> dict[str, torch.Tensor]:
    """The state dict a graph would have, as meta tensors (no memory): what check_graph compares against."""
    with torch.device("meta"):
        layers, *_ = parse_model({**model_yaml, "detect": {}}, 3)
    return {f"model.{key}": value for key, value in layers.state_dict().items()}


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO_ROOT / "models").glob("*.yaml")))
def test_every_shipped_config_passes(config):
    model_yaml = load_model_yaml(REPO_ROOT / "models" / config)
    if isinstance(model_yaml["anchors"], int):  # checkpoints store explicit anchors; any values will do here
        detect_row = model_yaml["head"][-1]
        levels = len(detect_row[0]) - (detect_row[2] == "CLLADetect")
        model_yaml["anchors"] = [[10.0, 13.0] * model_yaml["anchors"]] * levels
    check_graph(model_yaml, meta_state(model_yaml), config)


def test_huge_repeat_count_is_refused_at_once(tiny):
    model_yaml, state = tiny
    bad = copy.deepcopy(model_yaml)
    bad["backbone"][2] = [-1, 200000, "C3", [64]]
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"evil\.pt: .*row 2 repeats C3 66000 times"):
        check_graph(bad, state, "evil.pt")
    assert time.perf_counter() - start < 1.0


def test_huge_width_is_refused(tiny):
    model_yaml, state = tiny
    with pytest.raises(ValueError, match=r"evil\.pt: .*channels, wider than any stored weight"):
        check_graph({**model_yaml, "width_multiple": 1e7}, state, "evil.pt")
    with pytest.raises(ValueError, match="width_multiple inf is not a positive number"):
        check_graph({**model_yaml, "width_multiple": float("inf")}, state, "evil.pt")


def test_graph_that_does_not_match_its_weights_is_named(tiny, tmp_path):
    model_yaml, state = tiny
    path = tmp_path / "edited.pt"
    save_checkpoint({"model": state, "ema": None, "model_yaml": {**model_yaml, "width_multiple": 0.5},
                     "names": ["a", "b", "c"]}, path)
    with pytest.raises(ValueError, match=r"edited\.pt: its model_yaml does not match its weights \(model\.0\.conv"):
        model_from_checkpoint(load_checkpoint(path), source=path)
    missing = {key: value for key, value in state.items() if not key.startswith("model.24.m.2")}
    with pytest.raises(ValueError, match=r"missing \['model.24.m.2.bias', 'model.24.m.2.weight'\]"):
        check_graph(model_yaml, missing, path)


def test_parameter_free_blowup_is_refused_before_allocating(tiny):
    """An upsample by 10^4 has no weights to compare; the meta probe's activation bound catches it."""
    model_yaml, state = tiny
    bad = copy.deepcopy(model_yaml)
    bad["head"][1] = [-1, 1, "nn.Upsample", [None, 10000, "nearest"]]
    with pytest.raises(ValueError, match=r"evil\.pt: .*layer 11 makes \d+ values from a 64x64 image"):
        check_graph(bad, state, "evil.pt")


def test_non_tensor_state_is_refused(tiny):
    model_yaml, state = tiny
    with pytest.raises(ValueError, match="x.pt: model_yaml must be a dict and the weights a non-empty state dict"):
        check_graph(model_yaml, {**state, "model.0.conv.weight": "not a tensor"}, "x.pt")
