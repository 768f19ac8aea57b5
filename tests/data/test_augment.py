"""Tests for utils/data/augment.py: every transform moves the boxes exactly as it moves the pixels."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.boxes import cxcywhn_to_xyxy, xyxy_to_cxcywhn
from utils.data.augment import (
    augment_hsv,
    box_candidates,
    letterbox,
    mixup,
    mosaic4,
    random_affine,
    random_flip,
    transform_boxes,
)

# Pixels of a drawn box are pure 255 in one channel; after interpolation a pixel counts as inside
# when at least half covered.
INSIDE_LEVEL = 128
TOLERANCE_PX = 1.5


def draw_boxes(height: int, width: int, boxes: list[tuple[int, int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Black image with box i filled in channel i (255): -> (image, labels (n, 5) [class, x1, y1, x2, y2])."""
    image = np.zeros((height, width, 3), np.uint8)
    for channel, (x1, y1, x2, y2) in enumerate(boxes):
        image[y1:y2, x1:x2, channel] = 255
    labels = np.array([[i, *box] for i, box in enumerate(boxes)], np.float32).reshape(-1, 5)
    return image, labels


def extent(image: np.ndarray, channel: int) -> np.ndarray:
    """xyxy extent (edges) of the pixels of one drawn box, or empty if none is left."""
    others = [c for c in range(3) if c != channel]
    mask = (image[..., channel] >= INSIDE_LEVEL) & (image[..., others] < INSIDE_LEVEL // 2).all(-1)
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return np.zeros(0)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def assert_boxes_match_pixels(image: np.ndarray, labels: np.ndarray, tolerance: float = TOLERANCE_PX) -> None:
    assert len(labels) > 0, "no box survived: the test would prove nothing"
    for row in labels:
        measured = extent(image, int(row[0]))
        assert measured.size, f"box {row} has no pixels left"
        np.testing.assert_allclose(row[1:], measured, atol=tolerance)


BOXES = [(20, 30, 60, 50), (90, 70, 110, 120), (40, 100, 47, 106)]


@pytest.mark.parametrize("new_shape,auto", [(160, False), ((96, 200), False), (160, True)])
def test_letterbox_maps_points_exactly(new_shape, auto):
    image, labels = draw_boxes(150, 130, BOXES)
    out, (ratio_w, ratio_h), (pad_w, pad_h) = letterbox(image, new_shape, auto=auto, stride=32)
    moved = labels.copy()
    moved[:, [1, 3]] = labels[:, [1, 3]] * ratio_w + pad_w
    moved[:, [2, 4]] = labels[:, [2, 4]] * ratio_h + pad_h
    assert_boxes_match_pixels(out, moved, tolerance=1.0)
    assert pad_w == int(pad_w) and pad_h == int(pad_h)


@pytest.mark.parametrize("kind", ["scale", "translate", "shear", "degrees", "perspective", "all"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_affine_moves_boxes_with_pixels(kind, seed):
    ranges = {"degrees": 0.0, "translate": 0.0, "scale": 0.0, "shear": 0.0, "perspective": 0.0}
    full = {"degrees": 30.0, "translate": 0.1, "scale": 0.4, "shear": 10.0, "perspective": 0.0005}
    ranges.update(full if kind == "all" else {kind: full[kind]})
    image, labels = draw_boxes(160, 160, BOXES[:2])
    out, moved = random_affine(image, labels, np.random.default_rng(seed), **ranges)
    assert out.shape == image.shape
    if kind not in ("scale", "translate"):
        # a rotated box cut by the border is wider than its visible pixels: compare the uncut ones
        moved = moved[((moved[:, 1:] > 0) & (moved[:, 1:] < 160)).all(1)]
    assert_boxes_match_pixels(out, moved, tolerance=2.0 if kind in ("perspective", "all") else TOLERANCE_PX)


def test_random_affine_border_crops_and_clips():
    image, labels = draw_boxes(200, 200, [(0, 0, 60, 60), (120, 120, 180, 170)])
    out, moved = random_affine(image, labels, np.random.default_rng(0), translate=0.0, scale=0.0,
                               border=(-50, -50))
    assert out.shape == (100, 100, 3)
    assert (moved[:, 1:] >= 0).all() and (moved[:, 1:] <= 100).all()
    assert_boxes_match_pixels(out, moved)


@given(st.lists(st.tuples(st.floats(0, 50), st.floats(0, 50), st.floats(1, 50), st.floats(1, 50)), min_size=1,
                max_size=5))
@settings(deadline=None, max_examples=25)
def test_transform_boxes_identity_round_trip(raw):
    boxes = np.array([[0, x, y, x + w, y + h] for x, y, w, h in raw], np.float64)
    np.testing.assert_allclose(transform_boxes(boxes, np.eye(3)), boxes, atol=1e-9)


def test_box_candidates_keep_tiny_drone_objects():
    before = np.array([[0, 0, 3, 3], [0, 0, 8, 4], [0, 0, 1, 1], [0, 0, 40, 40], [0, 0, 100, 1.6]], np.float32)
    after = before.copy()
    after[3] = [0, 0, 40, 2]  # cut to 5% of its area
    keep = box_candidates(before, after, min_px=1.5, min_area_frac=0.1, max_aspect=50.0)
    assert keep.tolist() == [True, True, False, False, False]


@pytest.mark.parametrize("fliplr,flipud", [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)])
def test_random_flip_is_exact(fliplr, flipud):
    image, labels = draw_boxes(130, 140, BOXES[:2])
    boxes_n = xyxy_to_cxcywhn(labels[:, 1:], 140, 130)
    flipped = np.ascontiguousarray(random_flip(image, boxes_n, fliplr, flipud, np.random.default_rng(0)))
    moved = np.concatenate((labels[:, :1], cxcywhn_to_xyxy(boxes_n, 140, 130)), 1)
    assert_boxes_match_pixels(flipped, moved, tolerance=1e-4)


def test_mosaic4_places_and_clips_boxes():
    rng = np.random.default_rng(3)
    images, labels = [], []
    for _ in range(4):
        image, tile_labels = draw_boxes(64, 64, [(5, 5, 25, 20), (30, 35, 60, 62), (40, 2, 50, 12)])
        images.append(image)
        labels.append(tile_labels)
    canvas, canvas_labels = mosaic4(images, labels, 64, rng, min_area_frac=0.1)
    assert canvas.shape == (128, 128, 3)
    assert len(canvas_labels) > 0
    for row in canvas_labels:  # every kept box covers exactly drawn pixels of its colour
        x1, y1, x2, y2 = row[1:].astype(int)
        np.testing.assert_allclose(row[1:], row[1:].round())
        assert (canvas[y1:y2, x1:x2, int(row[0])] == 255).all()


def test_mosaic4_drops_mostly_hidden_boxes():
    image, labels = draw_boxes(64, 64, [(0, 0, 64, 64)])
    # centre at size/2 = 32: tile 0 (top-left) shows only its bottom-right 32x32 quarter (25%)
    canvas, kept = mosaic4([image] * 4, [labels] * 4, 64, np.random.default_rng(0), min_area_frac=0.3)
    visible = mosaic4([image] * 4, [labels] * 4, 64, np.random.default_rng(0), min_area_frac=0.0)[1]
    assert len(kept) <= len(visible)
    areas = (visible[:, 3] - visible[:, 1]) * (visible[:, 4] - visible[:, 2]) / 64**2
    assert len(kept) == int((areas >= 0.3).sum())


def test_mixup_keeps_all_boxes_and_blends():
    image1, labels1 = draw_boxes(50, 50, [(5, 5, 20, 20)])
    image2, labels2 = draw_boxes(50, 50, [(25, 25, 45, 45)])
    blended, labels = mixup(image1, labels1, image2, labels2, np.random.default_rng(0))
    assert len(labels) == 2
    assert 0 < blended[10, 10, 0] < 255
    with pytest.raises(ValueError, match="one shape"):
        mixup(image1, labels1, image2[:40], labels2, np.random.default_rng(0))


def test_augment_hsv_changes_colours_in_place():
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    original = image.copy()
    augment_hsv(image, 0.0, 0.0, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(image, original)
    augment_hsv(image, 0.5, 0.7, 0.4, np.random.default_rng(1))
    assert image.dtype == np.uint8 and not np.array_equal(image, original)
