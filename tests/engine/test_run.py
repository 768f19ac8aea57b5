"""End-to-end tests of train.py / utils.engine.run.run on a tiny generated dataset (CPU, --img 64).

One subprocess smoke of the CLI; the others call run() directly. A SIGKILL mid-run followed by
--resume must finish the planned epochs with a results.csv without gaps or duplicates.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
import yaml

import train
from models.yolo import model_from_checkpoint
from tests.conftest import REPO_ROOT, TINY_MODEL_YAML, tree_bytes
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.engine.hooks import CheckpointHook
from utils.engine.options import TrainOptions, parse_options
from utils.engine.run import FinalValidation, run
from utils.engine.writers import read_results
from utils.files import folder_lock
from utils.infer.backend import DetectBackend

FAST = ["--img", "64", "--batch", "8", "--nbs", "8", "--workers", "0", "--cfg", "models/yolov5n.yaml", "--seed", "0"]


def synthetic_yaml(root: Path, images: int, val_images: int, size: int) -> Path:
    """A data YAML under ``root`` whose synthetic set is generated on first use."""
    config = {"path": str(root / "data"), "train": "images/train", "val": "images/val", "nc": 5,
              "names": ["car", "truck", "pedestrian", "bicycle", "bus"],
              "generate": {"images": images, "val_images": val_images, "size": size, "seed": 0}}
    path = root / "synthetic.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A data YAML for 16 train / 8 val synthetic images of 128 px (generated once for this module)."""
    return synthetic_yaml(tmp_path_factory.mktemp("tiny_synthetic"), 16, 8, 128)


@pytest.fixture(scope="module")
def one_epoch_run(tiny_data, tmp_path_factory):
    """One default-style epoch (autoanchor and plots on): shared by the output checks and the transfer test."""
    project = tmp_path_factory.mktemp("runs")
    previous = os.umask(0o022)
    try:
        return run(parse_options([*FAST, "--data", str(tiny_data), "--epochs", "1", "--project", str(project)]))
    finally:
        os.umask(previous)


# YOLOv5 v7.0's results.csv columns, in order ('epoch' + Loggers.keys in
# https://github.com/ultralytics/yolov5/blob/v7.0/utils/loggers/__init__.py), written as '%20s,' fields.
YOLOV5_V7_COLUMNS = ["epoch", "train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision",
                     "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss",
                     "val/cls_loss", "x/lr0", "x/lr1", "x/lr2"]


def results_epochs(save_dir: Path) -> list[int]:
    return [int(row[0]) for row in read_results(save_dir / "results.csv")[1]]


def test_one_epoch_writes_every_output(one_epoch_run):
    save_dir = one_epoch_run.save_dir
    assert save_dir.name == "exp" and one_epoch_run.epochs_done == 1
    for name in ("weights/last.pt", "weights/best.pt", "opt.yaml", "hyp.yaml", "results.csv", "results.png",
                 "results_diagnostics.png", "labels.jpg", "labels_correlogram.jpg", "train_batch0.jpg",
                 "val_batch0_labels.jpg", "val_batch0_pred.jpg", "confusion_matrix.png"):
        assert (save_dir / name).is_file(), name
    assert results_epochs(save_dir) == [0]
    header_line = (save_dir / "results.csv").read_text().splitlines()[0]
    assert header_line.split(",")[:14] == [f"{name:>20}" for name in YOLOV5_V7_COLUMNS]
    header = read_results(save_dir / "results.csv")[0]
    assert header[:14] == YOLOV5_V7_COLUMNS
    assert header[14] == "metrics/AP_small" and "diag/gt_total" in header[15:]
    assert list(save_dir.glob("events.out.tfevents.*")), "TensorBoard events in the run folder"
    checkpoint = torch.load(save_dir / "weights/last.pt", weights_only=True)
    assert checkpoint["epoch"] == 0 and checkpoint["opt"]["imgsz"] == 64 and checkpoint["names"][0] == "car"
    assert "optimizer" not in checkpoint and "ema" not in checkpoint, "a finished run's last.pt is stripped"
    assert checkpoint["model"]["model.0.conv.weight"].dtype == torch.float16
    for name in ("best.pt", "last.pt"):  # YOLOv5's stripped yolov5n is 3.9 MB; unstripped ours were 28.8 MB
        assert (save_dir / "weights" / name).stat().st_size < 5e6, name
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in save_dir.rglob("*") if path.is_file()}
    assert set(modes.values()) == {0o644}, modes
    backend = DetectBackend(save_dir / "weights/best.pt")  # val/detect read the stripped fp16 file as fp32
    assert backend(torch.zeros(1, 3, 64, 64)).dtype == torch.float32 and backend.nc == 5
    model = model_from_checkpoint(checkpoint)
    assert model.nc == 5 and model.yaml["anchors"] == checkpoint["model_yaml"]["anchors"]
    assert one_epoch_run.final is not None and 0 <= one_epoch_run.final.map50 <= 1
    assert yaml.safe_load((save_dir / "opt.yaml").read_text())["batch_size"] == 8


