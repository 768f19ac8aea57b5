"""Tests for utils/eval/options.py: ValOptions validation."""

from __future__ import annotations

import pytest

import val
from utils.eval.options import ValOptions


@pytest.mark.parametrize("max_det", ["0", "-1"])
def test_max_det_below_one_is_refused(max_det: str):
    with pytest.raises(ValueError, match=f"--max-det {max_det}: keep at least 1 detection"):
        val.parse_options(["--weights", "x.pt", "--max-det", max_det])
    assert ValOptions(weights="x.pt", max_det=1).max_det == 1 and ValOptions(weights="x.pt").max_det is None


def test_protocol_names_come_from_the_protocol_table():
    from utils.eval.scoring import PROTOCOLS

    for name in PROTOCOLS:
        assert ValOptions(weights="a.pt", protocol=name).protocol == name
    with pytest.raises(ValueError, match=r"unknown protocol 'voc'; expected one of \('yolov5', 'coco', 'visdrone'\)"):
        ValOptions(weights="a.pt", protocol="voc")
