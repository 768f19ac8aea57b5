"""benchmarks/speed_vs_yolov5.py: our side of the tasks that need no reference venv, at tiny sizes."""

from __future__ import annotations

import argparse
import json

from benchmarks.common import RESULT_PREFIX
from benchmarks.speed_vs_yolov5 import SPARSE, ours_infer, train_rss_child
from tests.conftest import make_yolo_dataset


def test_train_rss_child_trains_and_reports_its_peak_memory(tmp_path, capsys):
    images = make_yolo_dataset(tmp_path / "data", num_images=4)
    train_rss_child([str(images), "yolov5n", "64", "2", "2", "1"])
    line = [line for line in capsys.readouterr().out.splitlines() if line.startswith(RESULT_PREFIX)][-1]
    assert json.loads(line[len(RESULT_PREFIX):])["peak_rss_mb"] > 0


def test_sparse_inference_rows_decode_as_detect_does(tmp_path):
    args = argparse.Namespace(inputs=tmp_path, img=64, backends={}, infer_sizes=[64], warmup=0, repeats=1)
    timings = {runtime: ours_infer(args, "yolov5n", "cbbl", runtime) for runtime in ("torch", SPARSE)}
    assert all(timing["64"]["min_s"] > 0 for timing in timings.values())
    assert args.backends["yolov5n", "cbbl", "torch"].models[0].detect.decode_conf is None
    assert args.backends["yolov5n", "cbbl", SPARSE].models[0].detect.decode_conf == 0.25
