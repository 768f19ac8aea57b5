"""models/fuse.py: folding BatchNorm into convolutions leaves the outputs unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from models.fuse import fuse_conv_and_bn
from models.yolo import Model
from tests.conftest import REPO_ROOT

MODELS = REPO_ROOT / "models"


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine parameters, so a wrong fold would show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(size, generator=generator) * 0.5 + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) * 0.5 + 0.75)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.1)


def test_fuse_conv_and_bn_single_layer():
    conv, bn = nn.Conv2d(3, 6, 3, 2, 1, groups=3, bias=True), nn.BatchNorm2d(6)
    randomise_batchnorm(bn)
    bn.eval()
    x = torch.randn(2, 3, 9, 9)
    assert torch.allclose(fuse_conv_and_bn(conv, bn)(x), bn(conv(x)), atol=1e-5)


@pytest.mark.parametrize("name, box_loss", [("yolov5n", "cbbl"), ("yolov5n-xs-tph", "ciou")])
def test_fused_model_matches_unfused(name, box_loss):
    torch.manual_seed(0)
    model = Model(MODELS / f"{name}.yaml", nc=3, head={"box_loss": box_loss}).eval()
    randomise_batchnorm(model)
    images = torch.rand(1, 3, 96, 64)
    with torch.no_grad():
        reference = model(images)[0]
        fused = model.fuse()(images)[0]
    assert not any(isinstance(module, nn.BatchNorm2d) for module in model.modules())
    assert torch.allclose(fused, reference, atol=1e-4, rtol=1e-4)