def test_cbbl_on_a_tph_config_with_transfer(one_epoch_run, tiny_data, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    argv = [*FAST, "--data", str(tiny_data), "--epochs", "1", "--project", str(tmp_path), "--noplots",
            "--box-loss", "cbbl", "--cbbl-bins", "7", "--cbbl-score", "quality", "--single-cls", "--noautoanchor",
            "--weights", str(one_epoch_run.save_dir / "weights/last.pt"), "--cfg", "models/yolov5n-xs-tph.yaml",
            "--adam", "--cos-lr", "--freeze", "2", "--multi-scale", "--noval"]
    outcome = run(parse_options(argv))
    checkpoint = load_checkpoint(outcome.save_dir / "weights/last.pt")
    assert checkpoint["model_yaml"]["detect"]["box_loss"] == "cbbl" and checkpoint["model_yaml"]["nc"] == 1
    assert checkpoint["hyp"]["head"]["box_loss"] == "cbbl" and checkpoint["names"] == ["item"]
    assert checkpoint["model_yaml"]["detect"]["score"] == "quality"  # the quality branch trained with the head
    branch = [name for name in checkpoint["model"] if ".quality." in name]
    assert branch and model_from_checkpoint(checkpoint).detect.quality is not None
    assert any(message.startswith("transferred ") for message in caplog.messages)
    assert any("head differs from the requested one (box regress -> cbbl)" in message for message in caplog.messages)
    source = load_checkpoint(one_epoch_run.save_dir / "weights/last.pt")  # stripped: EMA weights in fp16
    for name in ("model.0.conv.weight", "model.1.conv.weight"):  # transferred, then frozen by --freeze 2
        assert torch.equal(checkpoint["model"][name], source["model"][name])
    # trained: a bias (TPH's 1000-batch warmup starts weights at LR 0 but biases at warmup_bias_lr)
    assert not torch.equal(checkpoint["model"]["model.2.cv1.bn.bias"], source["model"]["model.2.cv1.bn.bias"])
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
    assert resumed["epoch"] == 1 and resumed["opt"]["epochs"] == 2 and "optimizer" not in resumed
    assert not (tmp_path / "exp2").exists()
    with pytest.raises(ValueError, match="already finished"):
        run(parse_options(["--resume", str(last)]))


def test_a_stripped_checkpoint_is_not_resumed(tmp_path):
    """An early-stopped run ends before --epochs, but its stripped last.pt has no optimizer state to resume."""
    last = tmp_path / "exp" / "weights" / "last.pt"
    opts = parse_options(["--epochs", "5", "--project", str(tmp_path)])
    save_checkpoint({"model": {}, "model_yaml": {}, "epoch": 1, "opt": opts.to_dict()}, last)
    with pytest.raises(ValueError, match="already finished \\(after epoch 2 of 5\\); nothing to resume"):
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


def test_train_run_kwargs_trains_like_the_cli(tiny_data, tmp_path):
    kwargs = {"data": str(tiny_data), "imgsz": 64, "epochs": 1, "batch_size": 8, "workers": 0, "nbs": 8,
              "cfg": "models/yolov5n.yaml", "project": str(tmp_path), "name": "kw", "noplots": True, "noval": True}
    outcome = train.run(**kwargs)
    assert outcome.epochs_done == 1 and (outcome.save_dir / "weights" / "last.pt").is_file()
    argv = [f"--{key.replace('_', '-')}={value}" for key, value in kwargs.items() if not isinstance(value, bool)]
    cli = parse_options([*argv, "--noplots", "--noval"]).to_dict()
    assert yaml.safe_load((outcome.save_dir / "opt.yaml").read_text()) == {k: v for k, v in cli.items() if k != "hyp"}


@pytest.mark.parametrize("where", ["repo", "elsewhere"])
def test_bare_names_train_from_any_folder(tmp_path, where):
    """Bare --cfg/--hyp/--data names resolve from any working folder; the default --project is the repository's
    runs/train whatever the folder (this run writes into tmp_path: tests never write into the repository)."""
    assert TrainOptions().project == str(REPO_ROOT / "runs" / "train")
    argv = [sys.executable, str(REPO_ROOT / "train.py"), "--cfg", "yolov5s.yaml", "--hyp", "hyp.VisDrone.yaml",
            "--data", "synthetic.yaml", "--epochs", "1", "--img", "64", "--batch", "32", "--workers", "0",
            "--noplots", "--noval", "--project", str(tmp_path / "project")]
    cwd = REPO_ROOT if where == "repo" else tmp_path / "elsewhere"
    cwd.mkdir(exist_ok=True)
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "project" / "exp" / "weights" / "last.pt").is_file()
    assert where == "repo" or not (cwd / "runs").exists()  # in the repository, the autouse guard watches runs/


