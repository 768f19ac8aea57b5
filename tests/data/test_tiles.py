"""Tests for utils/data/tiles.py and the tile dataset: window grid, the clipping rule, the empty-tile cap,
pixel-exact tiles through the loader, and the real VisDrone frames (skipped when absent)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import SHARED_DATA, make_yolo_dataset
from tests.data.test_dataset import NO_AUGMENT, assert_targets_match_pixels
from utils.data.augment import AugmentSettings
from utils.data.dataset import TiledImagesAndLabels, create_dataloader
from utils.data.tiles import (
    IGNORED_FILL,
    MAX_EMPTY_SHARE,
    TileSettings,
    plan_tiles,
    tile_grid,
    window_labels,
)
from utils.files import read_image

REAL_TRAIN = SHARED_DATA / "visdrone-real" / "VisDrone2019-DET-train"


@pytest.mark.parametrize("height, width, tile, overlap", [(1080, 1920, 640, 0.25), (540, 960, 640, 0.25),
                                                          (1500, 2000, 500, 0.2), (300, 300, 640, 0.0)])
def test_windows_cover_the_frame_with_the_overlap(height, width, tile, overlap):
    windows = tile_grid(height, width, tile, tile, overlap)
    covered = np.zeros((height, width), bool)
    for x1, y1, x2, y2 in windows:
        covered[y1:y2, x1:x2] = True
        assert x2 - x1 == min(tile, width) and y2 - y1 == min(tile, height), "full windows, never cut short"
    assert covered.all()
    for starts, length in ((np.unique(windows[:, 0]), width), (np.unique(windows[:, 1]), height)):
        if len(starts) > 1:  # neighbours share at least overlap * tile pixels
            assert (tile - np.diff(starts) >= int(round(overlap * tile)) - 1).all()
            assert starts[-1] + tile == length


def test_cut_boxes_are_clipped_and_dropped_by_the_area_rule():
    """Frame 200 x 100, window x 0..100: a box inside stays, one half inside is clipped, one 5 % inside drops."""
    width, height = 200, 100
    boxes = np.array([[0, 10, 10, 30, 30],  # inside
                      [1, 80, 40, 120, 60],  # 50 % inside -> clipped to x 80..100
                      [2, 98, 0, 138, 40],  # 2 of 40 px wide inside: 5 % < 10 % -> dropped
                      [1, 90, 50, 101, 70]], np.float64)  # 10 of 11 px inside -> kept
    labels = np.c_[boxes[:, :1], (boxes[:, 1:3] + boxes[:, 3:5]) / 2 / [width, height],
                   (boxes[:, 3:5] - boxes[:, 1:3]) / [width, height]]
    kept = window_labels(labels, width, height, np.array([0, 0, 100, 100]), min_area_frac=0.1)
    pixels = np.c_[kept[:, 0], (kept[:, 1:3] - kept[:, 3:5] / 2) * 100, (kept[:, 1:3] + kept[:, 3:5] / 2) * 100]
    np.testing.assert_allclose(pixels, [[0, 10, 10, 30, 30], [1, 80, 40, 100, 60], [1, 90, 50, 100, 70]], atol=1e-4)
    second = window_labels(labels, width, height, np.array([100, 0, 200, 100]), min_area_frac=0.1)
    np.testing.assert_array_equal(second[:, 0], [1, 2])  # the half box again and the 95 % one; 1 of 11 px drops


def test_empty_tiles_are_capped_at_the_documented_share():
    """40 frames of 4 tiles, one object each: 40 full tiles, 120 empty; the cap keeps 40 * 0.1 / 0.9 = 4."""
    shapes = np.full((40, 2), 200)
    labels = [np.array([[0, 0.1, 0.1, 0.05, 0.05]], np.float32)] * 40
    plan = plan_tiles(shapes, labels, TileSettings(100, 0.0), min_area_frac=0.1)
    empty = sum(len(lab) == 0 for lab in plan.labels)
    assert (plan.num_grid, plan.num_empty, len(plan.labels)) == (160, 120, 44)
    assert empty == int(MAX_EMPTY_SHARE / (1 - MAX_EMPTY_SHARE) * 40)
    assert len(set(plan.frames[[len(lab) == 0 for lab in plan.labels]].tolist())) == empty, "spread over frames"
    dense = plan_tiles(shapes, labels, TileSettings(100, 0.0), min_area_frac=0.1, max_empty_share=0.9)
    assert len(dense.labels) == 160, "under the cap every empty tile stays"


def test_tile_settings_validate_and_scale_the_window():
    assert TileSettings(640, 0.25, 0.5).window == 1280
    for bad in ({"size": 0}, {"size": 64, "overlap": 1.0}, {"size": 64, "scale": 0.0}):
        with pytest.raises(ValueError, match="--tile"):
            TileSettings(**bad)


def test_tile_loader_gives_pixel_exact_tiles(tmp_path):
    images = make_yolo_dataset(tmp_path / "data", num_images=4, size=(96, 128))
    augmentation = AugmentSettings.from_hyp(NO_AUGMENT)
    loader, dataset = create_dataloader(images, imgsz=64, batch_size=4, stride=32, augment=True,
                                        augmentation=augmentation, tile=TileSettings(64, 0.25), nc=3)
    assert isinstance(dataset, TiledImagesAndLabels)
    per_frame = len(tile_grid(96, 128, 64, 64, 0.25))  # 2 rows x 3 columns
    assert len(dataset) <= 4 * per_frame and (dataset.shapes == 64).all()
    assert len(loader) == -(-len(dataset) // 4), "an epoch is the tile set"
    for batch_images, targets, _, _ in loader:
        assert batch_images.shape[2:] == (64, 64)
        if len(targets):
            assert_targets_match_pixels(batch_images, targets, tolerance=1.0)
    frame = read_image(dataset.frame_files[int(dataset.plan.frames[0])])
    x1, y1, x2, y2 = dataset.plan.windows[0]
    np.testing.assert_array_equal(dataset.load_image(0)[0], frame[y1:y2, x1:x2])


def test_tiles_refuse_rect(tmp_path):
    images = make_yolo_dataset(tmp_path / "data", num_images=2)
    with pytest.raises(ValueError, match="drop --rect"):
        create_dataloader(images, imgsz=64, batch_size=2, stride=32, rect=True, tile=TileSettings(64))


def test_real_frames_tile_at_native_resolution(tmp_path):
    """Two real VisDrone frames: every grid tile is planned and a tile is the frame's own pixels."""
    from utils.data.visdrone import annotation_path, read_annotation, to_yolo_labels

    frames = sorted((REAL_TRAIN / "images").glob("*.jpg"))[:2]
    if len(frames) < 2:
        pytest.skip(f"real VisDrone frames not found in {REAL_TRAIN}")
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    grid = 0
    for frame in frames:
        (tmp_path / "images" / frame.name).symlink_to(frame)
        image = read_image(frame)
        height, width = image.shape[:2]
        labels = to_yolo_labels(read_annotation(annotation_path(frame)), width, height)
        (tmp_path / "labels" / f"{frame.stem}.txt").write_text(
            "".join(f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in labels))
        grid += len(tile_grid(height, width, 640, 640, 0.25))
    dataset = TiledImagesAndLabels(tmp_path / "images", 640, TileSettings(640, 0.25), augment=True, nc=10)
    assert dataset.plan.num_grid == grid and len(dataset) >= grid - dataset.plan.num_empty
    tile, _, (height, width) = dataset.load_image(len(dataset) - 1)
    assert max(height, width) == 640
    x1, y1, x2, y2 = dataset.plan.windows[-1]
    np.testing.assert_array_equal(tile, read_image(dataset.frame_files[int(dataset.plan.frames[-1])])[y1:y2, x1:x2])


