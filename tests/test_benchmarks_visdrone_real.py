"""benchmarks/visdrone_real.py's parts that need no real frames: the summary's and the regimes' statistics and the
inference-cost timing on tiny checkpoints (the study itself trains on ../shared; tests/engine/test_real_frames.py
covers that path)."""

from __future__ import annotations

import math
import shutil

import cv2
import numpy as np
import pytest

from benchmarks import visdrone_real
from benchmarks.common import welch_t, write_csv


def test_summary_takes_mean_std_and_welch_t_against_ciou_and_each_variants_plain_config():
    def row(config, seed, value, voted=None):
        return {"config": config, "seed": seed, "status": "ok", **{name: value for name in visdrone_real.METRICS},
                **({f"{name}_vote": voted for name in visdrone_real.METRICS} if voted else {})}

    rows = [row("ciou", 0, 0.040), row("ciou", 1, 0.042), row("cbbl", 0, 0.030, 0.033), row("cbbl", 1, 0.034),
            {"config": "cbbl", "seed": 2, "status": "failed"}, row("cbbl_ciou", 0, 0.035, 0.036),
            row("cbbl_ciou", 1, 0.037, 0.039), row("cbbl_ciou_quality", 0, 0.036, 0.037),
            row("cbbl_ciou_quality", 1, 0.038, 0.040)]
    summary = {entry["config"]: entry for entry in visdrone_real.summarize(rows)}
    cbbl, default, quality = summary["cbbl"], summary["cbbl_ciou"], summary["cbbl_ciou_quality"]
    assert cbbl["seeds_ok"] == 2 and cbbl["yolov5_map50_95_mean"] == 0.032
    assert cbbl["yolov5_map50_95_t_vs_ciou"] == round(welch_t([0.030, 0.034], [0.040, 0.042]), 2) < 0
    assert summary["ciou"]["yolov5_map50_95_t_vs_ciou"] == "" and summary["cbbl_paper"]["seeds_ok"] == 0
    # plain C-BBL's voting (one voted seed: no std, no t)
    assert cbbl["yolov5_map50_95_t_vs_cbbl"] == "" and cbbl["yolov5_map50_95_vote_mean"] == 0.033
    assert cbbl["yolov5_map50_95_vote_std"] == "" and math.isnan(cbbl["yolov5_map50_95_vote_t_vs_ciou"])
    # the CIoU term against the paper's loss; the default's voting against both plain configs
    assert default["yolov5_map50_95_t_vs_cbbl"] == round(welch_t([0.035, 0.037], [0.030, 0.034]), 2)
    assert default["yolov5_map50_95_t_vs_cbbl_ciou"] == ""
    assert default["yolov5_map50_95_vote_t_vs_cbbl_ciou"] == round(welch_t([0.036, 0.039], [0.035, 0.037]), 2) > 0
    # each head as it infers by default: voted C-BBL against CIoU, which has no voting
    assert default["yolov5_map50_95_vote_t_vs_ciou"] == round(welch_t([0.036, 0.039], [0.040, 0.042]), 2) < 0
    # the quality score, and quality + voting, against the default, not against the paper's loss
    assert quality["yolov5_map50_95_t_vs_cbbl_ciou"] == round(welch_t([0.036, 0.038], [0.035, 0.037]), 2) > 0
    assert quality["yolov5_map50_95_vote_t_vs_cbbl_ciou"] == round(welch_t([0.037, 0.040], [0.035, 0.037]), 2)
    assert quality["yolov5_map50_95_vote_t_vs_cbbl_ciou_vote"] == round(welch_t([0.037, 0.040], [0.036, 0.039]), 2)
    assert default["yolov5_map50_95_vote_t_vs_cbbl_ciou_vote"] == ""  # not against itself
    assert quality["yolov5_map50_95_t_vs_cbbl"] == "" and quality["yolov5_map50_95_vote_t_vs_cbbl"] == ""


