"""benchmarks/bf16_cpu.py: refuses to measure emulated bf16, and its interleaved rounds on a tiny setting."""

from __future__ import annotations

import pytest

import benchmarks.bf16_cpu as bf16_cpu
from utils.torch_utils import cpu_has_native_bf16


def test_a_cpu_without_native_bf16_is_refused_with_one_line(monkeypatch):
    monkeypatch.setattr(bf16_cpu, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(SystemExit, match="no native bfloat16"):
        bf16_cpu.main(["--tasks", "speed"])


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bfloat16 (amx_bf16/avx512_bf16)")
def test_speed_rounds_time_both_precisions_and_report_the_ratio_spread():
    args = bf16_cpu.parse_args(["--cfgs", "yolov5n", "--img", "64", "--batch", "1", "--rounds", "2",
                                "--infer-repeats", "1"])
    rows = bf16_cpu.run_speed(args)
    assert [(row["task"], row["batch"]) for row in rows] == [("train_step", 1), ("infer", 1)]
    for row in rows:
        ratio = row["ratio_bf16_fp32"]
        assert 0 < ratio["min"] <= ratio["median"] <= ratio["max"] and row["rounds"] == 2
    table = bf16_cpu.speed_table(rows)
    assert len(table) == 4 and table[2].startswith("| yolov5n | ciou | train_step b1 64 |")
