"""benchmarks/compile_cpu.py: the compile-time accounting, and the refusal of emulated bf16."""

from __future__ import annotations

import math

import pytest
import torch

import benchmarks.compile_cpu as compile_cpu


def test_a_cpu_without_native_bf16_is_refused(monkeypatch):
    monkeypatch.setattr(compile_cpu, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        compile_cpu.main(["--precision", "bf16"])
    assert exit_info.value.code == 2


class FakeClock:
    """time.perf_counter for measure(): each stand-in call advances it by its own cost, so timings are exact."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def costing(self, seconds, output):
        """A call that takes ``seconds(n)`` on its n-th use (0-based) and returns ``output(n)``."""
        uses = []

        def call() -> torch.Tensor:
            self.now += seconds(len(uses))
            uses.append(1)
            return output(len(uses) - 1)
        return call


def test_compile_time_is_the_first_call_less_an_eager_one_and_break_even_counts_the_saved_calls(monkeypatch):
    """A stand-in 'compiled' call: 0.3 s on its first use, then 10 ms against eager's 30 ms."""
    clock = FakeClock()
    monkeypatch.setattr(compile_cpu.time, "perf_counter", clock)
    eager = clock.costing(lambda n: 0.03, lambda n: torch.ones(3))
    compiled = clock.costing(lambda n: 0.3 if n == 0 else 0.01,
                             lambda n: torch.ones(3) + (1e-3 if n == 0 else 0.0))
    row = compile_cpu.measure(eager, compiled, repeats=3)
    assert row["compile_s"] == pytest.approx(0.27) and row["eager_s"] == pytest.approx(0.03)
    assert row["compiled_s"] == pytest.approx(0.01) and row["ratio"] == pytest.approx(1 / 3)
    assert row["break_even_calls"] == math.ceil(0.27 / 0.02 - 1e-9) == 14
    assert row["max_abs_diff_vs_eager"] == pytest.approx(1e-3, rel=1e-3)
    assert row["max_abs_diff_compiled_twice"] == pytest.approx(1e-3, rel=1e-3)


def test_a_compiled_call_that_saves_nothing_never_breaks_even(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(compile_cpu.time, "perf_counter", clock)
    eager = clock.costing(lambda n: 0.01, lambda n: torch.zeros(2))
    slower = clock.costing(lambda n: 0.03, lambda n: torch.zeros(2))
    row = compile_cpu.measure(eager, slower, repeats=2, same_path=lambda: torch.ones(2))
    assert row["break_even_calls"] is None and row["max_abs_diff_vs_eager"] == 1.0
    assert "| never |" in compile_cpu.table([{"task": "infer", **row}])[2]
