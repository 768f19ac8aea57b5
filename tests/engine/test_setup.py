"""Tests for utils/engine/setup.py: the one builder derives size-dependent settings from the size trained."""

from __future__ import annotations

import logging
import resource

import pytest
import torch
import yaml

from models.yolo import Model
from utils.engine.options import parse_options
from utils.engine.setup import build, check_memory, training_memory_floor
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
def test_tile_training_records_its_tiles_and_resumes_exactly(tmp_path, box, caplog):
    """--tile on 8 frames of 96 px (4 windows of 64 each), both heads: the tile settings travel in opt.yaml and
    the checkpoint, a killed run resumes to the uninterrupted run's weights (the tile set is rebuilt), and the
    final validation slices the full val frames into the training windows."""
    from tests.engine.test_run import killed_after_first_epoch, synthetic_yaml, tiny_argv
    from utils.checkpoint import load_checkpoint
    from utils.engine.run import run

    (tmp_path / "frames").mkdir()
    data = synthetic_yaml(tmp_path / "frames", 8, 4, 96)
    argv = [*tiny_argv(data, tmp_path), "--tile", "64", "--tile-overlap", "0.25", "--box-loss", box]
    caplog.set_level(logging.INFO)
    whole = run(parse_options([*argv, "--project", str(tmp_path / "whole")]))
    assert any(m.endswith("on 64x64 slices of the full frames") for m in caplog.messages)
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


def test_absurd_sizes_are_refused_before_anything_is_allocated(tmp_path, monkeypatch):
    """--img 100000 or width_multiple: 100 would die in the allocator (or swap for hours): refused in one line."""
    monkeypatch.setattr("utils.engine.setup.device_memory", lambda device: 128e9)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    wide = tmp_path / "wide.yaml"
    wide.write_text(yaml.safe_dump({**yaml.safe_load(open("models/yolov5n.yaml")), "width_multiple": 100}))
    opts = parse_options(["--img", "64", "--cfg", str(wide)])
    needed, params = training_memory_floor(opts, 2)
    assert params > 1e11 and needed > params * 16, "counted on the meta device, nothing allocated"
    with pytest.raises(ValueError, match=f"and {wide} \\([0-9,]+M parameters\\): training needs more than"):
        check_memory(opts, ["a", "b"], torch.device("cpu"))
    with pytest.raises(ValueError, match="--img 100000 --batch-size 8 and .* training needs more than 1,2"):
        check_memory(parse_options(["--img", "100000", "--cfg", "yolov5n.yaml"]), ["a"], torch.device("cpu"))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 1024**2, "under 1 GB more at peak"
    check_memory(parse_options(["--img", "1536", "--cfg", "yolov5l-xs-tph.yaml"]), ["a"] * 10, torch.device("cpu"))
    small, small_params = training_memory_floor(parse_options(["--img", "640", "--cfg", "yolov5s.yaml"]), 80)
    assert 7.0e6 < small_params < 7.3e6, "yolov5s: 7.2M parameters, as YOLOv5 reports"