def test_ram_cache_keeps_the_tiles(tmp_path):
    images = make_yolo_dataset(tmp_path / "data", num_images=2, size=(96, 128))
    tile = TileSettings(64, 0.25)
    cached = TiledImagesAndLabels(images, 64, tile, cache="ram", augment=True, nc=3, workers=1)
    plain = TiledImagesAndLabels(images, 64, tile, augment=True, nc=3, workers=1)
    assert len(cached.ims) == len(cached) and all(image is not None for image in cached.ims)
    for index in range(len(plain)):
        np.testing.assert_array_equal(cached.load_image(index)[0], plain.load_image(index)[0])


def test_tile_settings_of_a_checkpoint_and_through_export_metadata():
    settings = TileSettings.of_checkpoint({"opt": {"tile": 640, "tile_overlap": 0.3, "tile_scale": 0.5}})
    assert settings == TileSettings(640, 0.3, 0.5) and settings.window == 1280
    assert TileSettings.from_dict(settings.to_dict()) == settings and TileSettings.from_dict(None) is None
    for checkpoint in ({"opt": {"tile": 0, "tile_overlap": 0.25}}, {"opt": None}, {}, {"opt": {"imgsz": 640}}):
        assert TileSettings.of_checkpoint(checkpoint) is None  # whole-frame runs, YOLOv5's and TPH's files


