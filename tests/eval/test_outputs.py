"""Tests for utils/eval/outputs.py: val.py --save-txt rows are YOLOv5 v7.0's val.py rows for the same boxes."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from utils.eval.metrics import BoxSet
from utils.eval.outputs import write_txt

V7_TXT_ROWS = Path(__file__).parents[1] / "fixtures" / "detect_txt_v7.json"  # tests/fixtures/make_detect_txt_rows.py


@pytest.mark.parametrize("save_conf", [False, True])
def test_txt_rows_equal_yolov5_v7_val(tmp_path, save_conf):
    """Unrounded boxes (val.py's ``predn``), normalised in float32 and printed with %g, confidence last."""
    cases = json.loads(V7_TXT_ROWS.read_text())["cases"]
    det = [np.array(case["det"], np.float32).astype(np.float64) for case in cases]  # (n, 6) as collected
    image = np.concatenate([np.full(len(d), i) for i, d in enumerate(det)])
    rows = np.concatenate(det)
    collected = SimpleNamespace(dets=BoxSet(image, rows[:, :4], rows[:, 5], score=rows[:, 4]),
                                gts=BoxSet(np.zeros(0), np.zeros((0, 4)), np.zeros(0)),
                                image_paths=[f"{i}.jpg" for i in range(len(cases))],
                                image_shapes=[tuple(case["shape"]) for case in cases])
    labels = write_txt(collected, tmp_path, "yolov5", save_conf, save_hybrid=False)
    for index, case in enumerate(cases):
        expected = case["val_rows_conf" if save_conf else "val_rows"]
        assert (labels / f"{index}.txt").read_text().splitlines() == expected
