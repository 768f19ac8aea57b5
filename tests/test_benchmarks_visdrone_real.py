"""benchmarks/visdrone_real.py's parts that need no real frames: the summary's statistics and the inference-cost
timing on tiny checkpoints (the study itself trains on ../shared; tests/engine/test_real_frames.py covers that path)."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from benchmarks import visdrone_real
from benchmarks.common import welch_t


def test_summary_takes_mean_std_and_welch_t_against_ciou_and_plain_cbbl():
    def row(config, seed, value, voted=None):
        return {"config": config, "seed": seed, "status": "ok", **{name: value for name in visdrone_real.METRICS},
                **({f"{name}_vote": voted for name in visdrone_real.METRICS} if voted else {})}

    rows = [row("ciou", 0, 0.040), row("ciou", 1, 0.042), row("cbbl", 0, 0.030, 0.033), row("cbbl", 1, 0.034),
            {"config": "cbbl", "seed": 2, "status": "failed"}, row("cbbl_quality", 0, 0.036, 0.037),
            row("cbbl_quality", 1, 0.038, 0.040)]
    summary = {entry["config"]: entry for entry in visdrone_real.summarize(rows)}
    cbbl, quality = summary["cbbl"], summary["cbbl_quality"]
    assert cbbl["seeds_ok"] == 2 and cbbl["yolov5_map50_95_mean"] == 0.032
    assert cbbl["yolov5_map50_95_t_vs_ciou"] == round(welch_t([0.030, 0.034], [0.040, 0.042]), 2) < 0
    assert summary["ciou"]["yolov5_map50_95_t_vs_ciou"] == "" and summary["cbbl_paper"]["seeds_ok"] == 0
    # the variants against plain C-BBL: another config, voting (one voted seed: no std), and both
    assert cbbl["yolov5_map50_95_t_vs_cbbl"] == "" and cbbl["yolov5_map50_95_vote_mean"] == 0.033
    assert cbbl["yolov5_map50_95_vote_std"] == "" and cbbl["yolov5_map50_95_vote_t_vs_ciou"] == ""
    assert quality["yolov5_map50_95_t_vs_cbbl"] == round(welch_t([0.036, 0.038], [0.030, 0.034]), 2) > 0
    assert quality["yolov5_map50_95_vote_t_vs_cbbl"] == round(welch_t([0.037, 0.040], [0.030, 0.034]), 2) > 0


def test_inference_cost_times_each_variant_against_its_plain_twin(tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(visdrone_real, "COST_FRAMES", 2)
    monkeypatch.setattr(visdrone_real, "COST_SIZES", (64,))
    monkeypatch.setattr(visdrone_real, "COST_ROUNDS", 2)
    project, work = tmp_path / "runs", tmp_path / "work"
    for config, head in (("cbbl", {}), ("cbbl_quality", {"score": "quality"})):
        weights = project / f"{config}_s1" / "weights"
        weights.mkdir(parents=True)
        shutil.copy(tiny_checkpoint("cbbl", name=f"{config}.pt", head=head), weights / "best.pt")
    images = work / visdrone_real.SPLITS[1] / "images"
    images.mkdir(parents=True)
    for index in range(3):
        cv2.imwrite(str(images / f"frame{index}.jpg"), np.random.default_rng(index).integers(0, 255, (48, 80, 3),
                                                                                           dtype=np.uint8))
    args = visdrone_real.parse_args(["--configs", "ciou", "cbbl", "cbbl_quality", "--project", str(project),
                                     "--work", str(work), "--out", str(tmp_path / "out")])
    rows = visdrone_real.inference_cost(args, work / "visdrone-real.yaml")
    assert {(row["variant"], row["plain"]) for row in rows} == {
        ("cbbl", "cbbl"), ("cbbl vote", "cbbl"), ("cbbl_quality", "cbbl"), ("cbbl_quality vote", "cbbl")}
    assert all(row["ms_per_frame_median"] > 0 and row["img"] == 64 for row in rows)
    assert next(row for row in rows if row["variant"] == "cbbl")["ratio_to_plain_median"] == 1.0
    assert len(list((work / "cost_frames").iterdir())) == 2, "the first COST_FRAMES frames, linked"
    with pytest.raises(ValueError, match="no finished C-BBL run"):
        visdrone_real.inference_cost(visdrone_real.parse_args(["--configs", "cbbl_paper", "--project", str(project),
                                                                "--work", str(work)]), work / "visdrone-real.yaml")
