"""Tests for utils/engine/hooks.py and utils/engine/writers.py with a stand-in trainer."""

from __future__ import annotations

import errno
import json
import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

from models.yolo import Model, model_from_checkpoint
from utils.checkpoint import load_checkpoint
from utils.engine.hooks import BestModelHook, CheckpointHook, LRScheduleHook, ValidationHook, metrics_row
from utils.engine.optim import build_optimizer
from utils.engine.trainer import Hook, Trainer
from utils.engine.writers import YOLOV5_COLUMNS, ResultsCsvHook, TensorBoardHook, read_results, truncate_results
from utils.files import OutputWriteError
from utils.hyp import load_hyp
from utils.torch_utils import ModelEMA


def fake_trainer(epoch=0, epochs=3, **extra):
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    trainer = SimpleNamespace(epoch=epoch, epochs=epochs, iteration=0, start_epoch=0, num_batches=10, metrics={},
                              mean_losses={"box": 0.5, "obj": 0.25, "cls": 0.125}, stop=False, is_best=False,
                              completed=False, optimizer=build_optimizer(model, "SGD", lr=0.01), ema=ModelEMA(model),
                              unwrapped_model=model, hooks=[])
    trainer.state_dict = lambda: {"epoch": trainer.epoch, "optimizer": trainer.optimizer.state_dict(), "scaler": {}}
    for key, value in extra.items():
        setattr(trainer, key, value)
    return trainer


def lr_hook(epochs=10, warmup_epochs=3.0, full_accumulate=1.0):
    return LRScheduleHook(lrf=0.1, epochs=epochs, cosine=False, momentum=0.9, warmup_epochs=warmup_epochs,
                          warmup_momentum=0.8, warmup_bias_lr=0.1, num_batches=50, full_accumulate=full_accumulate)


def test_warmup_ramps_lr_momentum_and_accumulation():
    trainer, hook = fake_trainer(accumulate=4), lr_hook(full_accumulate=4.0)
    hook.before_epoch(trainer)
    hook.before_step(trainer)
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    assert lrs == [0.1, 0.0, 0.0] and math.isclose(trainer.optimizer.param_groups[0]["momentum"], 0.8)  # biases first
    hook.after_epoch(trainer)
    assert [trainer.metrics[f"x/lr{i}"] for i in range(3)] == lrs  # results.csv columns in v7.0's group order
    assert trainer.accumulate == 1
    trainer.iteration = hook.warmup_iterations // 2
    hook.before_step(trainer)
    assert trainer.accumulate == 2  # 1 + (4 - 1) / 2 = 2.5, rounded half to even like numpy
    trainer.iteration = hook.warmup_iterations
    hook.before_step(trainer)
    assert all(math.isclose(g["lr"], 0.01) for g in trainer.optimizer.param_groups)
    assert math.isclose(trainer.optimizer.param_groups[1]["momentum"], 0.9) and trainer.accumulate == 4


def test_warmup_lr_comes_from_each_group_and_leaves_adam_beta1():
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    trainer, hook = fake_trainer(optimizer=build_optimizer(model, "Adam", lr=3e-4, momentum=0.843)), lr_hook()
    trainer.iteration = hook.warmup_iterations // 2
    hook.before_step(trainer)
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    assert lrs == pytest.approx([(0.1 + 3e-4) / 2, 1.5e-4, 1.5e-4])
    assert all(g["betas"] == (0.843, 0.999) for g in trainer.optimizer.param_groups)


def test_lr_after_warmup_lags_one_epoch_as_yolov5s_scheduler():
    """YOLOv5/TPH step their scheduler after each epoch: epoch 5 (past warmup) trains at lf(4)."""
    trainer, hook = fake_trainer(epoch=5), lr_hook()
    trainer.iteration = 5 * 50
    hook.before_epoch(trainer)
    hook.before_step(trainer)
    hook.after_epoch(trainer)
    assert math.isclose(trainer.metrics["x/lr1"], 0.01 * ((1 - 4 / 10) * 0.9 + 0.1))
    assert hook.epoch_factor(3) == hook.lf(3) and hook.epoch_factor(4) == hook.lf(3)  # warmup ends at 150 = 3 * 50
    assert lr_hook(warmup_epochs=0.0).epoch_factor(0) == 1.0  # epoch 0 trains at lf(0) either way


