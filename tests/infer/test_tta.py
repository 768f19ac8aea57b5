"""utils/infer/tta.py: passes are undone exactly, so an object seen by every pass lands on one place."""

from __future__ import annotations

import pytest
import torch

from utils.infer.tta import TTA_SCALES, deaugment, scale_images, tta_forward


def _bright_square_detector(images: torch.Tensor) -> torch.Tensor:
    """Finds the bright square of each image and reports it as one (cx, cy, w, h, obj, cls) prediction."""
    preds = []
    for image in images:
        ys, xs = torch.nonzero(image[0] > 0.9, as_tuple=True)
        x1, x2, y1, y2 = xs.min().float(), xs.max().float() + 1, ys.min().float(), ys.max().float() + 1
        preds.append(torch.tensor([[(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, 0.9, 1.0, 0.5]]))
    return torch.stack(preds)  # (B, 1, 7)


def test_every_pass_maps_back_to_the_original_box():
    images = torch.zeros(1, 3, 96, 128)
    images[:, :, 30:60, 20:50] = 1.0  # box x 20..50, y 30..60
    merged = tta_forward(_bright_square_detector, images, stride=32)
    assert merged.shape == (1, 2 * len(TTA_SCALES), 7)
    expected = torch.tensor([35.0, 45.0, 30.0, 30.0])
    assert torch.allclose(merged[0, :, :4], expected.expand(6, 4), atol=2.5)  # resampling blurs by a pixel or two
    assert torch.equal(merged[0, :, 4:], torch.tensor([0.9, 1.0, 0.5]).expand(6, 3))  # scores ride along


def test_scale_images_pads_to_stride():
    out = scale_images(torch.rand(2, 3, 96, 128), 0.83, stride=32)
    assert out.shape == (2, 3, 96, 128)  # 80x106 padded up to multiples of 32
    assert scale_images(torch.rand(1, 3, 64, 64), 1.0).shape == (1, 3, 64, 64)


@pytest.mark.parametrize("scale,flipped", [(1.0, True), (0.67, False), (0.83, True)])
def test_deaugment_inverts_the_pass(scale: float, flipped: bool):
    original = torch.tensor([[[40.0, 30.0, 10.0, 8.0, 0.7]]])
    pass_width = 128
    seen = original.clone()
    seen[..., :4] *= scale
    if flipped:
        seen[..., 0] = pass_width - seen[..., 0]
    assert torch.allclose(deaugment(seen, scale, flipped, pass_width), original)