# TPH-YOLOv5's README training command, verbatim (`--hy` is an argparse prefix of --hyp).
TPH_README_COMMAND = ("--img 1536 --adam --batch 4 --epochs 80 --data ./data/VisDrone.yaml --weights yolov5l.pt "
                      "--hy data/hyps/hyp.VisDrone.yaml --cfg models/yolov5l-xs-tph.yaml --name v5l-xs-tph")


def tph_readme_argv(**swaps: str) -> list[str]:
    """The README command with some flag values swapped (e.g. data='data/synthetic.yaml')."""
    argv = TPH_README_COMMAND.split()
    for flag, value in swaps.items():
        argv[argv.index(f"--{flag}") + 1] = value
    return argv


@pytest.fixture(scope="module")
def tph_recipe():
    """The README command's options and optimizer/schedule as run() builds them on VisDrone-sized data.

    The model is the command's own 51M-parameter graph (about 5 s of CPU), so the groups are TPH-YOLOv5's.
    """
    from models.yolo import Model
    from utils.engine.run import build_optimization

    opts = parse_options(tph_readme_argv(data="data/VisDrone.yaml", img="256", weights=""))  # no data read
    model = Model(opts.cfg, nc=10)
    images = 6471  # VisDrone2019-DET train: --batch 4 gives 1618 batches and YOLOv5's nominal batch of 64
    return opts, *build_optimization(opts, model, images, math.ceil(images / opts.batch_size))


def test_tph_readme_command_trains_adam_at_3e4_for_every_group(tph_recipe, caplog):
    opts, optimizer, accumulate, _ = tph_recipe
    assert opts.adam and opts.hyp_path.endswith("hyp.VisDrone.yaml") and (opts.imgsz, opts.batch_size) == (256, 4)
    assert type(optimizer) is torch.optim.Adam and accumulate == 16
    for group in optimizer.param_groups:
        assert group["lr"] == group["initial_lr"] == 3e-4 and group["betas"] == (opts.hyp.momentum, 0.999)
    decays = [group["weight_decay"] for group in optimizer.param_groups]
    assert decays == [0.0, pytest.approx(opts.hyp.weight_decay * 4 * 16 / 64), 0.0]


