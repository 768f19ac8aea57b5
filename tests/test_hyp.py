"""Tests for the hyperparameter files data/hyps/*.yaml against utils/hyp.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from utils.hyp import Hyp, load_hyp

HYP_FILES = sorted((Path(__file__).resolve().parents[1] / "data" / "hyps").glob("*.yaml"))


def test_hyp_files_exist():
    assert {path.name for path in HYP_FILES} >= {"hyp.scratch.yaml", "hyp.VisDrone.yaml"}


@pytest.mark.parametrize("path", HYP_FILES, ids=lambda p: p.name)
def test_every_hyp_file_loads_and_sets_every_key(path):
    hyp = load_hyp(path)
    assert isinstance(hyp, Hyp)
    values = yaml.safe_load(path.read_text())
    assert set(values) == set(Hyp().to_dict()) - {"anchors"}, "a hyp file should spell out every key"


def test_scratch_file_equals_the_defaults():
    assert load_hyp(HYP_FILES[0].parent / "hyp.scratch.yaml") == Hyp()


def test_visdrone_file_has_tph_values():
    hyp = load_hyp(HYP_FILES[0].parent / "hyp.VisDrone.yaml")
    assert (hyp.lr0, hyp.mosaic, hyp.mixup, hyp.box_loss) == (0.0032, 1.0, 0.2, "ciou")


def test_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "hyp.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(HYP_FILES[0].read_text()), "mosiac": 1.0}))
    with pytest.raises(ValueError, match="mosiac"):
        load_hyp(path)


def test_older_files_cbbl_in_maps_to_the_grid_once():
    assert load_hyp({"cbbl_in": True}).cbbl_grid == "in"
    uniform = load_hyp({"cbbl_in": False, "cbbl_beta": 5.0})
    assert (uniform.cbbl_grid, uniform.cbbl_beta) == ("in", 0.0)  # the paper's uniform row
    assert load_hyp({}).cbbl_grid == "auto"
    with pytest.raises(ValueError, match="cbbl_grid"):
        load_hyp(cbbl_grid="equal")