def test_summary_md_tables_the_finished_configs_and_their_voted_columns():
    def row(config, seed, value, voted=None):
        return {"config": config, "seed": seed, "status": "ok", **{name: value for name in visdrone_real.METRICS},
                **({f"{name}_vote": voted for name in visdrone_real.METRICS} if voted else {})}

    rows = [row("ciou", 0, 0.040), row("ciou", 1, 0.042), row("cbbl_ciou", 0, 0.035, 0.036),
            row("cbbl_ciou", 1, 0.037, 0.039)]
    text = visdrone_real.markdown_tables(visdrone_real.summarize(rows))
    body = [line for line in text.splitlines() if line.startswith("| ciou") or line.startswith("| cbbl")]
    assert [line.split(" | ")[0] for line in body] == ["| ciou", "| cbbl_ciou", "| cbbl_ciou"], "no row without seeds"
    t_ciou = welch_t([0.035, 0.037], [0.040, 0.042])
    assert body[1].startswith(f"| cbbl_ciou | 2 | 0.0360 +- 0.0014 (t {t_ciou:+.1f}) |")
    t_vote_ciou = welch_t([0.036, 0.039], [0.040, 0.042])
    t_vote = welch_t([0.036, 0.039], [0.035, 0.037])  # against the plain default (no plain cbbl rows here)
    assert body[2].startswith(f"| cbbl_ciou | 0.0375 +- 0.0021 (t {t_vote_ciou:+.1f} / {t_vote:+.1f}) |")


def make_run(run_dir, checkpoint=None, epochs=2, trained=2):
    """A run folder as train.py leaves it: opt.yaml, ``trained`` of ``epochs`` rows in results.csv, best.pt."""
    (run_dir / "weights").mkdir(parents=True)
    (run_dir / "opt.yaml").write_text(f"epochs: {epochs}\n", encoding="utf-8")
    write_csv(run_dir / "results.csv", [{"epoch": epoch} for epoch in range(trained)])
    if checkpoint:
        shutil.copy(checkpoint, run_dir / "weights" / "best.pt")
    else:
        (run_dir / "weights" / "best.pt").touch()