def test_tph_readme_command_schedule_is_cosine_after_tph_warmup(tph_recipe):
    opts, optimizer, _, schedule = tph_recipe
    lrf = opts.hyp.lrf
    for epoch in range(opts.epochs + 1):  # TPH-YOLOv5's one_cycle(1, lrf, epochs)
        assert schedule.lf(epoch) == pytest.approx(((1 - math.cos(epoch * math.pi / 80)) / 2) * (lrf - 1) + 1)
    nw = max(round(opts.hyp.warmup_epochs * 1618), 1000)  # TPH-YOLOv5's minimum
    assert schedule.warmup_iterations == nw == 3236
    trainer = SimpleNamespace(optimizer=optimizer, epoch=0, iteration=0, accumulate=16)
    for iteration in (0, 1000, nw):
        trainer.iteration = iteration
        schedule.before_step(trainer)
        assert trainer.accumulate == max(1, round(float(np.interp(iteration, [0, nw], [1, 64 / 4]))))
        bias_lr = float(np.interp(iteration, [0, nw], [opts.hyp.warmup_bias_lr, 3e-4]))
        lrs = [group["lr"] for group in optimizer.param_groups]
        assert lrs == pytest.approx([bias_lr, 3e-4 * iteration / nw, 3e-4 * iteration / nw])  # v7.0's group order
    assert trainer.accumulate == 16
    trainer.epoch, trainer.iteration = 40, 40 * 1618
    schedule.before_epoch(trainer)
    schedule.before_step(trainer)  # past warmup: no change; epoch 40 trains at lf(39) as TPH's scheduler steps
    assert all(group["lr"] == pytest.approx(3e-4 * schedule.lf(39)) for group in optimizer.param_groups)


def test_yolov5_scratch_low_alone_trains_sgd_linear_and_adamw_on_it_warns(caplog):
    from models.yolo import Model
    from tests.conftest import TINY_MODEL_YAML
    from utils.engine.run import build_optimization

    model = Model(TINY_MODEL_YAML)
    with caplog.at_level(logging.WARNING):
        optimizer, _, schedule = build_optimization(parse_options(["--hyp", "data/hyps/hyp.scratch-low.yaml"]),
                                                    model, 96, 12)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        build_optimization(parse_options(["--hyp", "data/hyps/hyp.scratch-low.yaml", "--optimizer", "AdamW"]),
                           model, 96, 12)
    assert type(optimizer) is torch.optim.SGD
    assert all(g["lr"] == 0.01 and g["momentum"] == 0.937 and g["nesterov"] for g in optimizer.param_groups)
    assert schedule.lf(15) == pytest.approx((1 - 15 / 30) * (1 - 0.01) + 0.01)  # YOLOv5 v7.0's linear lf
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "hyp.scratch-low.yaml is tuned for SGD" in warnings[0] and "\n" not in warnings[0]


@pytest.fixture(scope="module")
def exact_data(tmp_path_factory) -> Path:
    """8 train / 4 val synthetic images of 96 px: the smallest set that still has two batches per epoch."""
    return synthetic_yaml(tmp_path_factory.mktemp("exact"), 8, 4, 96)


def killed_after_first_epoch(argv: list[str]) -> Path:
    """Run a 2-epoch training that dies right after saving epoch 0 (as a SIGKILL there would); its last.pt."""
    save = CheckpointHook.after_epoch

    def save_then_die(self, trainer):
        save(self, trainer)
        raise KeyboardInterrupt("killed")

    with mock.patch.object(CheckpointHook, "after_epoch", save_then_die), pytest.raises(KeyboardInterrupt):
        run(parse_options(argv))
    return Path(parse_options(argv).project) / "exp" / "weights" / "last.pt"


def tiny_argv(data: Path, folder: Path, workers: str = "0") -> list[str]:
    """Options of a 2-epoch run of the tests' tiny two-level model (its YAML written into ``folder``)."""
    cfg = folder / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY_MODEL_YAML))
    return ["--img", "64", "--batch", "4", "--nbs", "4", "--workers", workers, "--cfg", str(cfg), "--seed", "0",
            "--data", str(data), "--epochs", "2", "--noplots", "--noautoanchor", "--noval", "--save-period", "1"]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_killed_and_resumed_run_equals_the_uninterrupted_one(exact_data, tmp_path, workers):
    """Mosaic, HSV, flips and shuffling all draw random numbers: every state must come back exactly."""
    argv = tiny_argv(exact_data, tmp_path, workers)
    whole = run(parse_options([*argv, "--project", str(tmp_path / "whole")]))
    last = killed_after_first_epoch([*argv, "--project", str(tmp_path / "killed")])
    assert load_checkpoint(last)["epoch"] == 0
    resumed = run(parse_options(["--resume", str(last)]))
    assert resumed.save_dir == last.parent.parent
    # epoch1.pt (--save-period 1) is the full final state; last.pt is stripped once a run ends
    expected, actual = (load_checkpoint(folder / "weights" / "epoch1.pt")
                        for folder in (whole.save_dir, last.parent.parent))
    for key in ("model", "ema"):
        different = [name for name in expected[key] if not torch.equal(expected[key][name], actual[key][name])]
        assert not different, f"{key}: {len(different)} tensors differ, e.g. {different[:3]}"