def _labels(boxes_xyxy: list, width: int, height: int) -> np.ndarray:
    boxes = np.asarray(boxes_xyxy, np.float64)
    return np.c_[np.zeros(len(boxes)), (boxes[:, :2] + boxes[:, 2:]) / 2 / [width, height],
                 (boxes[:, 2:] - boxes[:, :2]) / [width, height]]


def test_ignored_regions_drop_the_labels_inside_and_follow_each_window():
    """As the VisDrone toolkit: a label half or more inside an ignored region goes; the region reaches the tiles
    it overlaps, in their own pixels, to be painted."""
    labels = _labels([[10, 10, 20, 20], [45, 10, 55, 20], [140, 60, 160, 80]], 200, 100)  # inside, 50 %, outside
    regions = [np.array([[0, 0, 50, 40]], np.float64)]
    plan = plan_tiles(np.array([[200, 100]]), [labels.astype(np.float32)], TileSettings(100, 0.0), 0.1,
                      max_empty_share=1.0, regions=regions)
    assert [len(lab) for lab in plan.labels] == [0, 1]  # first tile: both covered labels dropped, so empty
    np.testing.assert_array_equal(plan.regions[0], [[0, 0, 50, 40]])
    assert plan.regions[1].shape == (0, 4)
    kept = plan_tiles(np.array([[200, 100]]), [labels.astype(np.float32)], TileSettings(100, 0.0), 0.1)
    assert [len(lab) for lab in kept.labels] == [2, 1] and all(len(r) == 0 for r in kept.regions)


def test_tile_loader_paints_the_ignored_regions_of_official_annotations(tmp_path):
    """A frame with an official VisDrone annotation file beside it: its category-0 region is grey in the tiles,
    the rest of the tile is the frame's own pixels; frames without such a file are untouched."""
    images = make_yolo_dataset(tmp_path / "data", num_images=2, size=(96, 128))
    (tmp_path / "data" / "annotations").mkdir()
    (tmp_path / "data" / "annotations" / "im0.txt").write_text("70,8,30,40,0,0,0,0\n")  # x,y,w,h,score,category 0
    dataset = TiledImagesAndLabels(images, 64, TileSettings(64, 0.25), augment=True, nc=3)
    for index in range(len(dataset)):
        frame_file = dataset.frame_files[int(dataset.plan.frames[index])]
        x1, y1, x2, y2 = dataset.plan.windows[index]
        expected = read_image(frame_file)[y1:y2, x1:x2].copy()
        if frame_file.endswith("im0.png"):
            expected[max(8 - y1, 0):max(48 - y1, 0), max(70 - x1, 0):max(100 - x1, 0)] = IGNORED_FILL
        np.testing.assert_array_equal(dataset.load_image(index)[0], expected)
    assert any(len(regions) for regions in dataset.plan.regions)
