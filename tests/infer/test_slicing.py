"""Tests for utils/infer/slicing.py: the tile grid, cut-box removal, the certainty-aware merge, and an end-to-end
slice/merge with a deterministic 'detector' that finds white squares."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.data.tiles import TileSettings
from utils.infer.slicing import (
    cut_box_mask,
    merge_detections,
    parse_slice,
    resolve_slice,
    sliced_detect,
    tile_grid,
)
from utils.nms import batched_nms


@settings(deadline=None, max_examples=40)
@given(height=st.integers(1, 900), width=st.integers(1, 900), tile=st.integers(16, 300),
       overlap=st.floats(0.0, 0.5))
def test_tiles_cover_the_image_with_the_requested_overlap(height, width, tile, overlap):
    tiles = tile_grid(height, width, tile, tile, overlap)
    covered = np.zeros((height, width), dtype=bool)
    for x1, y1, x2, y2 in tiles:
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert x2 - x1 == min(tile, width) and y2 - y1 == min(tile, height), "all tiles share one shape"
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    xs = np.unique(tiles[:, 0])
    if len(xs) > 1:
        assert (np.diff(xs) <= int(tile * (1 - overlap))).all(), "neighbours overlap at least as asked"


def test_tile_grid_rejects_bad_arguments():
    with pytest.raises(ValueError, match="overlap"):
        tile_grid(100, 100, 50, 50, 1.0)
    with pytest.raises(ValueError, match="tile sizes"):
        tile_grid(100, 100, 0, 50, 0.2)


def test_cut_box_dropped_only_when_a_neighbour_holds_it_whole():
    tiles = torch.tensor([[0, 0, 100, 100], [80, 0, 180, 100]])
    boxes = torch.tensor([[95.0, 10, 100, 20],  # tile 0, cut by its inner right edge; tile 1 holds 95..105
                          [10.0, 10, 20, 20],  # tile 0, whole
                          [0.0, 40, 5, 50],  # tile 0, on the image border: not cut
                          [50.0, 40, 100, 60]])  # tile 0, cut, grown to 50..150: not inside tile 1
    owners = torch.tensor([0, 0, 0, 0])
    assert cut_box_mask(boxes, owners, tiles, (100, 180)).tolist() == [True, False, False, False]


def dets(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_merge_matches_class_aware_nms_without_uncertainty():
    boxes = dets([[0, 0, 10, 10, 0.9, 0], [1, 1, 11, 11, 0.8, 0], [1, 1, 11, 11, 0.7, 1], [50, 50, 60, 60, 0.6, 0]])
    merged = merge_detections(boxes, 0.5)
    expected = boxes[batched_nms(boxes[:, :4], boxes[:, 4], boxes[:, 5], 0.5)]
    assert torch.equal(merged, expected) and len(merged) == 3


def test_merge_keeps_confidence_of_the_leader_and_box_of_the_most_certain():
    boxes = dets([[0, 0, 10, 10, 0.90, 0, 2.0],  # leader, uncertain
                  [1, 0, 11, 10, 0.85, 0, 0.5],  # almost as confident, most certain: its box wins
                  [0, 1, 10, 11, 0.30, 0, 0.1],  # most certain but far less confident: not eligible
                  [1, 0, 11, 10, 0.80, 1, 0.1]])  # other class: its own object
    merged = merge_detections(boxes, 0.5)
    assert merged.shape == (2, 7)
    assert merged[0].tolist() == pytest.approx([1, 0, 11, 10, 0.90, 0, 0.5])
    assert merged[1].tolist() == pytest.approx([1, 0, 11, 10, 0.80, 1, 0.1])
    plain = merge_detections(boxes, 0.5, prefer_certain=False)
    assert plain[0].tolist() == pytest.approx([0, 0, 10, 10, 0.90, 0, 2.0])


def square_detector(images):
    """Finds white squares: one box per connected white region, uncertainty 1.0 if it touches the crop edge."""
    outputs = []
    for image in images:
        mask = (image[:, :, 0] > 127).astype(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        rows = []
        for x, y, w, h, _ in stats[1:count]:
            touches = x == 0 or y == 0 or x + w == image.shape[1] or y + h == image.shape[0]
            rows.append([x, y, x + w, y + h, 0.9, 0, 1.0 if touches else 0.1])
        outputs.append(torch.tensor(rows, dtype=torch.float32).reshape(-1, 7))
    return outputs


@pytest.mark.parametrize("full_pass", [False, True])
def test_sliced_detect_finds_each_square_once_in_frame_pixels(full_pass):
    image = np.zeros((300, 500, 3), dtype=np.uint8)
    squares = [(10, 10, 30, 30), (120, 40, 140, 60), (230, 200, 250, 220), (470, 270, 490, 290)]
    for x1, y1, x2, y2 in squares:
        image[y1:y2, x1:x2] = 255
    calls = []

    def detector(images):
        calls.append(len(images))
        return square_detector(images)

    found = sliced_detect(detector, image, (128, 128), 0.25, iou_thres=0.5, full_pass=full_pass, batch_size=4)
    tiles = tile_grid(300, 500, 128, 128, 0.25)
    assert sum(calls) == len(tiles) + int(full_pass) and max(calls) <= 4
    got = sorted(tuple(int(v) for v in row[:4]) for row in found)
    assert got == sorted(squares), "every square once, whole, at its frame position"
    assert (found[:, 6] == 0.1).all(), "the whole (certain) view of each square is kept"


@pytest.mark.parametrize("value, expected", [
    (None, "auto"), ("auto", "auto"), (["off"], "off"), (["OFF"], "off"), (640, (640, 640)),
    (["640", "512"], (640, 512)), ([256], (256, 256)), ((96, 128), (96, 128)),
])
def test_parse_slice_reads_every_spelling(value, expected):
    assert parse_slice(value) == expected


@pytest.mark.parametrize("value", [(0, 64), ["auto", "640"], ["big"], (1, 2, 3), []])
def test_parse_slice_refuses_what_is_not_two_sides_auto_or_off(value):
    with pytest.raises(ValueError, match="--slice takes two positive tile sides H W, 'auto' or 'off'"):
        parse_slice(value)


def test_auto_slices_tile_trained_weights_into_their_training_windows(caplog):
    trained = TileSettings(640, overlap=0.3, scale=0.5)  # windows of 1280 frame pixels, each resized to 640
    assert resolve_slice("auto", None, None, "whole.pt") is None
    with caplog.at_level("INFO"):
        assert resolve_slice("auto", None, trained, "tiled_auto.pt") == ((1280, 1280), 0.3)
    assert "tiled_auto.pt was trained on tiles (--tile 640 --tile-scale 0.5): slicing each frame into 1280x1280 px" \
           in caplog.text and "--slice off" in caplog.text
    assert resolve_slice("auto", 0.1, trained, "tiled_auto.pt") == ((1280, 1280), 0.1)
    assert resolve_slice("off", None, trained, "tiled_auto.pt") is None
    assert resolve_slice((320, 480), None, trained, "tiled_auto.pt") == ((320, 480), 0.2)
    assert resolve_slice((320, 480), 0.4, None, "whole.pt") == ((320, 480), 0.4)
