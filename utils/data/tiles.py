"""Training on tiles of full-resolution frames (``train.py --tile``), and the tile grid sliced inference shares.

A drone frame shrunk to the network size loses its small objects (a 12 px pedestrian of a 1920x1080 frame is
4 px at 640). Tile training instead cuts each frame, at native resolution times ``--tile-scale``, into the
same overlapping grid that ``detect.py --slice`` / ``val.py --slice`` use (:func:`tile_grid`), and the
training loader takes the tiles as its images: mosaic, mixup, affine, HSV and flips apply to tiles as they
apply to frames, and autoanchor / the C-BBL grid fit see the tiles' statistics.

Decisions:

- The grid is deterministic (not random windows per epoch): every epoch has the same tiles, so the epoch
  length, the LR schedule, DDP sharding and resume are those of an ordinary dataset; the randomness is the
  loader's (shuffle, mosaic, affine translation/scale), which already moves objects across tile positions.
- An object cut by a window is clipped to it and kept when at least ``box_min_area_frac`` (the hyp of the
  mosaic/affine survival rule, 0.1 by default) of its area is inside: the rule YOLOv5 applies to cut boxes.
- VisDrone's ignored regions (category 0 in the official annotation file beside a frame, which the YOLO labels
  do not carry) are treated as the official evaluation treats them: a label at least half inside them is
  dropped (the toolkit's own rule, utils.data.visdrone.ignored_fraction), and their pixels are painted
  the letterbox grey in the tiles, so the unlabelled crowds they hide are neither positives nor negatives.
- Empty tiles (no object kept) are background images. YOLOv5 recommends 0-10 % of those; tiles keep all
  non-empty tiles and at most MAX_EMPTY_SHARE of the tile set as empty ones, picked evenly over the frames.
  On the real VisDrone frames at --tile 640 (overlap 0.25) 6.8 % of the train tiles and 3.4 % of the val
  tiles are empty (benchmarks/tile_stats.py): all are kept there; the cap matters on sparse datasets.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np

from utils.boxes import cxcywhn_to_xyxy, xyxy_to_cxcywhn, xyxy_to_ltwh
from utils.data.augment import clip_to_window
from utils.data.visdrone import DROP_FRACTION, ignored_fraction

# Largest share of empty (background) tiles kept in a tile set: YOLOv5's 0-10 % background images advice.
MAX_EMPTY_SHARE = 0.1
# Ignored regions are painted with YOLOv5's letterbox grey.
IGNORED_FILL = 114


def tile_grid(height: int, width: int, tile_h: int, tile_w: int, overlap: float) -> np.ndarray:
    """Tiles covering an image, overlapping by ``overlap`` of a tile; the last row/column ends at the border.

    Returns (T, 4) int64 xyxy pixel tiles, row-major; one tile (clipped) for an image smaller than a tile.
    """
    if tile_h < 1 or tile_w < 1:
        raise ValueError(f"tiles need positive tile sizes, got {tile_h} x {tile_w}")
    if not 0 <= overlap < 1:
        raise ValueError(f"the tile overlap must lie in [0, 1), got {overlap}")
    starts_y = _axis_starts(height, tile_h, overlap)
    starts_x = _axis_starts(width, tile_w, overlap)
    grid_y, grid_x = np.meshgrid(starts_y, starts_x, indexing="ij")  # (rows, cols)
    top_left = np.stack([grid_x.ravel(), grid_y.ravel()], 1)  # (T, 2)
    bottom_right = np.minimum(top_left + [tile_w, tile_h], [width, height])
    return np.concatenate([top_left, bottom_right], 1).astype(np.int64)


def _axis_starts(length: int, tile: int, overlap: float) -> np.ndarray:
    if length <= tile:
        return np.zeros(1, dtype=np.int64)
    step = max(int(tile * (1 - overlap)), 1)
    count = int(np.ceil((length - tile) / step)) + 1
    return np.minimum(np.arange(count) * step, length - tile).astype(np.int64)


@dataclass(frozen=True)
class TileSettings:
    """``--tile SIZE --tile-overlap F --tile-scale S``: windows of SIZE pixels of the frame resized by S."""

    size: int
    overlap: float = 0.25
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"--tile must be >= 1 pixel, got {self.size}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"--tile-overlap must lie in [0, 1), got {self.overlap}")
        if self.scale <= 0:
            raise ValueError(f"--tile-scale must be > 0, got {self.scale}")

    @property
    def window(self) -> int:
        """The window side in native frame pixels (SIZE / S: --tile-scale 0.5 takes twice the frame area)."""
        return max(1, round(self.size / self.scale))

    @classmethod
    def of_checkpoint(cls, checkpoint: dict[str, Any]) -> Optional[TileSettings]:
        """The tiles a checkpoint was trained on (its ``opt`` record of --tile), None for whole-frame training
        and for checkpoints without that record (YOLOv5's, TPH-YOLOv5's, exports of them)."""
        opt = checkpoint.get("opt")
        if not isinstance(opt, dict) or not opt.get("tile"):
            return None
        return cls(int(opt["tile"]), float(opt.get("tile_overlap", cls.overlap)),
                   float(opt.get("tile_scale", cls.scale)))

    @classmethod
    def from_dict(cls, values: Optional[dict[str, Any]]) -> Optional[TileSettings]:
        """Settings from :meth:`to_dict` (an export's metadata), None for None."""
        return None if not values else cls(int(values["size"]), float(values["overlap"]), float(values["scale"]))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def window_labels(labels: np.ndarray, width: int, height: int, window: np.ndarray,
                  min_area_frac: float) -> np.ndarray:
    """A frame's labels seen through one window.

    Args:
        labels: (n, 5) ``[class, cx, cy, w, h]`` normalised to the (height, width) frame.
        window: (4,) xyxy frame pixels.
        min_area_frac: a cut object is kept if at least this share of its area is inside the window.
    Returns:
        (m, 5) ``[class, cx, cy, w, h]`` normalised to the window.
    """
    pixels = np.concatenate((labels[:, :1], cxcywhn_to_xyxy(labels[:, 1:5], width, height)), 1).astype(np.float64)
    kept = clip_to_window(pixels, tuple(int(v) for v in window), min_area_frac)
    x1, y1, x2, y2 = (int(v) for v in window)
    boxes = kept[:, 1:5] - [x1, y1, x1, y1]
    return np.concatenate((kept[:, :1], xyxy_to_cxcywhn(boxes, x2 - x1, y2 - y1)), 1).astype(np.float32)


def window_regions(regions: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Ignored regions (r, 4) xyxy frame pixels -> the parts inside ``window``, in window pixels (k, 4) int64."""
    x1, y1, x2, y2 = (int(v) for v in window)
    clipped = np.round(regions).astype(np.int64).clip([x1, y1, x1, y1], [x2, y2, x2, y2]) - [x1, y1, x1, y1]
    return clipped[(clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])].reshape(-1, 4)


def paint_regions(image: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """A copy of ``image`` with the (k, 4) xyxy pixel regions filled with the letterbox grey."""
    painted = image.copy()
    for x1, y1, x2, y2 in regions:
        painted[y1:y2, x1:x2] = IGNORED_FILL
    return painted


@dataclass
class TilePlan:
    """The tile set of a dataset: tile t is ``windows[t]`` (xyxy native pixels) of frame ``frames[t]``."""

    frames: np.ndarray  # (T,) int64 frame index
    windows: np.ndarray  # (T, 4) int64 xyxy
    labels: list[np.ndarray]  # T x (m, 5) normalised to the window
    regions: list[np.ndarray]  # T x (k, 4) int64 xyxy window pixels: ignored regions to paint
    num_empty: int  # empty tiles in the full grid (before the cap)
    num_grid: int  # tiles in the full grid

    @property
    def empty_share(self) -> float:
        """Share of the full grid's tiles holding no object."""
        return self.num_empty / max(self.num_grid, 1)


def plan_tiles(shapes: np.ndarray, labels: list[np.ndarray], tile: TileSettings, min_area_frac: float,
               max_empty_share: float = MAX_EMPTY_SHARE, regions: Optional[list[np.ndarray]] = None) -> TilePlan:
    """Every frame's tile grid with the labels each tile keeps, empty tiles capped at ``max_empty_share``.

    Args:
        shapes: (N, 2) frame ``[w, h]``. labels: N x (n, 5) normalised to each frame.
        regions: N x (r, 4) xyxy pixels, each frame's ignored regions (None: none anywhere).
    """
    frames, windows, tile_labels, tile_regions = [], [], [], []
    for index, ((width, height), frame_labels) in enumerate(zip(shapes, labels)):
        width, height = int(width), int(height)
        frame_regions = regions[index] if regions is not None else np.zeros((0, 4))
        if len(frame_regions) and len(frame_labels):
            boxes = xyxy_to_ltwh(cxcywhn_to_xyxy(frame_labels[:, 1:5], width, height))
            frame_labels = frame_labels[ignored_fraction(boxes, xyxy_to_ltwh(frame_regions), height, width)
                                        < DROP_FRACTION]
        for window in tile_grid(height, width, tile.window, tile.window, tile.overlap):
            frames.append(index)
            windows.append(window)
            tile_labels.append(window_labels(frame_labels, width, height, window, min_area_frac))
            tile_regions.append(window_regions(frame_regions, window))
    empty = np.array([len(lab) == 0 for lab in tile_labels], bool)
    num_full = int((~empty).sum())
    allowed = int(max_empty_share / (1 - max_empty_share) * num_full) if max_empty_share < 1 else int(empty.sum())
    empty_indices = np.flatnonzero(empty)
    if len(empty_indices) > allowed:  # evenly spaced over the frames: deterministic, no frame favoured
        picks = np.linspace(0, len(empty_indices) - 1, allowed).round().astype(int) if allowed else []
        keep = ~empty
        keep[empty_indices[picks]] = True
    else:
        keep = np.ones(len(empty), bool)
    chosen = np.flatnonzero(keep)
    return TilePlan(np.asarray(frames, np.int64)[chosen].reshape(-1),
                    np.asarray(windows, np.int64).reshape(-1, 4)[chosen],
                    [tile_labels[i] for i in chosen], [tile_regions[i] for i in chosen], int(empty.sum()), len(empty))
