"""models/info.py: parameter counts and the scaled thop GFLOPs."""

from __future__ import annotations

import pytest
import torch.nn as nn

from models.common import Conv
from models.info import count_parameters, model_gflops, model_info


def test_gflops_of_a_single_convolution_is_two_macs_per_output():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False))
    expected = 2 * (3 * 3 * 3) * 8 * 320 * 320 / 1e9
    assert model_gflops(model, 320) == pytest.approx(expected, rel=1e-6)


def test_parameter_counts_and_info():
    model = nn.Sequential(Conv(3, 8, 3), Conv(8, 4, 1))
    model[1].conv.weight.requires_grad_(False)
    total = 3 * 8 * 9 + 2 * 8 + 8 * 4 + 2 * 4
    assert count_parameters(model) == total
    assert count_parameters(model, trainable_only=True) == total - 8 * 4
    info = model_info(model, 64)
    assert info["params"] == total and info["gflops"] > 0 and info["layers"] == len(list(model.modules()))
