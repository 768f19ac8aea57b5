"""models/yolo.py: the model contract, faithfulness to YOLOv5's published sizes, every config, the CLI."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from models.yolo import Model, layers_on_meta, load_model_yaml, main, resolve_model_config, transfer_state_dict
from tests.conftest import REPO_ROOT
from utils.head import HeadConfig

MODELS = REPO_ROOT / "models"
CBBL = {"box_loss": "cbbl", "bins": 11, "alpha": 4, "beta": 5, "space": "logit", "restore": "expectation"}
# Published YOLOv5 v6+ sizes at nc=80, 640 px: (parameters in millions, rounded to 0.1M, GFLOPs), and the
# exact parameter counts of YOLOv5's own model summaries.
PUBLISHED = {"n": (1.9, 4.5), "s": (7.2, 16.5), "m": (21.2, 49.0), "l": (46.5, 109.1), "x": (86.7, 205.7)}
EXACT_PARAMS = {"n": 1_872_157, "s": 7_235_389, "m": 21_190_557, "l": 46_563_709, "x": 86_749_405}
BIG_CONFIGS = ["yolov5m", "yolov5l", "yolov5x", "yolov5l-xs-tph", "yolov5x-xs-tph", "yolov5l-tph-plus",
               "yolov5s-xs-tph"]


def loss_like(outputs: list[torch.Tensor]) -> torch.Tensor:
    return sum(out.float().square().mean() for out in outputs)


def test_contract_nano_cbbl():
    torch.manual_seed(0)
    model = Model(MODELS / "yolov5n.yaml", nc=3, head=CBBL)
    images = torch.rand(2, 3, 128, 96)
    raw = model(images).raw
    assert [tuple(level.shape) for level in raw] == [(2, 3, 16, 12, 48), (2, 3, 8, 6, 48), (2, 3, 4, 3, 48)]
    assert model.stride.tolist() == [8.0, 16.0, 32.0] and model.nc == 3 and model.names == ["0", "1", "2"]
    assert model.detect is model.model[-1] and model.detect.num_extra == 1
    model.eval()
    pred, raw_eval = model(images)
    assert pred.shape == (2, 3 * (16 * 12 + 8 * 6 + 4 * 3), 5 + 3 + 1) and len(raw_eval) == 3
    assert (pred[..., 4:8] >= 0).all() and (pred[..., 4:8] <= 1).all() and (pred[..., 8] >= 0).all()


def test_yaml_rebuilds_the_same_model():
    model = Model(MODELS / "yolov5n-xs-tph.yaml", nc=5, head={"box_loss": "cbbl", "bins": 7, "beta": 3.0}).eval()
    clone = Model(model.yaml).eval()
    clone.load_state_dict(model.state_dict())
    assert clone.yaml == model.yaml and clone.detect.head == model.detect.head
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(images)[0], clone(images)[0])


@pytest.mark.parametrize("size", list(PUBLISHED))
def test_published_sizes_are_reproduced(size):
    model = Model(MODELS / f"yolov5{size}.yaml")
    info = model.info(640)
    params_m, gflops = PUBLISHED[size]
    assert info["params"] == EXACT_PARAMS[size]
    assert abs(info["params"] / 1e6 - params_m) / params_m < 0.03  # 1.9M is 1.87M rounded
    assert abs(info["gflops"] - gflops) / gflops < 0.03


@pytest.mark.parametrize("name, box_loss", [("yolov5n", "ciou"), ("yolov5s", "cbbl"), ("yolov5n-xs-tph", "ciou"),
                                       ("yolov5n-xs-tph", "cbbl")])
def test_small_configs_train_step_at_320(name, box_loss):
    torch.manual_seed(0)
    model = Model(MODELS / f"{name}.yaml", head={"box_loss": box_loss})
    raw = model(torch.rand(1, 3, 320, 320)).raw
    loss_like(raw).backward()
    assert raw[0].shape[2:4] == (320 // model.stride[0], 320 // model.stride[0])
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", BIG_CONFIGS)
def test_big_configs_build_and_step_slimmed(name):
    """The same graphs at a small width/depth: every row, block and level runs forward and backward."""
    cfg = load_model_yaml(MODELS / f"{name}.yaml")
    slim = Model({**cfg, "width_multiple": 0.0625, "depth_multiple": 0.33}, nc=2, head={"box_loss": "cbbl", "bins": 5})
    raw = slim(torch.rand(1, 3, 64, 64)).raw
    loss_like(raw).backward()
    assert len(raw) == slim.detect.nl and raw[0].shape[-1] == 4 * 5 + 1 + 2


def test_data_anchors_get_ordered_defaults():
    model = Model(MODELS / "yolov5n-xs-tph.yaml")
    assert model.anchors_from_data and model.detect.anchors.shape == (4, 4, 2)
    pixels = model.detect.anchors * model.stride.view(-1, 1, 1)
    assert (pixels.prod(-1).flatten().diff() > 0).all()
    assert torch.allclose(torch.tensor(model.yaml["anchors"]).view(4, 4, 2), pixels, atol=0.01)
    assert not Model(model.yaml).anchors_from_data


def test_reversed_anchors_are_refused():
    cfg = Model(MODELS / "yolov5n.yaml").yaml
    with pytest.raises(ValueError, match="small .*to large"):
        Model({**cfg, "anchors": cfg["anchors"][::-1]})


def test_transfer_state_dict_between_head_modes():
    source = Model(MODELS / "yolov5n.yaml", nc=80)
    target = Model(MODELS / "yolov5n.yaml", nc=3, head=CBBL)
    loaded, total, _ = transfer_state_dict(target, source.state_dict())
    assert 0 < loaded < total and total == len(target.state_dict())
    assert torch.equal(target.model[0].conv.weight, source.model[0].conv.weight)
    with torch.no_grad():
        source.detect.anchors.mul_(2.0)
    before = target.detect.anchors.clone()
    assert transfer_state_dict(target, source.state_dict())[:2] == (loaded, total)
    assert torch.equal(target.detect.anchors, before)  # anchors stay those of target.yaml


def test_channels_last_gives_the_same_output():
    model = Model(MODELS / "yolov5n-xs-tph.yaml").eval()
    images = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        reference = model(images)[0]
        model = model.to(memory_format=torch.channels_last)
        assert torch.allclose(model(images.to(memory_format=torch.channels_last))[0], reference, atol=1e-4)


def test_cli_prints_the_table(caplog):
    with caplog.at_level(logging.INFO):
        model = main(["--cfg", str(MODELS / "yolov5n.yaml"), "--img", "320", "--box-loss", "cbbl"])
    assert model.detect.box_mode == "cbbl"
    assert "SPPF" in caplog.text and "GFLOPs at 320 px" in caplog.text and "box_loss='cbbl'" in caplog.text


def test_cli_finds_bare_cfg_names_in_models_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--cfg", "yolov5n.yaml", "--img", "64"]).yaml["nc"] == 80
    with pytest.raises(FileNotFoundError, match="--cfg nope.yaml not found"):
        main(["--cfg", "nope.yaml"])


def test_layers_on_meta_count_what_model_builds():
    built = Model(MODELS / "yolov5n.yaml", nc=3)
    layers = layers_on_meta(MODELS / "yolov5n.yaml", 3, HeadConfig.from_dict(built.yaml["detect"]))
    assert sum(p.numel() for p in layers.parameters()) == sum(p.numel() for p in built.parameters())
    assert all(p.device.type == "meta" for p in layers.parameters())


def test_cli_names_the_bad_row(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text((MODELS / "yolov5n.yaml").read_text().replace("[-1, 3, C3, [512, False]]", "[-1, 3, C4, [512]]"))
    with pytest.raises(ValueError, match="line 28: layer 13.*unknown module 'C4'"):
        main(["--cfg", str(broken)])


def tiny_tph(swin_row: list) -> dict:
    """A 4-row C-BBL model with a Swin row (ours or TPH's) on a 13x7 map for a 52x28 image: padded windows."""
    return {"nc": 2, "anchors": 2, "detect": {"box_loss": "cbbl", "bins": 5},
            "backbone": [[-1, 1, "Conv", [8, 3, 2]], [-1, 1, "Conv", [16, 3, 2]], swin_row],
            "head": [[-1, 1, "Conv", [16, 3, 2]], [[2, 3], 1, "Detect", ["nc", "anchors"]]]}


SWIN_ROWS = [[-1, 2, "C3STRv2", [16, True, 1, 0.5, 4]], [-1, 2, "C3STR", [64]]]


class PredictionOnly(torch.nn.Module):
    def __init__(self, model: Model):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)[0]