def test_validation_skipped_with_noval_until_last_epoch():
    calls = []
    results = SimpleNamespace(precision=0.5, recall=0.4, map50=0.6, map50_95=0.3, ap_small=0.2,
                              loss={"box": 1.0, "obj": 2.0, "cls": 3.0}, fitness=lambda: 0.33)
    hook = ValidationHook(lambda model: calls.append(model) or results, noval=True)
    trainer = fake_trainer(epoch=0, epochs=2)
    hook.after_epoch(trainer)
    assert not calls and math.isnan(trainer.metrics["metrics/mAP_0.5"])
    trainer.epoch = 1
    hook.after_epoch(trainer)
    assert calls == [trainer.ema.ema] and trainer.metrics["metrics/mAP_0.5"] == 0.6
    assert trainer.metrics["val/cls_loss"] == 3.0 and trainer.metrics["fitness"] == 0.33
    assert set(metrics_row(None)) == set(metrics_row(results))


def test_best_model_and_early_stopping():
    hook, trainer = BestModelHook(patience=2), fake_trainer()
    for epoch, fitness in enumerate([0.1, 0.3, 0.2, 0.25]):
        trainer.epoch, trainer.metrics["fitness"] = epoch, fitness
        hook.after_epoch(trainer)
        assert trainer.is_best == (epoch in (0, 1))
    assert trainer.stop and hook.best_epoch == 1
    restored = BestModelHook(patience=2)
    restored.load_state_dict(hook.state_dict())
    assert restored.best_fitness == 0.3 and restored.best_epoch == 1


def test_checkpoint_hook_writes_safe_loadable_files(tmp_path):
    trainer = fake_trainer(epoch=1, epochs=4, is_best=True)
    trainer.hooks = [BestModelHook(patience=0)]
    static = {"model_yaml": {"nc": 2}, "names": ["a", "b"], "hyp": {"lr0": 0.01}, "opt": {"epochs": 4}}
    hook = CheckpointHook(tmp_path / "weights", static, save_period=2)
    hook.after_epoch(trainer)
    for name in ("last.pt", "best.pt", "epoch1.pt"):
        checkpoint = load_checkpoint(tmp_path / "weights" / name)
        assert checkpoint["epoch"] == 1 and checkpoint["names"] == ["a", "b"]
        assert checkpoint["hooks"]["best"]["best_epoch"] == -1
        assert torch.equal(checkpoint["model"]["0.weight"], trainer.unwrapped_model[0].weight)
    assert not list((tmp_path / "weights").glob(".*.tmp"))


def test_checkpoints_are_stripped_when_training_ends(tmp_path):
    trainer = fake_trainer(epoch=2, epochs=3, is_best=True)
    trainer.hooks = [BestModelHook(patience=0)]
    hook = CheckpointHook(tmp_path, {"model_yaml": {"nc": 2}, "names": ["a", "b"]})
    hook.after_epoch(trainer)
    hook.after_train(trainer)  # not completed (an exception ended the loop): --resume still needs everything
    assert load_checkpoint(tmp_path / "last.pt")["optimizer"] is not None
    trainer.completed = True
    hook.after_train(trainer)
    for name in ("last.pt", "best.pt"):
        checkpoint = load_checkpoint(tmp_path / name)
        assert set(checkpoint) == {"model", "model_yaml", "names", "epoch", "best_fitness"}
        ema_weight = trainer.ema.ema.state_dict()["0.weight"]
        assert torch.equal(checkpoint["model"]["0.weight"], ema_weight.half())


def test_stripped_yolov5n_is_under_5_mb(tmp_path):
    """YOLOv5's stripped yolov5n.pt is 3.9 MB; ours unstripped were 28.8 MB (weights, EMA, optimizer in fp32)."""
    model = Model("models/yolov5n.yaml", nc=80)
    trainer = fake_trainer(epoch=0, epochs=1, unwrapped_model=model, ema=ModelEMA(model), completed=True,
                           optimizer=build_optimizer(model, "SGD", lr=0.01))
    hook = CheckpointHook(tmp_path, {"model_yaml": model.yaml, "names": [str(i) for i in range(80)]})
    hook.after_epoch(trainer)
    full_size = (tmp_path / "last.pt").stat().st_size
    hook.after_train(trainer)
    assert (tmp_path / "last.pt").stat().st_size < 5e6 < full_size
    reloaded = model_from_checkpoint(load_checkpoint(tmp_path / "last.pt"))
    assert next(reloaded.parameters()).dtype == torch.float32