def test_resume_of_a_checkpoint_from_elsewhere_starts_a_new_run_folder(exact_data, tmp_path):
    """`--resume some/folder/model.pt` never treats the folders around the file as its run."""
    last = killed_after_first_epoch([*tiny_argv(exact_data, tmp_path), "--project", str(tmp_path / "runs")])
    checkpoint = load_checkpoint(last)
    assert checkpoint["save_dir"] == str(last.parent.parent.resolve())
    unrelated = tmp_path / "mine"
    (unrelated / "models").mkdir(parents=True)
    (unrelated / "results.csv").write_text("epoch,score\n0,1\n1,2\n")
    save_checkpoint(checkpoint, unrelated / "models" / "model.pt")
    before = tree_bytes(unrelated)
    outcome = run(parse_options(["--resume", str(unrelated / "models" / "model.pt")]))
    assert tree_bytes(unrelated) == before
    assert outcome.save_dir == tmp_path / "runs" / "exp2" and results_epochs(outcome.save_dir) == [1]


def test_missing_data_or_absurd_sizes_make_no_run_folder(tmp_path):
    """The inputs are checked before project/name is made (README: the first run is runs/train/exp)."""
    project = tmp_path / "project"
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        run(parse_options(["--data", str(tmp_path / "missing.yaml"), "--project", str(project)]))
    with pytest.raises(ValueError, match="--img 100000 --batch-size 8 .*training needs more than .* GB"):
        run(parse_options(["--img", "100000", "--project", str(project)]))
    assert not project.exists()


def exact_data_copy(exact_data: Path, folder: Path) -> Path:
    """The generated exact set under a YAML of its own (no generate key), which a test may then change."""
    config = yaml.safe_load(exact_data.read_text())
    config.pop("generate")
    path = folder / "data.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_resume_of_a_copy_from_an_exist_ok_run_leaves_the_original_alone(exact_data, tmp_path):
    """The stored --exist-ok is the original run's: a copy continues in a new folder, never in the original."""
    last = killed_after_first_epoch([*tiny_argv(exact_data, tmp_path), "--project", str(tmp_path / "runs"),
                                     "--exist-ok"])
    original = last.parent.parent
    copy = tmp_path / "copies" / "last.pt"
    copy.parent.mkdir()
    copy.write_bytes(last.read_bytes())
    before = tree_bytes(original)
    outcome = run(parse_options(["--resume", str(copy)]))
    assert tree_bytes(original) == before
    assert outcome.save_dir == tmp_path / "runs" / "exp2" and results_epochs(outcome.save_dir) == [1]


def test_resume_after_the_data_gained_a_class_is_refused_before_training(exact_data, tmp_path):
    data = exact_data_copy(exact_data, tmp_path)
    argv = [*tiny_argv(exact_data, tmp_path), "--data", str(data), "--project", str(tmp_path / "runs")]
    last = killed_after_first_epoch(argv)
    config = yaml.safe_load(data.read_text())
    data.write_text(yaml.safe_dump({**config, "nc": 6, "names": [*config["names"], "tram"]}))
    before = tree_bytes(last.parent.parent)
    with pytest.raises(ValueError, match=f"trained on 5 classes but {data} now has 6"):
        run(parse_options(["--resume", str(last)]))
    assert tree_bytes(last.parent.parent) == before


def test_a_second_training_into_a_locked_run_folder_is_refused(exact_data, tmp_path):
    """Two trainings with the same --name --exist-ok: the second is refused before it writes anything."""
    folder = tmp_path / "runs" / "shared"
    folder.mkdir(parents=True)
    (folder / "opt.yaml").write_text("the running training's options\n")
    argv = [*tiny_argv(exact_data, tmp_path), "--project", str(tmp_path / "runs"), "--name", "shared", "--exist-ok"]
    with folder_lock(folder, "training"):  # what the first training holds while it runs
        with pytest.raises(ValueError, match=f"{folder} is in use by another training"):
            run(parse_options(argv))
    assert (folder / "opt.yaml").read_text() == "the running training's options\n"
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "opt.yaml", "weights"]


