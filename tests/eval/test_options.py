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
