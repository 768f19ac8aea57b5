"""Shared fixtures and factories for the test suite (tiny, seeded, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
VISDRONE_SAMPLE = SHARED_DATA / "visdrone-sample"
AERIAL_COCO_SAMPLE = SHARED_DATA / "aerial-coco-sample"


def random_boxes(num: int, size: float = 100.0, seed: int = 0) -> torch.Tensor:
    """(num, 4) valid xyxy boxes inside [0, size]^2."""
    generator = torch.Generator().manual_seed(seed)
    top_left = torch.rand(num, 2, generator=generator) * size * 0.8
    extent = torch.rand(num, 2, generator=generator) * size * 0.2 + 1.0
    return torch.cat([top_left, top_left + extent], 1)


@pytest.fixture
def visdrone_sample() -> Path:
    if not VISDRONE_SAMPLE.is_dir():
        pytest.skip(f"shared VisDrone sample not found at {VISDRONE_SAMPLE}")
    return VISDRONE_SAMPLE


@pytest.fixture
def aerial_coco_sample() -> Path:
    if not AERIAL_COCO_SAMPLE.is_dir():
        pytest.skip(f"shared aerial COCO sample not found at {AERIAL_COCO_SAMPLE}")
    return AERIAL_COCO_SAMPLE