def test_tensorboard_events_hold_the_csv_scalars_and_the_plots(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    cv2.imwrite(str(tmp_path / "results.png"), np.full((20, 30, 3), 255, np.uint8))
    trainer = fake_trainer(completed=True)
    trainer.metrics = {"x/lr0": 0.01, "diag/gt_total": 4.0}
    hook = TensorBoardHook(tmp_path)
    hook.before_train(trainer)
    hook.after_epoch(trainer)
    hook.after_train(trainer)
    events = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    assert {"train/box_loss", "metrics/mAP_0.5", "x/lr0", "diag/gt_total"} <= set(events.Tags()["scalars"])
    assert events.Tags()["images"] == ["results"]


def test_tensorboard_missing_is_not_fatal(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    hook = TensorBoardHook(tmp_path)
    trainer = fake_trainer()
    for event in ("before_train", "after_epoch", "after_train"):
        getattr(hook, event)(trainer)
    assert not list(tmp_path.iterdir())


def test_nosave_keeps_only_the_final_epoch(tmp_path):
    hook = CheckpointHook(tmp_path, {"model_yaml": {}}, nosave=True)
    hook.after_epoch(fake_trainer(epoch=0, epochs=2))
    assert not (tmp_path / "last.pt").exists()
    hook.after_epoch(fake_trainer(epoch=1, epochs=2))
    assert (tmp_path / "last.pt").exists()


def read_rows(path):
    header, rows = read_results(path)
    return [dict(zip(header, row)) for row in rows]


def test_results_csv_rows_and_resume_truncation(tmp_path):
    path = tmp_path / "results.csv"
    hook = ResultsCsvHook(path)
    trainer = fake_trainer()
    hook.before_train(trainer)
    for epoch in range(3):
        trainer.epoch, trainer.metrics = epoch, {"metrics/mAP_0.5": epoch / 10, "fitness": 1.0}
        hook.after_epoch(trainer)
    with open(path, "a") as f:
        f.write("3,0.5,0.2")  # a half-written row from a killed process
    rows = read_rows(path)
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3"] and "fitness" not in rows[0]
    assert rows[0]["train/box_loss"] == "0.5" and rows[2]["metrics/mAP_0.5"] == "0.2"
    trainer.start_epoch = 2
    hook.before_train(trainer)
    assert [r["epoch"] for r in read_rows(path)] == ["0", "1"]
    trainer.epoch = 2
    hook.after_epoch(trainer)
    assert [r["epoch"] for r in read_rows(path)] == ["0", "1", "2"]


def test_results_csv_has_yolov5_columns_first_as_yolov5_writes_them(tmp_path):
    path = tmp_path / "results.csv"
    hook = ResultsCsvHook(path)
    trainer = fake_trainer()
    trainer.metrics = {"diag/gt_total": 7.0, "x/lr2": 0.1, "metrics/AP_small": 0.05, "x/lr0": 0.01, "x/lr1": 0.02,
                       **metrics_row(SimpleNamespace(precision=0.5, recall=0.25, map50=0.3, map50_95=0.125,
                                                     ap_small=0.05, loss={"box": 1.0, "obj": 2.0, "cls": 3.0},
                                                     fitness=lambda: 0.2))}
    hook.before_train(trainer)
    hook.after_epoch(trainer)
    header, rows = read_results(path)
    assert header == [*YOLOV5_COLUMNS, "metrics/AP_small", "diag/gt_total"]
    lines = path.read_text().splitlines()
    assert lines[0] == ("%20s," * len(header) % tuple(header)).rstrip(",")  # YOLOv5's own header expression
    assert lines[1] == ("%20.5g," * len(header) % tuple(float(v) for v in rows[0])).rstrip(",")  # and values
    assert dict(zip(header, rows[0]))["x/lr1"] == "0.02" and dict(zip(header, rows[0]))["val/cls_loss"] == "3"


def test_results_csv_on_a_full_disk_stops_naming_the_file(tmp_path, monkeypatch):
    hook = ResultsCsvHook(tmp_path / "results.csv")
    trainer = fake_trainer()
    hook.before_train(trainer)

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OutputWriteError, match=r"could not write .*results\.csv: .*No space left on device"):
        hook.after_epoch(trainer)


@pytest.mark.parametrize("content", ["", "epoch,x\n"])
def test_truncate_handles_empty_files(tmp_path, content):
    path = tmp_path / "results.csv"
    path.write_text(content)
    assert truncate_results(path, 5) == 0


def test_image_weights_favour_rare_classes():
    import numpy as np

    from utils.engine.hooks import ImageWeightsHook

    class FakeDataset:
        labels = [np.array([[0, 0.5, 0.5, 0.1, 0.1]])] * 9 + [np.array([[1, 0.5, 0.5, 0.1, 0.1]])]

        def sample_by_class_weights(self, weights):
            self.weights = weights

    dataset = FakeDataset()
    ImageWeightsHook(dataset, nc=2).before_epoch(fake_trainer())
    assert dataset.weights[1] == pytest.approx(9 * dataset.weights[0]) and dataset.weights.sum() == pytest.approx(1)


# Traces of YOLOv5 v7.0's and TPH-YOLOv5's own train.py schedules (tests/fixtures/make_lr_traces.py).
LR_TRACES = Path(__file__).resolve().parents[1] / "fixtures" / "lr_traces.npz"
HYPS = Path(__file__).resolve().parents[2] / "data" / "hyps"
OUR_GROUP_ROLES = ["bias", "weight", "norm"]  # YOLOv5 v7.0's order (utils/engine/optim.py)
SCHEDULE_KEYS = ("lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum", "warmup_bias_lr")


def reference_traces() -> tuple[dict, dict]:
    traces = np.load(LR_TRACES, allow_pickle=False)
    return json.loads(str(traces["about"]))["cases"], {key: traces[key] for key in traces.files if key != "about"}


class ScheduleRecorder(Hook):
    """What the reference generator records, read after each of our trainer's steps."""

    def __init__(self):
        self.rows = {"lr": [], "momentum": [], "accumulate": [], "stepped": []}

    def after_step(self, trainer):
        groups = trainer.optimizer.param_groups
        self.rows["lr"].append([group["lr"] for group in groups])
        self.rows["momentum"].append([group.get("momentum", group.get("betas", (None,))[0]) for group in groups])
        self.rows["accumulate"].append(trainer.accumulate)
        self.rows["stepped"].append(trainer.last_optimizer_step == trainer.iteration)


def schedule_loss(preds, targets):
    loss = preds.float().pow(2).mean()
    return loss, {"box": loss.detach()}


@pytest.mark.parametrize("case", list(reference_traces()[0]))
def test_schedule_equals_the_references_at_every_iteration(case):
    """LR of each group, momentum/beta1, accumulate and optimizer steps of our trainer (optimizer builder, LR
    hook, step rule) equal YOLOv5 v7.0's or TPH-YOLOv5's own train.py over 2,000+ iterations within 1e-9."""
    from utils.engine.options import TrainOptions
    from utils.engine.run import build_optimization

    cases, arrays = reference_traces()
    ref = cases[case]
    hyp_path = HYPS / ref["hyp_file"]
    ours = load_hyp(hyp_path)
    assert {key: getattr(ours, key) for key in SCHEDULE_KEYS} == ref["hyp"]  # our copy of their hyp file
    opts = TrainOptions(hyp=str(hyp_path), batch_size=ref["batch_size"], epochs=ref["epochs"], nbs=ref["nbs"],
                        **ref["flags"])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    num_batches = ref["batches_per_epoch"]
    optimizer, accumulate, schedule = build_optimization(opts, model, num_batches * opts.batch_size, num_batches)
    assert schedule.warmup_iterations == ref["warmup_iterations"]
    to_ours = [ref["roles"].index(role) for role in OUR_GROUP_ROLES]  # TPH orders its groups [norm, weight, bias]
    assert [group["weight_decay"] for group in optimizer.param_groups] == pytest.approx(
        [ref["weight_decay"][i] for i in to_ours], rel=1e-12)
    recorder = ScheduleRecorder()
    batch = (torch.zeros(1, 3, 2, 2, dtype=torch.uint8), torch.zeros(0, 6), ["a.jpg"], None)
    trainer = Trainer(model=model, loss_fn=schedule_loss, optimizer=optimizer, train_loader=[batch] * num_batches,
                      device=torch.device("cpu"), epochs=opts.epochs, hooks=[schedule, recorder], accumulate=accumulate)
    trainer.fit()
    expected_lr = arrays[f"{case}/lr"][:, to_ours]
    assert len(recorder.rows["lr"]) == len(expected_lr) >= 2000
    np.testing.assert_allclose(np.array(recorder.rows["lr"]), expected_lr, rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.array(recorder.rows["momentum"]), arrays[f"{case}/momentum"][:, to_ours],
                               rtol=0, atol=1e-9)
    np.testing.assert_array_equal(np.array(recorder.rows["accumulate"]), arrays[f"{case}/accumulate"])
    np.testing.assert_array_equal(np.array(recorder.rows["stepped"]), arrays[f"{case}/stepped"])
