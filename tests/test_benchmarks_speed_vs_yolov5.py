"""benchmarks/speed_vs_yolov5.py: our side of the tasks that need no reference venv, at tiny sizes."""

from __future__ import annotations

import json

from benchmarks.common import RESULT_PREFIX
from benchmarks.speed_vs_yolov5 import train_rss_child
from tests.conftest import make_yolo_dataset


def test_train_rss_child_trains_and_reports_its_peak_memory(tmp_path, capsys):
    images = make_yolo_dataset(tmp_path / "data", num_images=4)
    train_rss_child([str(images), "yolov5n", "64", "2", "2", "1"])
    line = [line for line in capsys.readouterr().out.splitlines() if line.startswith(RESULT_PREFIX)][-1]
    assert json.loads(line[len(RESULT_PREFIX):])["peak_rss_mb"] > 0
