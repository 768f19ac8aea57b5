"""End-to-end tests of train.py / utils.engine.run.run on a tiny generated dataset (CPU, --img 64).

One subprocess smoke of the CLI; the others call run() directly. A SIGKILL mid-run followed by
--resume must finish the planned epochs with a results.csv without gaps or duplicates.
"""

from __future__ import annotations

import csv
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from models.yolo import model_from_checkpoint
from tests.conftest import REPO_ROOT
from utils.checkpoint import load_checkpoint
from utils.engine.options import parse_options
from utils.engine.run import run

FAST = ["--img", "64", "--batch", "8", "--nbs", "8", "--workers", "0", "--cfg", "models/yolov5n.yaml", "--seed", "0"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A data YAML for 16 train / 8 val synthetic images of 128 px (generated once for this module)."""
    root = tmp_path_factory.mktemp("tiny_synthetic")
    config = {"path": str(root / "data"), "train": "images/train", "val": "images/val", "nc": 5,
              "names": ["car", "truck", "pedestrian", "bicycle", "bus"],
              "generate": {"images": 16, "val_images": 8, "size": 128, "seed": 0}}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def one_epoch_run(tiny_data, tmp_path_factory):
    """One default-style epoch (autoanchor and plots on): shared by the output checks and the transfer test."""
    project = tmp_path_factory.mktemp("runs")
    return run(parse_options([*FAST, "--data", str(tiny_data), "--epochs", "1", "--project", str(project)]))


def results_epochs(save_dir: Path) -> list[int]:
    with open(save_dir / "results.csv", newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_one_epoch_writes_every_output(one_epoch_run):
    save_dir = one_epoch_run.save_dir
    assert save_dir.name == "exp" and one_epoch_run.epochs_done == 1
    for name in ("weights/last.pt", "weights/best.pt", "opt.yaml", "hyp.yaml", "results.csv", "results.png",
                 "labels.jpg", "train_batch0.jpg"):
        assert (save_dir / name).is_file(), name
    assert results_epochs(save_dir) == [0]
    header = (save_dir / "results.csv").read_text().splitlines()[0].split(",")
    for column in ("train/box_loss", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "metrics/AP_small", "lr/pg2",
                   "val/obj_loss", "diag/gt_total"):
        assert column in header
    checkpoint = torch.load(save_dir / "weights/last.pt", weights_only=True)
    assert checkpoint["epoch"] == 0 and checkpoint["opt"]["imgsz"] == 64 and checkpoint["names"][0] == "car"
    assert checkpoint["ema_updates"] == 2 and checkpoint["optimizer"]["param_groups"][1]["weight_decay"] > 0
    model = model_from_checkpoint(checkpoint)
    assert model.nc == 5 and model.yaml["anchors"] == checkpoint["model_yaml"]["anchors"]
    assert one_epoch_run.final is not None and 0 <= one_epoch_run.final.map50 <= 1
    assert yaml.safe_load((save_dir / "opt.yaml").read_text())["batch_size"] == 8


def test_cbbl_on_a_tph_config_with_transfer(one_epoch_run, tiny_data, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    argv = [*FAST, "--data", str(tiny_data), "--epochs", "1", "--project", str(tmp_path), "--noplots",
            "--box-loss", "cbbl", "--cbbl-bins", "7", "--single-cls", "--noautoanchor",
            "--weights", str(one_epoch_run.save_dir / "weights/last.pt"), "--cfg", "models/yolov5n-xs-tph.yaml",
            "--adam", "--cos-lr", "--freeze", "2", "--multi-scale", "--noval"]
    outcome = run(parse_options(argv))
    checkpoint = load_checkpoint(outcome.save_dir / "weights/last.pt")
    assert checkpoint["model_yaml"]["detect"]["box_loss"] == "cbbl" and checkpoint["model_yaml"]["nc"] == 1
    assert checkpoint["hyp"]["box_loss"] == "cbbl" and checkpoint["names"] == ["item"]
    assert any(message.startswith("transferred ") for message in caplog.messages)
    source = load_checkpoint(one_epoch_run.save_dir / "weights/last.pt")
    for name in ("model.0.conv.weight", "model.1.conv.weight"):  # transferred, then frozen by --freeze 2
        assert torch.equal(checkpoint["model"][name], source["ema"][name])
    assert not torch.equal(checkpoint["model"]["model.2.cv1.conv.weight"], source["ema"]["model.2.cv1.conv.weight"])
    assert outcome.final is not None and outcome.final.map50 >= 0


def test_resume_after_sigkill_mid_run(tiny_data, tmp_path):
    """The CLI smoke too: a killed `python train.py` and its `--resume` run in subprocesses."""
    argv = [*FAST, "--data", str(tiny_data), "--epochs", "2", "--project", str(tmp_path), "--noplots",
            "--noautoanchor"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "train.py", *argv], cwd=REPO_ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "exp" / "weights" / "last.pt"
    deadline = time.time() + 240
    while not last.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)  # epoch 0 saved; now somewhere inside epoch 1
    process.wait()
    assert load_checkpoint(last)["epoch"] == 0, "the run finished before it could be killed"
    result = subprocess.run([sys.executable, "train.py", "--resume", str(last)], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" in result.stdout
    assert results_epochs(tmp_path / "exp") == [0, 1]
    resumed = load_checkpoint(last)
    assert resumed["epoch"] == 1 and resumed["ema_updates"] == 4 and resumed["opt"]["epochs"] == 2
    assert not (tmp_path / "exp2").exists()
    with pytest.raises(ValueError, match="already finished"):
        run(parse_options(["--resume", str(last)]))


def test_bad_weights_file_is_named(tiny_data, tmp_path):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bogus.pt"):
        run(parse_options([*FAST, "--data", str(tiny_data), "--weights", str(bogus), "--project", str(tmp_path)]))


def test_resume_latest_picks_the_newest_last_pt(tmp_path):
    from utils.engine.run import find_resume_checkpoint

    older, newer = tmp_path / "exp" / "weights" / "last.pt", tmp_path / "exp2" / "weights" / "last.pt"
    for index, path in enumerate((older, newer)):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (1000 + index, 1000 + index))
    assert find_resume_checkpoint(parse_options(["--resume", "--project", str(tmp_path)])) == newer
    with pytest.raises(FileNotFoundError, match="no last.pt"):
        find_resume_checkpoint(parse_options(["--resume", "--project", str(tmp_path / "empty")]))
