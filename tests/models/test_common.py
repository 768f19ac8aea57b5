"""models/common.py: shapes and the defining identities of the convolutional blocks."""

from __future__ import annotations

import torch
import torch.nn as nn

from models.common import C3, SPP, SPPF, Bottleneck, Concat, Conv, Focus, Upsample, autopad


def test_autopad_keeps_size_at_stride_one():
    assert autopad(3) == 1 and autopad(6) == 3 and autopad((3, 5)) == (1, 2) and autopad(3, None, 2) == 2
    assert autopad(3, 0) == 0
    x = torch.randn(1, 4, 9, 11)
    assert Conv(4, 8, 3, 1)(x).shape == (1, 8, 9, 11)
    assert Conv(4, 8, 3, 2)(x).shape == (1, 8, 5, 6)


def test_v6_stem_halves_the_input():
    assert Conv(3, 16, 6, 2, 2)(torch.randn(1, 3, 64, 64)).shape == (1, 16, 32, 32)


def test_bottleneck_residual_only_when_channels_match():
    assert Bottleneck(8, 8).add and not Bottleneck(8, 8, shortcut=False).add and not Bottleneck(8, 16).add
    block = Bottleneck(8, 8).eval()
    nn.init.zeros_(block.cv2.bn.weight)
    nn.init.zeros_(block.cv2.bn.bias)  # the conv branch now outputs SiLU(0) = 0
    x = torch.randn(2, 8, 5, 5)
    assert torch.allclose(block(x), x)


def test_c3_shapes_and_depth():
    block = C3(8, 16, n=3)
    assert len(block.m) == 3
    assert block(torch.randn(2, 8, 7, 9)).shape == (2, 16, 7, 9)


def test_sppf_equals_spp_with_the_same_weights():
    torch.manual_seed(0)
    spp, sppf = SPP(8, 8, (5, 9, 13)).eval(), SPPF(8, 8, 5).eval()
    sppf.cv1.load_state_dict(spp.cv1.state_dict())
    sppf.cv2.load_state_dict(spp.cv2.state_dict())
    x = torch.randn(1, 8, 16, 16)
    assert torch.allclose(spp(x), sppf(x), atol=1e-6)


def test_focus_is_space_to_depth():
    focus = Focus(1, 4, 1)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    captured = {}
    focus.conv.conv.register_forward_hook(lambda module, inputs, output: captured.setdefault("in", inputs[0]))
    assert focus(x).shape == (1, 4, 2, 2)
    assert captured["in"][0, :, 0, 0].tolist() == [0.0, 4.0, 1.0, 5.0]  # the 2x2 block at the origin


def test_concat_and_upsample():
    a, b = torch.randn(1, 3, 4, 4), torch.randn(1, 5, 4, 4)
    assert Concat(1)([a, b]).shape == (1, 8, 4, 4)
    up = Upsample(None, 2, "nearest")(a)
    assert up.shape == (1, 3, 8, 8) and torch.equal(up[..., ::2, ::2], a)
