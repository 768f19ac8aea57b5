"""Tests for utils/engine/setup.py: the one builder derives size-dependent settings from the size trained."""

from __future__ import annotations

import pytest
import torch
import yaml

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


@pytest.mark.parametrize("box", ["ciou", "cbbl"])
def test_tile_training_records_its_tiles_and_resumes_exactly(tmp_path, box):
    """--tile on 8 frames of 96 px (4 windows of 64 each), both heads: the tile settings travel in opt.yaml and
    the checkpoint, and a killed run resumes to the uninterrupted run's weights (the tile set is rebuilt)."""
    from tests.engine.test_run import killed_after_first_epoch, synthetic_yaml, tiny_argv
    from utils.checkpoint import load_checkpoint
    from utils.engine.run import run

    (tmp_path / "frames").mkdir()
    data = synthetic_yaml(tmp_path / "frames", 8, 4, 96)
    argv = [*tiny_argv(data, tmp_path), "--tile", "64", "--tile-overlap", "0.25", "--box-loss", box]
    whole = run(parse_options([*argv, "--project", str(tmp_path / "whole")]))
    opt = yaml.safe_load((whole.save_dir / "opt.yaml").read_text())
    assert (opt["tile"], opt["tile_overlap"], opt["tile_scale"]) == (64, 0.25, 1.0)
    last = killed_after_first_epoch([*argv, "--project", str(tmp_path / "killed")])
    assert load_checkpoint(last)["opt"]["tile"] == 64
    resumed = run(parse_options(["--resume", str(last)]))
    expected, actual = (load_checkpoint(folder / "weights" / "epoch1.pt")
                        for folder in (whole.save_dir, resumed.save_dir))
    assert all(torch.equal(expected["model"][name], actual["model"][name]) for name in expected["model"])


def test_tile_options_are_validated():
    assert parse_options(["--tile", "640"]).tile_overlap == 0.25
    with pytest.raises(ValueError, match="drop --rect"):
        parse_options(["--tile", "640", "--rect"])
    with pytest.raises(ValueError, match="--tile-overlap"):
        parse_options(["--tile", "640", "--tile-overlap", "1"])
    with pytest.raises(ValueError, match="--tile must be >= 0"):
        parse_options(["--tile", "-1"])
