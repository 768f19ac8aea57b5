"""Tests for utils/engine/trainer.py on a toy model and loss (the real end-to-end runs are in test_train.py)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn as nn

import utils.engine.trainer as trainer_module
import utils.torch_utils as torch_utils
from utils.engine.trainer import (
    Hook,
    Trainer,
    amp_check_detections,
    amp_check_image,
    check_amp,
    check_finite_loss,
    detections_agree,
    multi_scale_size,
)
from utils.torch_utils import cpu_has_native_bf16


class ToyLoss:
    """Mean of the model output as the 'box' term; NaN when the batch asks for it."""

    def __call__(self, preds, targets):
        total = preds.mean()
        if torch.isnan(targets).any():
            total = total * float("nan")
        return total, {"box": total.detach(), "obj": torch.tensor(0.0), "cls": torch.tensor(0.0)}


class Recorder(Hook):
    def __init__(self):
        self.events = []

    def before_train(self, trainer):
        self.events.append("before_train")

    def after_epoch(self, trainer):
        self.events.append(f"after_epoch{trainer.epoch}")

    def after_train(self, trainer):
        self.events.append(f"after_train completed={trainer.completed}")


def toy_batches(num_batches=4, nan_at=None):
    generator = torch.Generator().manual_seed(0)
    batches = []
    for index in range(num_batches):
        images = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8, generator=generator)
        targets = torch.tensor([[0, 0, 0.5, 0.5, 0.2, 0.2]])
        if index == nan_at:
            targets = targets * float("nan")
        batches.append((images, targets, [f"img{index}_{i}.jpg" for i in range(2)], None))
    return batches


def make_trainer(batches, hooks=(), accumulate=1, epochs=2, amp=False, loss_fn=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return Trainer(model=model, loss_fn=loss_fn or ToyLoss(), optimizer=optimizer, train_loader=batches,
                   device=torch.device("cpu"), epochs=epochs, hooks=hooks, accumulate=accumulate, amp=amp)


def test_fit_runs_phases_in_order_and_learns():
    recorder = Recorder()
    trainer = make_trainer(toy_batches(), hooks=[recorder])
    trainer.fit()
    assert recorder.events == ["before_train", "after_epoch0", "after_epoch1", "after_train completed=True"]
    assert trainer.model[0].weight.is_contiguous(memory_format=torch.channels_last)  # CPU trains channels-last
    assert trainer.mean_losses["box"] < 0.5 and trainer.iteration == 7


def test_accumulation_steps_every_n_batches():
    trainer = make_trainer(toy_batches(4), accumulate=2, epochs=1)
    steps = []
    original = trainer.optimizer.step
    trainer.optimizer.step = lambda *a, **k: (steps.append(trainer.iteration), original(*a, **k))[1]
    trainer.fit()
    assert steps == [1, 3]  # after each pair of batches


def test_nan_loss_stops_at_once_naming_the_batch():
    recorder = Recorder()
    trainer = make_trainer(toy_batches(4, nan_at=2), hooks=[recorder])
    with pytest.raises(FloatingPointError, match=r"iteration 2;.*img2_0\.jpg"):
        trainer.fit()
    assert recorder.events[-1] == "after_train completed=False"


def test_check_finite_lists_terms():
    with pytest.raises(FloatingPointError, match="'box': inf"):
        check_finite_loss(torch.tensor(float("inf")), {"box": float("inf")}, ["a.jpg"], 5)


def test_multi_scale_sizes_are_stride_multiples_in_range():
    rng = random.Random(0)
    sizes = {multi_scale_size(320, 32, rng) for _ in range(200)}
    assert all(size % 32 == 0 and 160 <= size <= 480 + 32 for size in sizes)
    assert len(sizes) > 3


def test_state_round_trip_resumes_after_saved_epoch():
    trainer = make_trainer(toy_batches(), epochs=1)
    trainer.fit()
    state = trainer.state_dict()
    fresh = make_trainer(toy_batches(), epochs=3)
    fresh.load_state_dict(state)
    assert fresh.start_epoch == 1
    assert fresh.last_optimizer_step == trainer.last_optimizer_step
    momentum = fresh.optimizer.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, trainer.optimizer.state_dict()["state"][0]["momentum_buffer"])


def test_resume_from_optimizer_groups_without_initial_lr_keeps_the_schedule_base():
    trainer = make_trainer(toy_batches(), epochs=1)
    trainer.fit()
    state = trainer.state_dict()  # groups as written before they carried initial_lr
    assert all("initial_lr" not in group for group in state["optimizer"]["param_groups"])
    fresh = make_trainer(toy_batches(), epochs=3)
    for group in fresh.optimizer.param_groups:
        group["initial_lr"] = 0.1  # as build_optimizer sets it
    fresh.load_state_dict(state)
    assert [group["initial_lr"] for group in fresh.optimizer.param_groups] == [0.1]


def test_an_early_stopped_state_resumes_into_the_final_step_only():
    """A kill after early stopping (during the final validation) must not train further epochs on --resume."""
    trainer = make_trainer(toy_batches(), epochs=1)
    trainer.fit()
    trainer.stop = True
    recorder = Recorder()
    fresh = make_trainer(toy_batches(), hooks=[recorder], epochs=5)
    fresh.load_state_dict(trainer.state_dict())
    assert (fresh.start_epoch, fresh.epoch) == (5, 0)
    fresh.fit()
    assert recorder.events == ["before_train", "after_train completed=True"]


def tiny_detector():
    """A random tiny C-BBL model whose detections are spread out as a trained model's: random weights alone give
    every anchor a confidence near 0.25, ties that any rounding reorders."""
    from models.yolo import Model
    from tests.conftest import TINY_MODEL_YAML

    torch.manual_seed(0)
    model = Model(TINY_MODEL_YAML, head={"box_loss": "cbbl"})
    with torch.no_grad():
        for conv in model.detect.m:
            conv.weight.mul_(100.0)
            conv.bias.view(model.detect.na, model.detect.no)[:, model.detect.box_channels:] = 0.0
    return model


def test_amp_check_falls_back_to_float32_when_the_detections_differ(monkeypatch, caplog):
    monkeypatch.setattr(torch_utils, "cpu_has_native_bf16", lambda: True)
    row = torch.tensor([[0.5, 0.5, 0.1, 0.1, 0.9, 1.0]])
    shifted = {False: row, True: row + torch.tensor([0.2, 0, 0, 0, 0, 0])}
    monkeypatch.setattr(trainer_module, "amp_check_detections", lambda model, image, mixed, conf_thres: shifted[mixed])
    assert check_amp(tiny_detector(), torch.device("cpu")) is False
    assert "AMP: checks failed" in caplog.text and "training in float32" in caplog.text
    fewer = {False: shifted[False], True: shifted[False][:0]}
    monkeypatch.setattr(trainer_module, "amp_check_detections", lambda model, image, mixed, conf_thres: fewer[mixed])
    assert check_amp(tiny_detector(), torch.device("cpu")) is False


def test_amp_on_a_cpu_without_native_bf16_is_float32_without_running_the_check(monkeypatch, caplog):
    monkeypatch.setattr(torch_utils, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(trainer_module, "amp_check_detections", lambda *a, **k: pytest.fail("check ran"))
    caplog.set_level("INFO", logger="utils.engine.trainer")
    trainer = make_trainer(toy_batches(2), epochs=1, amp=True)
    assert trainer.amp is False and not trainer.scaler.is_enabled()
    assert "has no native mixed precision" in caplog.text


def test_bf16_training_step_autocasts_the_model_but_not_the_loss(monkeypatch):
    """Where --amp is on (check passed) on CPU: the model's convs run bf16, the loss sees float32 outside autocast,
    the weights (and so the optimizer state) stay float32, and no GradScaler is used."""
    monkeypatch.setattr(torch_utils, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(trainer_module, "check_amp", lambda model, device: True)
    seen = []

    class RecordingLoss(ToyLoss):
        def __call__(self, preds, targets):
            seen.append((preds.dtype, torch.is_autocast_enabled("cpu")))
            return super().__call__(preds.float(), targets)

    trainer = make_trainer(toy_batches(2), epochs=1, amp=True, loss_fn=RecordingLoss())
    trainer.fit()
    assert trainer.amp and not trainer.scaler.is_enabled()
    assert seen == [(torch.bfloat16, False)] * 2  # a toy model without a Detect head: its output is bf16
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert trainer.optimizer.state_dict()["state"][0]["momentum_buffer"].dtype == torch.float32


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bfloat16 (amx_bf16/avx512_bf16)")
def test_bf16_detections_of_a_tiny_model_agree_with_float32_within_the_check_tolerance(caplog):
    model, image = tiny_detector().eval(), amp_check_image(128)
    reference = amp_check_detections(model, image, mixed=False, conf_thres=0.4)
    mixed = amp_check_detections(model, image, mixed=True, conf_thres=0.4)
    assert len(reference) > 20 and detections_agree(reference, mixed)
    assert not torch.equal(reference, mixed)  # bf16 did run
    caplog.set_level("INFO", logger="utils.engine.trainer")
    assert check_amp(model, torch.device("cpu"), conf_thres=0.4) is True
    assert "AMP: checks passed" in caplog.text


def test_detections_agree_pairs_rows_in_any_order_within_the_tolerance():
    rows = torch.tensor([[0.5, 0.5, 0.1, 0.1, 0.30, 1.0], [0.2, 0.3, 0.05, 0.05, 0.29, 0.0]])
    assert detections_agree(rows, rows.flip(0) + 0.05)
    assert not detections_agree(rows, rows + torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 1.0]))  # another class
    assert not detections_agree(rows, rows[:1])
    assert not detections_agree(rows, torch.cat([rows[:1], rows[:1]]))  # a row of the first without a partner
