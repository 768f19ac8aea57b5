"""benchmarks/speed_vs_yolov5.py: our side of the tasks that need no reference venv, at tiny sizes."""

from __future__ import annotations

import argparse
import json
import sys

import pytest
import torch

from benchmarks import speed_vs_yolov5
from benchmarks.common import NUM_CLASSES, RESULT_PREFIX, synthetic_batch
from benchmarks.speed_vs_yolov5 import (
    SPARSE,
    SPARSE_PLAIN,
    markdown_table,
    ours_infer,
    ours_train_step,
    summarise,
    train_rss_child,
)
from tests.conftest import make_yolo_dataset
from utils.torch_utils import cpu_has_native_bf16


def test_train_rss_child_trains_and_reports_its_peak_memory(tmp_path, capsys):
    images = make_yolo_dataset(tmp_path / "data", num_images=4)
    train_rss_child([str(images), "yolov5n", "64", "2", "2", "1"])
    line = [line for line in capsys.readouterr().out.splitlines() if line.startswith(RESULT_PREFIX)][-1]
    assert json.loads(line[len(RESULT_PREFIX):])["peak_rss_mb"] > 0


def test_sparse_inference_rows_decode_as_detect_does(tmp_path):
    args = argparse.Namespace(inputs=tmp_path, img=64, backends={}, infer_sizes=[64], warmup=0, repeats=1)
    timings = {runtime: ours_infer(args, "yolov5n", "cbbl", runtime) for runtime in ("torch", SPARSE, SPARSE_PLAIN)}
    assert all(timing["64"]["min_s"] > 0 for timing in timings.values())
    assert args.backends["yolov5n", "cbbl", "torch", "fp32"].models[0].detect.decode_conf is None
    sparse = args.backends["yolov5n", "cbbl", SPARSE, "fp32"]
    assert sparse.models[0].detect.decode_conf == 0.25
    plain = args.backends["yolov5n", "cbbl", SPARSE_PLAIN, "fp32"]
    assert sparse.side_variance_on and plain.models[0].detect.decode_conf == 0.25 and not plain.side_variance_on


def test_bf16_rows_report_their_ratio_to_our_fp32_row_of_the_same_round():
    def measured(ours_fp32: float, ours_bf16: float, theirs: float) -> list[dict]:
        key = ("infer b1 640px", "yolov5n", "regress")
        return [{"key": (*key, variant), "ours": ours, "theirs": theirs, "ratio": ours / theirs, "load": 1.0}
                for variant, ours in (("torch cl", ours_fp32), ("torch cl bf16", ours_bf16))]

    rows = summarise([measured(1.0, 0.5, 2.0), measured(2.0, 0.6, 2.0), measured(1.0, 0.4, 1.0)])
    assert "vs_our_fp32" not in rows[0]
    assert rows[1]["vs_our_fp32"] == 0.4  # median of 0.5, 0.3, 0.4
    assert (rows[1]["ratio_median"], rows[1]["ratio_min"], rows[1]["ratio_max"]) == (0.3, 0.25, 0.4)
    assert markdown_table(rows, loaded=False).splitlines()[3].endswith("| 0.40 |")


def test_bf16_on_a_cpu_without_it_is_refused(monkeypatch):
    monkeypatch.setattr(speed_vs_yolov5, "cpu_has_native_bf16", lambda: False)
    assert speed_vs_yolov5.main(["--precisions", "bf16", "--ref-python", sys.executable]) == 2


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bfloat16 (amx_bf16/avx512_bf16)")
def test_bf16_train_step_and_inference_run_under_autocast(tmp_path):
    images, targets = synthetic_batch(1, 128, NUM_CLASSES)
    torch.save({"images": images, "targets": targets}, tmp_path / "train_batch.pt")
    args = argparse.Namespace(inputs=tmp_path, img=128, backends={}, infer_sizes=[128], warmup=0, repeats=1)
    assert ours_train_step(args, "yolov5n", "cbbl", "bf16")["min_s"] > 0
    assert ours_infer(args, "yolov5n", "cbbl", SPARSE, "bf16")["128"]["min_s"] > 0
    assert args.backends["yolov5n", "cbbl", SPARSE, "bf16"].bf16
