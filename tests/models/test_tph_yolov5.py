"""models/tph_yolov5.py and TPH's configs: TPH's graphs row for row, its parameter counts, its mask quirk,
and our C-BBL head on each of its graphs."""

from __future__ import annotations

import pytest
import torch

from models.parse import parse_model
from models.tph_yolov5 import C3STR, SWIN_DROP_PATH, SWIN_MASK_VALUE, SwinTransformerLayer, tph_shift_mask
from models.yolo import Model, load_model_yaml
from tests.conftest import REPO_ROOT, foreign_checkpoint
from utils.head import HeadConfig
from utils.hyp import load_hyp
from utils.loss import ComputeLoss, LossSettings

MODELS = REPO_ROOT / "models"
# Measured with TPH-YOLOv5's own code (@052dfeb) at nc=10: parameters and rows.
TPH_COUNTS = {"yolov5l-xs-tph": (45_460_524, 32), "yolov5l-xs-tr-cbam-spp-bifpn": (60_455_156, 40),
              "yolov5l-tph-plus": (41_563_927, 25)}
FIXTURE_OF = {"yolov5l-xs-tph": "tph-yolov5l-xs-tph-s.pt",
              "yolov5l-xs-tr-cbam-spp-bifpn": "tph-yolov5l-xs-tr-cbam-spp-bifpn-s.pt",
              "yolov5l-tph-plus": "tph-yolov5l-tph-plus-s.pt"}
SCALES = {"n": (0.33, 0.25), "s": (0.33, 0.5), "m": (0.67, 0.75), "x": (1.33, 1.25)}


def rows(model_yaml: dict) -> list:
    return list(model_yaml["backbone"]) + list(model_yaml["head"])


@pytest.mark.parametrize("name", TPH_COUNTS)
def test_tph_configs_have_tph_parameter_counts(name):
    model_yaml = load_model_yaml(MODELS / f"{name}.yaml")
    levels = len(rows(model_yaml)[-1][0]) - (rows(model_yaml)[-1][2] == "CLLADetect")
    build = {**model_yaml, "nc": 10, "anchors": [[0.0] * 2 * model_yaml["anchors"]] * levels, "detect": {}}
    with torch.device("meta"):  # counts only: no memory for 45-60M parameters
        layers, *_ = parse_model(build, 3)
    assert (sum(p.numel() for p in layers.parameters()), len(layers)) == TPH_COUNTS[name]


@pytest.mark.parametrize("name", TPH_COUNTS)
def test_tph_configs_are_the_graphs_tph_built_the_fixtures_from(name):
    _, expected = foreign_checkpoint(FIXTURE_OF[name])
    assert rows(load_model_yaml(MODELS / f"{name}.yaml")) == rows(expected["yaml"])


@pytest.mark.parametrize("name", TPH_COUNTS)
@pytest.mark.parametrize("size", SCALES)
def test_scaled_variants_are_tph_rows_at_yolov5_multiples(name, size):
    large = load_model_yaml(MODELS / f"{name}.yaml")
    scaled = load_model_yaml(MODELS / f"{name.replace('yolov5l', f'yolov5{size}')}.yaml")
    assert rows(scaled) == rows(large) and scaled["anchors"] == large["anchors"]
    assert (scaled["depth_multiple"], scaled["width_multiple"]) == SCALES[size]


@pytest.mark.parametrize("name", ["yolov5n-xs-tph", "yolov5n-xs-tr-cbam-spp-bifpn", "yolov5n-tph-plus"])
def test_cbbl_head_trains_and_decodes_on_every_tph_graph(name):
    torch.manual_seed(0)
    hyp = load_hyp(box_loss="cbbl")
    model = Model(MODELS / f"{name}.yaml", nc=3, head=HeadConfig.from_hyp(hyp, 64))
    detect = model.detect
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.2, 0.3], [1, 2, 0.3, 0.6, 0.1, 0.1]])
    loss, _ = ComputeLoss(model, LossSettings.from_hyp(hyp), imgsz=64)(model(torch.rand(2, 3, 64, 64)), targets)
    loss.backward()
    assert torch.isfinite(loss) and all(conv.weight.grad.abs().sum() > 0 for conv in detect.prediction_convs())
    with torch.no_grad():
        pred = model.eval()(torch.rand(1, 3, 64, 96))[0]
    cells = detect.na * sum((64 // int(s)) * (96 // int(s)) for s in detect.stride)
    assert pred.shape == (1, cells, 5 + 3 + 1) and detect.box_mode == "cbbl"


def test_tph_shift_mask_keeps_its_quirk():
    """Only rows 0 and rows-window get column regions in the first band: row 1 sees across column regions."""
    mask = tph_shift_mask(16, 16, 8, 4)  # (4 windows, 64, 64), windows row-major over the 16x16 map
    top_right = mask[1]  # rows 0-7, cols 8-15: columns 8-11 are region 1, 12-15 region 2
    token = lambda row, col: row * 8 + (col - 8)  # noqa: E731
    assert top_right[token(0, 9), token(0, 13)] == SWIN_MASK_VALUE  # row 0: regions kept apart
    assert top_right[token(1, 9), token(1, 13)] == 0  # row 1: all label 0 in TPH's code
    assert top_right[token(1, 9), token(0, 9)] == SWIN_MASK_VALUE  # row 0 col 9 has label 1, row 1 has 0
    bottom = mask[3]  # rows 8-15, cols 8-15: bands [-8:-4] and [-4:] x column regions, all separated
    assert bottom[token(8 - 8, 9), token(12 - 8, 9)] == SWIN_MASK_VALUE
    assert bottom[token(13 - 8, 13), token(15 - 8, 15)] == 0


def test_swin_layers_run_on_odd_sizes_and_drop_paths_only_when_wide():
    block = C3STR(32, 32, n=2).eval()
    assert [layer.shift for layer in block.m.tr] == [0, 4]
    x = torch.rand(1, 32, 13, 7)
    with torch.no_grad():
        assert block(x).shape == x.shape and torch.equal(block(x), block(x))
    assert SwinTransformerLayer(352, 11).drop_prob == SWIN_DROP_PATH and SwinTransformerLayer(320, 10).drop_prob == 0
