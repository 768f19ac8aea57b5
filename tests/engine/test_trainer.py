"""Tests for utils/engine/trainer.py on a toy model and loss (the real end-to-end runs are in test_train.py)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn as nn

from utils.engine.trainer import Hook, Trainer, check_finite_loss, multi_scale_size


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


def make_trainer(batches, hooks=(), accumulate=1, epochs=2):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return Trainer(model=model, loss_fn=ToyLoss(), optimizer=optimizer, train_loader=batches,
                   device=torch.device("cpu"), epochs=epochs, hooks=hooks, accumulate=accumulate)


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
