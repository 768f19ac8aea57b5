"""benchmarks/bf16_cpu.py: refuses to measure emulated bf16, and tabulates what bf16 changes."""

from __future__ import annotations

import pytest

import benchmarks.bf16_cpu as bf16_cpu


def test_a_cpu_without_native_bf16_is_refused_with_one_line(monkeypatch):
    monkeypatch.setattr(bf16_cpu, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(SystemExit, match="no native bfloat16"):
        bf16_cpu.main(["--weights", "best.pt"])


def test_accuracy_table_shows_both_precisions_and_the_signed_change():
    fp32 = {"map50": 0.5, "map50_95": 0.25, "ap_small": -1.0}
    bf16 = {"map50": 0.5004, "map50_95": 0.2499, "ap_small": -1.0}
    delta = {key: bf16[key] - fp32[key] for key in fp32}
    table = bf16_cpu.accuracy_table([{"weights": "best.pt", "data": "synthetic.yaml", "fp32": fp32, "bf16": bf16,
                                      "bf16_minus_fp32": delta}])
    assert table[2] == ("| best.pt | synthetic.yaml | 0.5000 | 0.5004 | 0.2500 | 0.2499 | -1.0000 | -1.0000 | "
                        "+0.0004 | -0.0001 | +0.0000 |")
