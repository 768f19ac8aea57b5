"""Tests for the hyperparameter files data/hyps/*.yaml against utils/hyp.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from utils.hyp import UNUSED_YOLOV5_KEYS, Hyp, load_hyp

HYP_FILES = sorted((Path(__file__).resolve().parents[1] / "data" / "hyps").glob("*.yaml"))


def test_hyp_files_exist():
    assert {path.name for path in HYP_FILES} >= {"hyp.scratch.yaml", "hyp.scratch-low.yaml", "hyp.VisDrone.yaml"}


@pytest.mark.parametrize("path", HYP_FILES, ids=lambda p: p.name)
def test_every_hyp_file_loads_and_sets_every_key(path):
    hyp = load_hyp(path)
    assert isinstance(hyp, Hyp)
    values = yaml.safe_load(path.read_text())
    keys = set(values) - set(UNUSED_YOLOV5_KEYS)  # YOLOv5's files carry them; they load and are dropped
    assert keys == set(Hyp().to_dict()) - {"anchors"}, "a hyp file should spell out every key"
    assert set(values["head"]) == {"box_loss"}, "the head's other defaults live in utils/head.py only"


def test_scratch_low_file_equals_the_defaults():
    assert load_hyp(HYP_FILES[0].parent / "hyp.scratch-low.yaml") == Hyp()


def test_visdrone_file_has_tph_values():
    hyp = load_hyp(HYP_FILES[0].parent / "hyp.VisDrone.yaml")
    assert (hyp.lr0, hyp.mosaic, hyp.mixup, hyp.head.box_loss) == (0.0032, 1.0, 0.2, "ciou")


def test_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "hyp.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(HYP_FILES[0].read_text()), "mosiac": 1.0}))
    with pytest.raises(ValueError, match="mosiac"):
        load_hyp(path)


@pytest.mark.parametrize("name, recipe, values", [
    # YOLOv5 v7.0's files of these names (TPH-YOLOv5's are the same; not hyp.scratch-high.yaml: v7.0's has lrf 0.1,
    # TPH's lrf 0.2, so we ship none of that name)
    ("hyp.scratch-low.yaml", ("SGD", "linear"), {"lrf": 0.01, "cls": 0.5, "obj": 1.0, "scale": 0.5, "mixup": 0.0}),
    ("hyp.scratch-med.yaml", ("SGD", "linear"), {"lrf": 0.1, "cls": 0.3, "obj": 0.7, "scale": 0.9, "mixup": 0.1,
                                                 "copy_paste": 0.0}),
    # TPH-YOLOv5's files of these names (its hyp.scratch.yaml = YOLOv5 v6.0's)
    ("hyp.scratch.yaml", ("SGD", "cosine"), {"lr0": 0.01, "lrf": 0.1, "cls": 0.5, "obj": 1.0, "scale": 0.5}),
    ("hyp.VisDrone.yaml", ("SGD", "cosine"), {"lr0": 0.0032, "lrf": 0.12, "momentum": 0.843, "anchor_t": 3.0}),
    ("hyp.demo.yaml", ("AdamW", "linear"), {"lr0": 0.0032}),  # ours: python train.py's CPU demo
])
def test_hyp_files_keep_their_namesakes_values_and_name_their_recipe(name, recipe, values):
    hyp = load_hyp(HYP_FILES[0].parent / name)
    assert (hyp.optimizer, hyp.lr_schedule) == recipe
    assert {key: getattr(hyp, key) for key in values} == values


def test_recipe_keys_are_checked():
    with pytest.raises(ValueError, match="optimizer"):
        load_hyp({"optimizer": "RMSprop"})
    with pytest.raises(ValueError, match="lr_schedule"):
        load_hyp({"lr_schedule": "step"})


def test_older_files_cbbl_in_maps_to_the_grid_once():
    assert load_hyp({"cbbl_in": True}).head.grid == "in"
    uniform = load_hyp({"cbbl_in": False, "cbbl_beta": 5.0})
    assert (uniform.head.grid, uniform.head.beta) == ("in", 0.0)  # the paper's uniform row
    assert load_hyp({}).head.grid == "auto"
    with pytest.raises(ValueError, match="grid"):
        load_hyp(cbbl_grid="equal")


def test_head_section_and_older_flat_keys_read_the_same(tmp_path, caplog):
    section = tmp_path / "hyp.head.yaml"
    section.write_text("anchor_t: 3.0\nhead:\n  box_loss: cbbl\n  bins: 9\n  grid: quantile\n  um: 0.5\n")
    flat = tmp_path / "hyp.flat.yaml"
    flat.write_text("anchor_t: 3.0\nbox_loss: cbbl\ncbbl_bins: 9\ncbbl_grid: quantile\ncbbl_um: 0.5\n")
    with caplog.at_level("WARNING"):
        new = load_hyp(section)
    assert caplog.text == ""
    with caplog.at_level("WARNING"):
        old = load_hyp(flat)
    assert new == old and new.head.anchor_t == 3.0 and (new.head.bins, new.head.um) == (9, 0.5)
    assert len(caplog.records) == 1 and str(flat) in caplog.text and "'head:'" in caplog.text
    assert new.to_dict()["head"]["bins"] == 9 and "cbbl_bins" not in new.to_dict()


@pytest.mark.parametrize("values, message", [
    ({"head": {"box_loss": "cbbl"}, "box_loss": "ciou"}, "both"),
    ({"head": {"centre_points": [0.0, 1.0]}}, "unknown head setting"),
    ({"head": {"bins": 1}}, "bins >= 2"),
    ({"head": [1, 2]}, "mapping"),
])
def test_bad_head_sections_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        load_hyp(values)


@pytest.mark.parametrize("line,message", [
    ("lr0: .nan", "lr0 must be a finite number, got nan"),
    ("momentum: .inf", "momentum must be a finite number, got inf"),
    ("anchor_t: -.inf", "anchor_t must be a finite number"),
    ("lr0: abc", "lr0 must be a number, got 'abc'"),
    ("lr0: nan", "lr0 must be a finite number"),
    ("head: {bins: 11.5}", "head.bins must be a whole number"),
    ("box: [1, 2]", "box must be a number"),
    ("fliplr: true", "fliplr must be a number"),
    ("optimizer: 3", "optimizer must be a name"),
])
def test_non_finite_or_non_numeric_values_are_refused_naming_file_and_key(tmp_path, line, message):
    """Issue 26 A7/B12: NaN passed the range checks and trained to NaN weights; 'abc' was a TypeError."""
    path = tmp_path / "hyp.bad.yaml"
    path.write_text(f"{line}\n")
    with pytest.raises(ValueError, match=message) as error:
        load_hyp(path)
    assert str(error.value).startswith(f"{path}: ")


def test_numeric_strings_and_whole_floats_take_the_field_type(tmp_path):
    path = tmp_path / "hyp.yaml"
    path.write_text("lr0: 1e-3\nhead: {bins: 9.0, alpha: 3e0}\nwarmup_epochs: 2\n")  # YAML 1.1: 1e-3 is a string
    hyp = load_hyp(path)
    assert hyp.lr0 == 0.001 and hyp.head.bins == 9 and isinstance(hyp.head.bins, int) and hyp.head.alpha == 3.0
    assert isinstance(hyp.warmup_epochs, float)
    with pytest.raises(ValueError, match="lr0 must be a finite number"):
        Hyp().replace(lr0=float("inf"))
