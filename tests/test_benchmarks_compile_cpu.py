"""benchmarks/compile_cpu.py: the compile-time accounting, and the refusal of emulated bf16."""

from __future__ import annotations

import time

import pytest
import torch

import benchmarks.compile_cpu as compile_cpu


def test_a_cpu_without_native_bf16_is_refused(monkeypatch):
    monkeypatch.setattr(compile_cpu, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        compile_cpu.main(["--precision", "bf16"])
    assert exit_info.value.code == 2


def test_compile_time_is_the_first_call_less_an_eager_one_and_break_even_counts_the_saved_calls():
    """A stand-in 'compiled' function: 0.3 s on its first call, then 10 ms per call against eager's 30 ms."""
    calls = []

    def eager() -> torch.Tensor:
        time.sleep(0.03)
        return torch.ones(3)

    def compiled() -> torch.Tensor:
        time.sleep(0.3 if not calls else 0.01)
        calls.append(1)
        return torch.ones(3) + (1e-3 if len(calls) == 1 else 0.0)

    row = compile_cpu.measure(eager, compiled, repeats=3)
    assert 0.2 < row["compile_s"] < 0.35 and row["compiled_s"] < row["eager_s"]
    assert row["break_even_calls"] == pytest.approx(row["compile_s"] / (row["eager_s"] - row["compiled_s"]), abs=1)
    assert row["max_abs_diff_vs_eager"] == pytest.approx(1e-3, rel=1e-3)
    assert row["max_abs_diff_compiled_twice"] == pytest.approx(1e-3, rel=1e-3)


def test_a_compiled_call_that_saves_nothing_never_breaks_even():
    def eager() -> torch.Tensor:
        time.sleep(0.01)
        return torch.zeros(2)

    def slower() -> torch.Tensor:
        time.sleep(0.03)
        return torch.zeros(2)

    row = compile_cpu.measure(eager, slower, repeats=2, same_path=lambda: torch.ones(2))
    assert row["break_even_calls"] is None and row["max_abs_diff_vs_eager"] == 1.0
    assert "| never |" in compile_cpu.table([{"task": "infer", **row}])[2]
