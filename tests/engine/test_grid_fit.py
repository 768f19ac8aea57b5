"""Tests for utils/engine/grid_fit.py: targets as training sees them, and the fitted grids land in the model."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from models.yolo import Model
from tests.conftest import TINY_MODEL_YAML
from utils.boxes import encode_offsets
from utils.engine.grid_fit import assigned_offsets, fit_model_grid, letterboxed_targets


def fake_dataset(num_images: int = 40, seed: int = 0) -> SimpleNamespace:
    """``labels`` (n, 5) normalised and ``shapes`` (N, 2) [w, h], as the training dataset has them."""
    rng = np.random.default_rng(seed)
    labels = []
    for _ in range(num_images):
        count = int(rng.integers(1, 6))
        centres = rng.uniform(0.1, 0.9, (count, 2))
        sizes = rng.uniform(0.05, 0.3, (count, 2))
        labels.append(np.concatenate([np.zeros((count, 1)), centres, sizes], 1))
    return SimpleNamespace(labels=labels, shapes=np.array([[128, 96]] * num_images, dtype=np.float64))


def test_letterboxed_targets_pad_the_short_side():
    targets = letterboxed_targets([np.array([[2, 0.5, 0.5, 0.25, 0.5]])], np.array([[200.0, 100.0]]), 64)
    # 200 x 100 -> 64 x 32, padded by 16 px above and below: the centre stays, the height halves
    torch.testing.assert_close(targets, torch.tensor([[0.0, 2.0, 0.5, 0.5, 0.25, 0.25]]))


def test_assigned_offsets_are_the_loss_labels():
    targets = torch.tensor([[0.0, 0.0, 0.3, 0.6, 0.2, 0.25]])
    anchors = torch.tensor([[[1.5, 2.0]]])  # one level, one anchor, grid units
    offsets = assigned_offsets(targets, anchors, torch.tensor([8.0]), 64, 4.0, "logit")
    assert offsets.shape == (3, 4)  # its own cell and the two nearer neighbours
    ratio = torch.tensor([[1.6, 2.0]]) / torch.tensor([[1.5, 2.0]])
    expected_size = encode_offsets(torch.zeros(1, 2), ratio, "logit")[:, 2:]
    torch.testing.assert_close(offsets[:, 2:], expected_size.expand(3, 2))


@pytest.mark.parametrize("grid", ["auto", "quantile"])
def test_fit_updates_the_head_and_the_yaml_and_is_reproducible(grid, caplog):
    caplog.set_level(logging.INFO)
    fitted = []
    for _ in range(2):
        model = Model(TINY_MODEL_YAML, head={"box_loss": "cbbl", "grid": grid})
        before = model.detect.head
        head = fit_model_grid(model, fake_dataset(), imgsz=64, seed=3)
        assert head is not None and head != before and model.detect.head == head
        assert model.yaml["detect"] == head.to_dict()
        assert torch.equal(model.detect.grid_points[0], torch.tensor(head.centre_points))
        fitted.append(head)
    assert fitted[0] == fitted[1]
    assert f"C-BBL grid '{grid}' fitted on" in caplog.text and "% per interval" in caplog.text


@pytest.mark.parametrize("head", [{"box_loss": "ciou"}, {"box_loss": "cbbl", "grid": "in"}])
def test_other_heads_are_left_alone(head):
    model = Model(TINY_MODEL_YAML, head=head)
    before = model.detect.head
    assert fit_model_grid(model, fake_dataset(), imgsz=64) is None and model.detect.head == before