def test_inference_cost_times_each_variant_against_its_plain_twin(tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(visdrone_real, "COST_FRAMES", 2)
    monkeypatch.setattr(visdrone_real, "COST_SIZES", (64,))
    monkeypatch.setattr(visdrone_real, "COST_ROUNDS", 2)
    project, work = tmp_path / "runs", tmp_path / "work"
    for config, head in (("cbbl_ciou", {}), ("cbbl_ciou_quality", {"score": "quality"})):
        make_run(project / f"{config}_s1", tiny_checkpoint("cbbl", name=f"{config}.pt", head=head))
    images = work / visdrone_real.SPLITS[1] / "images"
    images.mkdir(parents=True)
    for index in range(3):
        cv2.imwrite(str(images / f"frame{index}.jpg"), np.random.default_rng(index).integers(0, 255, (48, 80, 3),
                                                                                           dtype=np.uint8))
    args = visdrone_real.parse_args(["--configs", "ciou", "cbbl_ciou", "cbbl_ciou_quality", "--project", str(project),
                                     "--work", str(work), "--out", str(tmp_path / "out")])
    rows = visdrone_real.inference_cost(args, work / "visdrone-real.yaml", visdrone_real.voting_variants(args))
    assert {(row["variant"], row["plain"]) for row in rows} == {
        ("cbbl_ciou", "cbbl_ciou"), ("cbbl_ciou vote", "cbbl_ciou"), ("cbbl_ciou_quality", "cbbl_ciou"),
        ("cbbl_ciou_quality vote", "cbbl_ciou")}
    assert all(row["ms_per_frame_median"] > 0 and row["img"] == 64 for row in rows)
    assert next(row for row in rows if row["variant"] == "cbbl_ciou")["ratio_to_plain_median"] == 1.0
    assert len(list((work / "cost_frames").iterdir())) == 2, "the first COST_FRAMES frames, linked"
    with pytest.raises(ValueError, match="no finished C-BBL run"):
        visdrone_real.voting_variants(visdrone_real.parse_args(["--configs", "cbbl_paper", "--project", str(project)]))


def test_regime_variants_divide_each_regime_by_the_same_config_on_whole_frames(tmp_path, tiny_checkpoint):
    runs = tmp_path / "runs"
    for folder, run in (("visdrone_real", "ciou_s0"), ("visdrone_real_1024", "ciou_s1"),
                        ("visdrone_real_tile640", "ciou_s2"), ("visdrone_real_tile640", "cbbl_ciou_s0")):
        make_run(runs / folder / run, tiny_checkpoint())
    make_run(runs / "visdrone_real_1024" / "ciou_s0", tiny_checkpoint(), trained=1)  # still training: not picked
    args = visdrone_real.parse_args(["--regimes", "--configs", "ciou", "cbbl_ciou", "--project",
                                     str(runs / "visdrone_real")])
    variants = {(v.variant, v.img): v for v in visdrone_real.regime_variants(args)}
    # cbbl_ciou has no whole-frame 640 run to be divided by, so it is left out
    assert set(variants) == {("whole 640 ciou", 640), ("whole 640, sliced ciou", 640), ("tile 640 ciou", 640),
                             ("tile 640, whole ciou", 640), ("whole 1024 ciou", 1024)}
    assert {v.plain for v in variants.values()} == {("whole 640 ciou", 640)}
    assert variants["tile 640 ciou", 640].weights == runs / "visdrone_real_tile640" / "ciou_s2" / "weights" / "best.pt"
    assert variants["whole 1024 ciou", 1024].weights == runs / "visdrone_real_1024" / "ciou_s1" / "weights" / "best.pt"
    sliced = variants["whole 640, sliced ciou", 640]  # the whole-frame run, sliced; a tile run slices by itself
    assert sliced.weights == variants["whole 640 ciou", 640].weights
    assert sliced.slicing == {"slice": [640, 640], "overlap": visdrone_real.TILE_OVERLAP}
    whole = variants["tile 640, whole ciou", 640]  # the tile run on whole frames
    assert whole.weights == variants["tile 640 ciou", 640].weights and whole.slicing == {"slice": "off"}
    assert variants["tile 640 ciou", 640].slicing == {} == variants["whole 640 ciou", 640].slicing
    (runs / "visdrone_real" / "ciou_s0" / "weights" / "best.pt").unlink()
    with pytest.raises(ValueError, match="no finished whole-frame 640 run"):
        visdrone_real.regime_variants(args)


def test_compare_regimes_tests_each_regime_against_whole_frames_at_640(tmp_path, monkeypatch):
    monkeypatch.setattr(visdrone_real, "images_per_epoch", lambda data, img, tile: 1000 if tile else 400)

    def study(folder, img, epochs, values, **extra):
        rows = [{"config": config, "seed": seed, "img": img, "epochs": epochs, **extra, "status": "ok",
                 "train_wall_s": 3600 * (seed + 1), "infer_ms_per_frame": 10.0 * img / 640,
                 **{name: value + 0.001 * seed for name in visdrone_real.REGIME_METRICS},
                 **({f"{name}_vote": value + 0.002 + 0.001 * seed for name in visdrone_real.REGIME_METRICS}
                    if config != "ciou" else {})}  # C-BBL runs are also scored with voting
                for config, value in values.items() for seed in range(2)]
        failed = {"config": "ciou", "seed": 9, "status": "failed"}
        write_csv(tmp_path / "results" / folder / "runs.csv", [*rows, failed])

    study("visdrone_real", 640, 30, {"ciou": 0.040, "cbbl_ciou": 0.035, "cbbl": 0.030})
    study("visdrone_real_tile640", 640, 12, {"ciou": 0.050}, tile=640)
    study("visdrone_real_sliced640", 640, 30, {"ciou": 0.045}, rescore="sliced")
    study("visdrone_real_tile640_whole", 640, 12, {"ciou": 0.042}, tile=640, rescore="whole")
    study("visdrone_real_1024", 1024, 30, {"ciou": 0.060, "cbbl_ciou": 0.045})
    args = visdrone_real.parse_args(["--regimes", "--configs", "ciou", "cbbl_ciou", "--out",
                                     str(tmp_path / "results" / "visdrone_real")])
    table = {(row["regime"], row["config"]): row for row in visdrone_real.compare_regimes(args, tmp_path / "data.yaml")}
    assert list(table) == [("whole 640", "ciou"), ("whole 640", "cbbl_ciou"), ("whole 640", "cbbl_ciou vote"),
                           ("whole 640, sliced", "ciou"), ("tile 640", "ciou"), ("tile 640, whole", "ciou"),
                           ("whole 1024", "ciou"), ("whole 1024", "cbbl_ciou"), ("whole 1024", "cbbl_ciou vote")]
    # rescored runs keep the compute they trained with
    assert table["whole 640, sliced", "ciou"]["train_compute_vs_whole640"] == 1.0
    assert table["tile 640, whole", "ciou"]["train_compute_vs_whole640"] == round(12 * 1000 / (30 * 400), 2)
    voted = table["whole 1024", "cbbl_ciou vote"]
    assert voted["yolov5_map50_95_t_vs_whole640"] == round(welch_t([0.047, 0.048], [0.037, 0.038]), 2)
    tile, big = table["tile 640", "ciou"], table["whole 1024", "cbbl_ciou"]
    assert tile["seeds_ok"] == 2 and tile["yolov5_map50_95_mean"] == 0.0505
    assert tile["yolov5_map50_95_t_vs_whole640"] == round(welch_t([0.050, 0.051], [0.040, 0.041]), 2) > 0
    assert big["coco_ap_small_t_vs_whole640"] == round(welch_t([0.045, 0.046], [0.035, 0.036]), 2)
    assert tile["train_compute_vs_whole640"] == round(12 * 1000 / (30 * 400), 2)
    assert big["train_compute_vs_whole640"] == round((1024 / 640) ** 2, 2)
    assert table["whole 640", "ciou"]["yolov5_map50_t_vs_whole640"] == ""
    assert big["train_h_mean"] == 1.5 and big["val_ms_per_frame_mean"] == 16.0
    # and against the largest whole-frame size, which is not tested against itself
    assert tile["yolov5_map50_95_t_vs_whole1024"] == round(welch_t([0.050, 0.051], [0.060, 0.061]), 2) < 0
    assert table["whole 640", "ciou"]["visdrone_ap_t_vs_whole1024"] == round(welch_t([0.040, 0.041],
                                                                                     [0.060, 0.061]), 2)
    assert big["yolov5_map50_t_vs_whole1024"] == ""
    assert table["tile 640, whole", "ciou"]["yolov5_map50_t_vs_whole1024"] == round(
        welch_t([0.042, 0.043], [0.060, 0.061]), 2)


def test_regimes_markdown_shows_both_t_and_the_timed_plain_twin():
    def entry(regime, config, seeds, t640, t1024):
        row = {"regime": regime, "config": config, "seeds_ok": seeds, "train_h_mean": 1.1}
        for name in visdrone_real.REGIME_METRICS:
            row |= {f"{name}_mean": 0.05, f"{name}_std": 0.001 if seeds > 1 else "",
                    f"{name}_t_vs_whole640": t640, f"{name}_t_vs_whole1024": t1024}
        return row

    table = [entry("whole 640", "ciou", 3, "", 2.04), entry("tile 640", "cbbl_ciou", 1, "nan", "nan"),
             entry("tile 640", "cbbl_ciou vote", 2, 12.34, "nan")]
    cost = [{"variant": "tile 640 cbbl_ciou", "ms_per_frame_median": "436.2", "ratio_to_plain_median": "7.358"}]
    rows = visdrone_real.regimes_markdown(table, cost).splitlines()[4:]
    assert rows[0] == ("| whole 640 | ciou | 3 | 1.1 | " + " | ".join(["0.0500 +- 0.0010 (t - / +2.0)"] * 4)
                       + " | - |")  # not timed
    assert rows[1] == "| tile 640 | cbbl_ciou | 1 | 1.1 | " + " | ".join(["0.0500"] * 4) + " | 436.2 (7.4x) |"
    assert rows[2].endswith("0.0500 +- 0.0010 (t +12.3 / -) | 436.2 (7.4x) |")  # voting: its plain twin's time


def test_rescore_scores_finished_runs_only_and_never_trains(tmp_path, monkeypatch):
    project = tmp_path / "runs"
    for run, trained in (("ciou_s0", 30), ("ciou_s1", 3), ("cbbl_ciou_s0", 30)):  # ciou_s1: 3 of 30 epochs
        make_run(project / run, epochs=30, trained=trained)
    write_csv(tmp_path / "out" / "runs.csv", [{"config": "cbbl_ciou", "seed": 0, "status": "ok"}])  # scored already
    args = visdrone_real.parse_args(["--rescore", "sliced", "--configs", "ciou", "cbbl_ciou", "--seeds", "0", "1",
                                     "--project", str(project), "--out", str(tmp_path / "out")])
    assert visdrone_real.pending_runs(args) == [("ciou", 0)]
    scored = []
    monkeypatch.setattr(visdrone_real, "run_training", lambda *args: pytest.fail("--rescore trained a run"))
    monkeypatch.setattr(visdrone_real, "evaluate", lambda *args: scored.append(args[2:4]) or {"yolov5_map50": 0.1})
    visdrone_real.study_one(args, tmp_path / "data.yaml", "ciou", 0)
    assert scored == [("ciou", 0)]
    assert visdrone_real.read_csv(tmp_path / "out" / "runs.csv")[-1]["rescore"] == "sliced"
    # by default each rescores the runs of its regime: the whole-frame 640 runs sliced, the tile runs whole
    assert visdrone_real.parse_args(["--rescore", "sliced"]).project.name == "visdrone_real"
    assert visdrone_real.parse_args(["--rescore", "whole", "--tile", "640"]).project.name == "visdrone_real_tile640"


def test_runs_are_scored_as_trained_unless_rescored():
    from utils.data.tiles import TileSettings

    tile = TileSettings(512, 0.3)
    assert visdrone_real.scoring_window("", 640, tile) == (tile.window, 0.3)  # a tile run: its own slices
    assert visdrone_real.scoring_window("", 640, None) == (0, 0.0)  # a whole-frame run: whole frames
    assert visdrone_real.scoring_window("sliced", 640, None) == (640, visdrone_real.TILE_OVERLAP)
    assert visdrone_real.scoring_window("sliced", 640, tile) == (640, visdrone_real.TILE_OVERLAP)
    assert visdrone_real.scoring_window("whole", 640, tile) == (0, 0.0)


def test_images_per_epoch_counts_the_frames_or_their_windows(tmp_path):
    images = tmp_path / visdrone_real.SPLITS[0] / "images"
    labels = images.parent / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    for index in range(3):  # 96 x 160 frames, one box each
        cv2.imwrite(str(images / f"frame{index}.jpg"), np.full((96, 160, 3), 60 * index, np.uint8))
        (labels / f"frame{index}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    data = tmp_path / "visdrone-real.yaml"
    assert visdrone_real.images_per_epoch(data, 64, 0) == 3
    windows = visdrone_real.images_per_epoch(data, 64, 64)
    assert windows > 3, "64 px windows at overlap 0.25 cut each 96 x 160 frame into several"


def test_every_regime_trains_the_compute_of_the_whole_frame_640_runs(monkeypatch):
    monkeypatch.setattr(visdrone_real, "images_per_epoch", lambda data, img, tile: 2410 if tile else 400)

    def epochs(*flags):
        return visdrone_real.matched_epochs(visdrone_real.parse_args(list(flags)), None)

    assert epochs() == 30 and epochs("--epochs", "20") == 20
    assert epochs("--img", "1024") == round(30 * (640 / 1024) ** 2) == 12
    assert epochs("--tile", "640") == round(30 * 400 / 2410) == 5
    assert epochs("--img", "2048", "--epochs", "1") == 1, "at least one epoch"


def test_train_command_keeps_the_yolov5_recipe_and_scales_warmup_with_the_epochs(tmp_path):
    from utils.files import resolve_path
    from utils.hyp import load_hyp

    def command(config, *flags, train_epochs=30):
        args = visdrone_real.parse_args(["--work", str(tmp_path), *flags])
        args.train_epochs = train_epochs
        line = visdrone_real.train_command(args, tmp_path / "data.yaml", config, 0, tmp_path / "runs" / config)
        if "--hyp" not in line:
            return line, None
        return line, load_hyp(resolve_path(line[line.index("--hyp") + 1], "--hyp", "data/hyps"))

    line, hyp = command("ciou")
    assert line[line.index("--hyp") + 1] == "hyp.scratch-low.yaml" and "--tile" not in line
    assert line[line.index("--epochs") + 1] == "30" and hyp.warmup_epochs == 3.0
    line, hyp = command("cbbl_ciou", "--tile", "640", train_epochs=5)  # tiles at equal compute: 5 epochs
    assert hyp.warmup_epochs == 0.5 and hyp.box == 0.05 and line[line.index("--tile") + 1] == "640"
    assert line[-4:] == ["--box-loss", "cbbl", "--cbbl-ciou", "1.0"]
    _, hyp = command("cbbl_gain")
    assert hyp.box == visdrone_real.BOX_GAIN["cbbl_gain"] and hyp.warmup_epochs == 3.0 and hyp.lr0 == 0.01
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "runs" / "ciou" / "weights").mkdir(parents=True)
    (tmp_path / "runs" / "ciou" / "weights" / "last.pt").touch()
    assert command("ciou")[0][-2:] == ["--resume", str(tmp_path / "runs" / "ciou" / "weights" / "last.pt")]
