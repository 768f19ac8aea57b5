"""benchmarks/ablation.py: one tiny study end to end, then the gradients of its seed-0 runs, so the script keeps
reading what training writes."""

from __future__ import annotations

import math

from benchmarks.ablation import main, markdown_tables, summarize
from benchmarks.common import read_csv
from tests.conftest import make_yolo_dataset


def test_study_records_metrics_grid_mass_and_summary(tmp_path):
    images = make_yolo_dataset(tmp_path / "data", num_images=8)
    data = tmp_path / "tiny.yaml"
    data.write_text(f"train: {images}\nval: {images}\nnc: 3\nnames: [a, b, c]\n")
    out = tmp_path / "study"
    assert main(["--configs", "ciou", "cbbl_auto", "--seeds", "0", "--img", "64", "--epochs", "1", "--batch", "4",
                 "--width-multiple", "0.125", "--data", str(data), "--out", str(out),
                 "--project", str(tmp_path / "runs")]) == 0
    rows = read_csv(out / "runs.csv")
    assert [(row["config"], row["status"], row["amp"]) for row in rows] == [("ciou", "ok", "False"),
                                                                            ("cbbl_auto", "ok", "False")]
    assert all(not math.isnan(float(row[name])) for row in rows for name in ("map50", "map50_95", "ap_small"))
    groups = [(row["config"], row["group"]) for row in read_csv(out / "grid_mass.csv")]
    assert groups == [("cbbl_auto", "centre"), ("cbbl_auto", "size")]
    masses = [float(m) for m in read_csv(out / "grid_mass.csv")[0]["mass_pct"].split()]
    assert len(masses) == 10 and abs(sum(masses) - 100) < 1
    summary = {row["config"]: row for row in read_csv(out / "summary.csv")}
    assert summary["cbbl_auto"]["seeds_ok"] == "1" and (out / "summary.md").is_file() and (out / "curves").is_dir()

    assert main(["--gradients", "--configs", "ciou", "cbbl_auto", "--img", "64", "--gradient-images", "4",
                 "--data", str(data), "--out", str(out), "--project", str(tmp_path / "runs")]) == 0
    rows = read_csv(out / "gradients.csv")
    assert [row["config"] for row in rows] == ["ciou", "cbbl_auto"]  # one epoch: first == last
    assert all(float(row["small_mean"]) > 0 or float(row["normal_mean"]) > 0 for row in rows)


def test_summary_compares_each_config_with_the_same_config_of_a_reference_study():
    """--reference (e.g. the float32 twin of a bf16 study): each config's mean there and Welch's t against it."""
    def runs(config, values):
        return [{"config": config, "seed": seed, "status": "ok", "grid": "", "map50": v, "map50_95": v / 2,
                 "ap_small": v / 4} for seed, v in enumerate(values)]

    bf16 = runs("ciou", [0.30, 0.31, 0.32]) + runs("cbbl_auto", [0.20, 0.21, 0.22])
    fp32 = runs("ciou", [0.40, 0.41, 0.42])  # no cbbl_auto twin
    summary = {entry["config"]: entry for entry in summarize(bf16, fp32) if entry["seeds_ok"]}
    assert summary["ciou"]["map50_reference_mean"] == 0.41 and summary["ciou"]["map50_t_vs_reference"] < -10
    assert summary["cbbl_auto"]["map50_t_vs_reference"] == "" and summary["cbbl_auto"]["map50_t_vs_ciou"] < -10
    assert "reference 0.410 (t" in markdown_tables(list(summary.values()), [])
    assert "map50_t_vs_reference" not in summarize(bf16)[0], "no reference, no column"
