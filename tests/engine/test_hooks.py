"""Tests for utils/engine/hooks.py and utils/engine/writers.py with a stand-in trainer."""

from __future__ import annotations

import csv
import errno
import math
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from utils.checkpoint import load_checkpoint
from utils.engine.hooks import BestModelHook, CheckpointHook, LRScheduleHook, ValidationHook, metrics_row
from utils.engine.optim import build_optimizer
from utils.engine.writers import ResultsCsvHook, truncate_results
from utils.files import OutputWriteError
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


def lr_hook(epochs=10, warmup_epochs=3.0):
    return LRScheduleHook(lr0=0.01, lrf=0.1, epochs=epochs, cosine=False, momentum=0.9, warmup_epochs=warmup_epochs,
                          warmup_momentum=0.8, warmup_bias_lr=0.1, num_batches=50)


def test_warmup_ramps_lr_and_momentum():
    trainer, hook = fake_trainer(), lr_hook()
    hook.before_epoch(trainer)
    hook.before_step(trainer)
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    assert lrs == [0.0, 0.0, 0.1] and math.isclose(trainer.optimizer.param_groups[0]["momentum"], 0.8)
    trainer.iteration = hook.warmup_iterations
    hook.before_step(trainer)
    assert all(math.isclose(g["lr"], 0.01) for g in trainer.optimizer.param_groups)
    assert math.isclose(trainer.optimizer.param_groups[1]["momentum"], 0.9)


def test_lr_after_warmup_follows_the_schedule():
    trainer, hook = fake_trainer(epoch=5), lr_hook()
    trainer.iteration = 1000
    hook.before_epoch(trainer)
    hook.before_step(trainer)
    hook.after_epoch(trainer)
    assert math.isclose(trainer.metrics["lr/pg1"], 0.01 * ((1 - 5 / 10) * 0.9 + 0.1))


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


def test_nosave_keeps_only_the_final_epoch(tmp_path):
    hook = CheckpointHook(tmp_path, {"model_yaml": {}}, nosave=True)
    hook.after_epoch(fake_trainer(epoch=0, epochs=2))
    assert not (tmp_path / "last.pt").exists()
    hook.after_epoch(fake_trainer(epoch=1, epochs=2))
    assert (tmp_path / "last.pt").exists()


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


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