def test_a_kill_during_the_final_validation_is_finished_by_resume(exact_data, tmp_path, caplog):
    """The epochs are done but the final step (best.pt validation, plots, stripping) is not: --resume runs it."""
    argv = [*tiny_argv(exact_data, tmp_path), "--project", str(tmp_path / "runs")]
    with mock.patch.object(FinalValidation, "__call__", side_effect=KeyboardInterrupt("killed")), \
            pytest.raises(KeyboardInterrupt):
        run(parse_options(argv))
    last = tmp_path / "runs" / "exp" / "weights" / "last.pt"
    assert load_checkpoint(last)["optimizer"] is not None, "the kill left the full checkpoint"
    caplog.set_level(logging.INFO)
    outcome = run(parse_options(["--resume", str(last)]))
    assert "running the final step" in caplog.text and f"Results saved to {outcome.save_dir}" in caplog.messages
    assert outcome.save_dir == last.parent.parent and outcome.final is not None
    assert results_epochs(outcome.save_dir) == [0, 1], "no epoch trained again"
    assert "optimizer" not in torch.load(last, weights_only=True), "last.pt stripped at the end"
    with pytest.raises(ValueError, match="already finished"):
        run(parse_options(["--resume", str(last)]))


def test_ctrl_c_prints_where_last_pt_is_and_how_to_resume(exact_data, tmp_path):
    """A real SIGINT to `python train.py`: one line naming last.pt and the resume command, exit 130."""
    argv = [*tiny_argv(exact_data, tmp_path), "--epochs", "300", "--project", str(tmp_path / "runs")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("CBBL_TRACEBACK", None)
    # SIGINT as a terminal delivers it, even when pytest itself runs in a background job (which inherits it ignored)
    process = subprocess.Popen([sys.executable, "-X", "faulthandler", "train.py", *argv], cwd=REPO_ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    last = tmp_path / "runs" / "exp" / "weights" / "last.pt"
    deadline = time.time() + 240
    while not last.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    try:
        stderr = process.communicate(timeout=120)[1]
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack: where it hangs
        pytest.fail(f"train.py still running 120 s after ctrl-C:\n{process.communicate(timeout=60)[1][-6000:]}")
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (f"train.py: training interrupted; the last complete epoch is saved "
                                               f"in {last}: continue with python train.py --resume {last}")
    assert "optimizer" in torch.load(last, weights_only=True), "an interrupted run keeps its full last.pt"


def test_final_validation_votes_and_stores_the_uncertainty_calibration_in_best_pt(tmp_path):
    """A C-BBL run's final validation scores as val.py does by default (variance voting) and fits entropy ->
    expected IoU; best.pt keeps it (stripped or not)."""
    from tests.conftest import make_tiny_checkpoint
    from utils.cbbl.calibration import CHECKPOINT_KEY
    from utils.checkpoint import strip_checkpoint

    best = make_tiny_checkpoint(tmp_path / "weights" / "best.pt", box="cbbl")
    calibration = {"entropy": [0.5, 2.5], "iou": [0.9, 0.3], "num_boxes": 40}
    results = SimpleNamespace(uncertainty={"tp": 1.0, "fp": 2.0, "calibration": calibration})
    with mock.patch("utils.engine.run.validate", return_value=results) as validate:
        assert FinalValidation(tmp_path, [], ["a", "b", "c"], torch.device("cpu"), plots=False)() is results
    assert validate.call_args.kwargs["cbbl_fusion"] and validate.call_args.args[0].detect.side_variance  # val.py's
    stored = load_checkpoint(best)
    assert stored[CHECKPOINT_KEY] == calibration and strip_checkpoint(stored)[CHECKPOINT_KEY] == calibration
    plain = make_tiny_checkpoint(tmp_path / "weights" / "best.pt", box="regress")
    with mock.patch("utils.engine.run.validate", return_value=SimpleNamespace(uncertainty=None)) as validate:
        FinalValidation(tmp_path, [], ["a", "b", "c"], torch.device("cpu"), plots=False)()
    assert CHECKPOINT_KEY not in load_checkpoint(plain) and not validate.call_args.kwargs["cbbl_fusion"]
