"""benchmarks/common.py: the environment header, the timer and the resumable CSV writers."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.common import (
    RESULT_PREFIX,
    append_csv_row,
    environment,
    header_lines,
    peak_rss_mb,
    read_csv,
    result_of,
    summary_cell,
    time_call,
    write_csv,
    write_json,
)


def test_environment_names_machine_and_versions():
    env = environment()
    for key in ("cpu", "cores", "load_1_5_15", "python", "torch", "numpy", "opencv"):
        assert key in env and env[key] not in (None, "")
    assert len(env["load_1_5_15"]) == 3


def test_header_lines_put_settings_after_environment():
    lines = header_lines({"img": 640})
    assert lines[-1] == "img: 640"
    assert any(line.startswith("torch: ") for line in lines)


def test_time_call_counts_repeats_and_orders_stats():
    calls = []
    stats = time_call(lambda: calls.append(1), warmup=2, repeats=3)
    assert len(calls) == 5
    assert stats["min_s"] <= stats["median_s"] <= stats["max_s"]
    with pytest.raises(ValueError, match="repeats"):
        time_call(lambda: None, repeats=0)


def test_append_csv_row_keeps_rows_and_widens_columns(tmp_path):
    path = tmp_path / "runs.csv"
    assert read_csv(path) == []
    append_csv_row(path, {"config": "ciou", "seed": 0})
    append_csv_row(path, {"config": "cbbl", "seed": 1})
    append_csv_row(path, {"config": "l1", "seed": 2, "error": "boom"})
    rows = read_csv(path)
    assert [row["config"] for row in rows] == ["ciou", "cbbl", "l1"]
    assert rows[0]["error"] == "" and rows[2]["error"] == "boom"


def append_rows(path, writer: str, count: int) -> None:
    for index in range(count):  # a new column each time: every append rewrites the file
        append_csv_row(path, {"writer": writer, "index": index, f"{writer}_{index}": 1})


def test_append_csv_row_from_two_processes_loses_no_row(tmp_path):
    path = tmp_path / "runs.csv"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=append_rows, args=(path, name, 40)) for name in ("a", "b")]
    for process in writers:
        process.start()
    for process in writers:
        process.join()
    assert [process.exitcode for process in writers] == [0, 0]
    rows = read_csv(path)
    assert sorted((row["writer"], int(row["index"])) for row in rows) == [(w, i) for w in "ab" for i in range(40)]
    assert not list(tmp_path.glob("*.tmp"))


def test_summary_cell_gives_mean_std_and_the_t_values_that_are_set():
    entry = {"m_mean": 0.04, "m_std": 0.0012, "m_t_vs_a": -7.44, "m_t_vs_b": "", "m_t_vs_c": 5.46, "n_mean": ""}
    assert summary_cell(entry, "m", ["t_vs_a", "t_vs_b", "t_vs_c"], 4) == "0.0400 +- 0.0012 (t -7.4 / +5.5)"
    assert summary_cell({"m_mean": 0.5, "m_std": "", "m_t_vs_a": "nan"}, "m", ["t_vs_a"], 3) == "0.500"
    assert summary_cell({"m_mean": 0.5, "m_t_vs_a": 0.0, "m_t_vs_b": float("nan")}, "m", ["t_vs_a", "t_vs_b"], 1) == (
        "0.5 (t +0.0)")
    assert summary_cell(entry, "n", ["t_vs_a"], 4) == "-" and summary_cell(entry, "missing", [], 4) == "-"


def test_write_csv_and_json_round_trip(tmp_path):
    write_csv(tmp_path / "a.csv", [{"x": 1, "y": 2.5}, {"x": 3}])
    assert read_csv(tmp_path / "a.csv") == [{"x": "1", "y": "2.5"}, {"x": "3", "y": ""}]
    write_json(tmp_path / "a.json", {"rows": [1, 2]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"rows": [1, 2]}
    assert not list(tmp_path.glob("*.tmp"))


def test_result_of_reads_the_last_result_line_and_reports_failures(tmp_path):
    script = f"print('noise'); print({RESULT_PREFIX!r} + '{{\"a\": 1}}'); print({RESULT_PREFIX!r} + '{{\"a\": 2}}')"
    assert result_of([sys.executable, "-c", script], tmp_path, "demo") == {"a": 2}
    with pytest.raises(RuntimeError, match="demo failed with exit code 3"):
        result_of([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], tmp_path, "demo")


def test_peak_rss_is_this_process_own(tmp_path):
    script = "from benchmarks.common import peak_rss_mb; print(peak_rss_mb())"
    ballast = bytearray(300 * 2**20)  # a parent far larger than the child
    child = float(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                                 cwd=Path(__file__).resolve().parents[1]).stdout)
    assert peak_rss_mb() > 300 and child < peak_rss_mb() - 200
    del ballast


def test_read_csv_strips_the_padding_of_a_results_csv(tmp_path):
    from utils.engine.writers import format_line

    path = tmp_path / "results.csv"
    path.write_text(format_line(["epoch", "metrics/mAP_0.5"]) + format_line([0, 0.25]))
    assert read_csv(path) == [{"epoch": "0", "metrics/mAP_0.5": "0.25"}]
