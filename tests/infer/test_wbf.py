"""utils/infer/wbf.py: weighted box fusion on hand-worked cases."""

from __future__ import annotations

import pytest
import torch

from utils.infer.wbf import weighted_box_fusion


def test_two_models_agreeing_fuse_to_the_weighted_mean():
    model_a = torch.tensor([[0.0, 0.0, 10.0, 10.0, 0.9, 0.0]])
    model_b = torch.tensor([[2.0, 0.0, 12.0, 10.0, 0.3, 0.0]])
    fused = weighted_box_fusion([model_a, model_b])
    assert fused.shape == (1, 6)
    assert fused[0, :4].tolist() == pytest.approx([0.5, 0.0, 10.5, 10.0])  # (0.9 * 0 + 0.3 * 2) / 1.2
    assert fused[0, 4].item() == pytest.approx(0.6)  # mean confidence, both models voted


def test_a_box_only_one_model_sees_is_down_weighted():
    model_a = torch.tensor([[0.0, 0.0, 10.0, 10.0, 0.8, 1.0]])
    fused = weighted_box_fusion([model_a, torch.zeros(0, 6)])
    assert fused[0, 4].item() == pytest.approx(0.4) and fused[0, 5].item() == 1.0


def test_classes_and_separate_objects_stay_apart_and_extras_average():
    model_a = torch.tensor([[0.0, 0.0, 10.0, 10.0, 0.9, 0.0, 0.2], [50.0, 50.0, 60.0, 60.0, 0.5, 0.0, 1.0]])
    model_b = torch.tensor([[0.0, 0.0, 10.0, 10.0, 0.9, 1.0, 0.4], [50.0, 50.0, 60.0, 60.0, 0.5, 0.0, 3.0]])
    fused = weighted_box_fusion([model_a, model_b])
    assert len(fused) == 3
    far = fused[fused[:, 0] == 50.0]
    assert far[0, 6].item() == pytest.approx(2.0) and far[0, 4].item() == pytest.approx(0.5)


def test_bad_weights_are_an_error():
    with pytest.raises(ValueError, match="weights"):
        weighted_box_fusion([torch.zeros(0, 6)], weights=[1.0, 2.0])
