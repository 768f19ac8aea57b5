"""Tests for utils/engine/options.py: the CLI surface, hyp overrides, validation, dict round trip."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

from utils.engine.options import DEFAULT_CFG, RESUME_LATEST, TrainOptions, build_parser, parse_options
from utils.hyp import Hyp, load_hyp


def test_defaults_make_a_small_run_with_the_demo_datas_recommended_recipe():
    opts = parse_options([])
    assert opts.cfg == DEFAULT_CFG and opts.data == "data/synthetic.yaml" and opts.weights == ""
    assert opts.optimizer is None and opts.hyp.optimizer == "AdamW"  # the demo hyp file names its optimizer
    assert (opts.batch_size, opts.nbs, opts.imgsz, opts.recommended) == (8, 8, 320, ("hyp", "nbs"))
    assert opts.hyp_path.endswith("data/hyps/hyp.demo.yaml") and opts.hyp.lr0 == load_hyp(opts.hyp_path).lr0
    assert opts.hyp.head.box_loss == "ciou" and opts.freeze == (0,)
    explicit = parse_options(["--hyp", "hyp.scratch-low.yaml", "--nbs", "64"])
    assert explicit.hyp == Hyp() and explicit.nbs == 64 and explicit.recommended == ()


def test_a_users_dataset_gets_yolov5s_recipe(tmp_path):
    data = tmp_path / "mine.yaml"
    data.write_text("path: .\ntrain: images\nval: images\nnames: [a]\n")
    opts = parse_options(["--data", str(data)])
    assert opts.hyp_path.endswith("hyp.scratch-low.yaml") and opts.hyp == Hyp() and opts.hyp.optimizer == "SGD"
    assert opts.nbs == 64 and opts.recommended == ()


def test_yolov5_flag_names_and_aliases():
    opts = parse_options(["--img", "64", "--batch", "4", "--epochs", "2", "--adam", "--cos-lr", "--rect",
                          "--freeze", "3", "--save-period", "1", "--patience", "7", "--cache", "--single-cls",
                          "--image-weights", "--multi-scale", "--sync-bn", "--quad", "--noval", "--nosave",
                          "--noplots", "--noautoanchor", "--exist-ok", "--project", "p", "--name", "n",
                          "--seed", "3", "--local_rank", "1", "--workers", "0", "--device", "cpu"])
    assert (opts.imgsz, opts.batch_size, opts.epochs, opts.optimizer, opts.adam) == (64, 4, 2, None, True)
    assert opts.cache == "ram" and opts.freeze == (3,) and opts.local_rank == 1 and opts.cos_lr
    assert parse_options(["--imgsz", "96", "--batch-size", "2"]).imgsz == 96
    assert parse_options(["--resume"]).resume == RESUME_LATEST
    assert parse_options(["--evolve"]).evolve == 300


def test_cli_overrides_win_over_the_hyp_file(tmp_path):
    hyp_file = tmp_path / "hyp.yaml"
    hyp_file.write_text(yaml.safe_dump({"lr0": 0.002, "head": {"box_loss": "ciou", "bins": 9}}))
    opts = parse_options(["--hyp", str(hyp_file), "--box-loss", "cbbl", "--cbbl-bins", "15", "--cbbl-grid", "quantile",
                          "--cbbl-um-mode", "min", "--label-smoothing", "0.1", "--cbbl-space", "linear"])
    hyp = opts.hyp
    head = hyp.head
    assert hyp.lr0 == 0.002 and head.box_loss == "cbbl" and head.bins == 15 and head.grid == "quantile"
    assert head.um_mode == "min" and hyp.label_smoothing == 0.1 and head.space == "linear"
    assert opts.hyp_path == str(hyp_file)


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs"),
    (["--hyp", "missing.yaml"], "missing.yaml"),
    (["--cfg", "models/nope.yaml"], "nope.yaml"),
    (["--label-smoothing", "2"], "label_smoothing"),
    (["--cache", "disk"], "disk"),
    (["--adam", "--optimizer", "SGD"], "--adam"),
    (["--cos-lr", "--linear-lr"], "--linear-lr"),
])
def test_bad_values_are_named(argv, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        parse_options(argv)


def test_unknown_choice_exits():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--optimizer", "RMSprop"])


def test_options_are_frozen_and_round_trip():
    opts = parse_options(["--box-loss", "cbbl", "--freeze", "0", "1", "2"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.epochs = 3
    values = opts.to_dict()
    assert isinstance(values["hyp"], dict) and values["freeze"] == [0, 1, 2]
    yaml.safe_dump(values)  # plain data only
    assert TrainOptions.from_dict(values) == opts
    with pytest.raises(ValueError, match="bogus"):
        TrainOptions.from_dict({**values, "bogus": 1})


def test_amp_is_on_by_default_and_no_amp_forces_float32():
    assert parse_options([]).amp is True
    assert parse_options(["--no-amp"]).amp is False
    assert TrainOptions(amp=False).to_dict()["amp"] is False  # stored in opt.yaml, so --resume keeps it


def test_options_stored_before_amp_resume_as_they_trained():
    """Checkpoints written before --amp trained mixed precision on CUDA only: a resume keeps that, never bf16."""
    stored = parse_options([]).to_dict()
    del stored["amp"]
    assert TrainOptions.from_dict(stored).amp is torch.cuda.is_available()
    assert TrainOptions.from_dict({**stored, "amp": False}).amp is False