@pytest.mark.parametrize("swin_row", SWIN_ROWS)
def test_forward_compiles_without_graph_breaks(swin_row):
    model = Model(tiny_tph(swin_row)).eval()
    images = torch.rand(1, 3, 52, 28)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(images)[0], model(images)[0], atol=1e-5)


@pytest.mark.parametrize("swin_row", SWIN_ROWS)
def test_onnx_export_matches_pytorch(tmp_path, swin_row):
    onnxruntime = pytest.importorskip("onnxruntime")
    model = PredictionOnly(Model(tiny_tph(swin_row)).eval()).eval()
    images = torch.rand(1, 3, 52, 28)
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(model, (images,), str(path), dynamo=False, opset_version=17, input_names=["images"])
    session = onnxruntime.InferenceSession(str(path))
    exported = session.run(None, {"images": images.numpy()})[0]
    with torch.no_grad():
        assert abs(exported - model(images).numpy()).max() < 1e-4


def test_bare_config_names_resolve_as_train_py_resolves_them(tmp_path, monkeypatch):
    from utils.engine.options import parse_options

    monkeypatch.chdir(tmp_path)
    found = resolve_model_config("yolov5n.yaml")
    assert found == REPO_ROOT / "models" / "yolov5n.yaml" == Path(parse_options(["--cfg", "yolov5n.yaml"]).cfg)
    assert load_model_yaml("yolov5n.yaml")["_source"] == str(found)
    with pytest.raises(FileNotFoundError, match="model config nope.yaml not found"):
        load_model_yaml("nope.yaml")
