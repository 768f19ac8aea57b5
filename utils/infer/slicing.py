"""Sliced inference for frames far larger than the network input (SAHI-style idea, our own code).

The full-resolution frame is covered by overlapping tiles; each tile (and optionally the whole,
downscaled frame) goes through the detector at the network size, so a 10 px object keeps its 10 px.
Boxes come back to frame pixels, boxes cut by a tile border are dropped where a neighbouring tile
holds them whole, and the rest are merged across tiles: class-aware NMS decides which objects exist
(the most confident box leads) and, for C-BBL models, each object keeps the box of its most certain
(lowest localization-uncertainty) near-top-confidence member.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Callable, Optional, Union

import numpy as np
import torch

from utils.boxes import box_iou
from utils.data.tiles import TileSettings, tile_grid
from utils.log import log_once
from utils.nms import batched_nms

logger = logging.getLogger(__name__)

# A box within this many pixels of a tile edge counts as touching it (cut by it).
BORDER_MARGIN_PX = 2.0
# A merged object takes its box from members at least this fraction as confident as its leader.
CERTAIN_CONF_RATIO = 0.8
# Leader rows per pairwise-IoU block when assigning members to leaders (bounds memory).
_MERGE_BLOCK_ROWS = 2048

DetectFn = Callable[[list[np.ndarray]], list[torch.Tensor]]
SliceRequest = Union[str, tuple[int, int]]  # 'auto', 'off' or (tile_h, tile_w) frame pixels

# --slice: 'auto' slices a --tile checkpoint's frames into its training windows and leaves other models' whole.
SLICE_AUTO, SLICE_OFF = "auto", "off"
SLICE_HELP = ("sliced inference: tiles of H x W frame pixels, each run at --img; 'auto' (default): the training "
              "windows of a --tile checkpoint, whole frames for other models; 'off': whole frames")
OVERLAP_HELP = "tile overlap ratio for --slice (default: the training tiles' overlap under auto, else 0.2)"
DEFAULT_OVERLAP = 0.2


def parse_slice(value: Union[None, str, int, Sequence[Union[str, int]]]) -> SliceRequest:
    """--slice as given on the command line or in Python (None, 'auto', 'off', 640, [640, 640], ['auto'])
    -> 'auto', 'off' or (tile_h, tile_w)."""
    if value is None:
        return SLICE_AUTO
    values = [value] if isinstance(value, (str, int)) else list(value)
    if len(values) == 1 and str(values[0]).lower() in (SLICE_AUTO, SLICE_OFF):
        return str(values[0]).lower()
    try:
        sides = tuple(int(side) for side in values)
    except ValueError:
        sides = ()
    if len(sides) == 1:
        sides = sides * 2
    if len(sides) != 2 or min(sides) < 1:
        raise ValueError(f"--slice takes two positive tile sides H W, 'auto' or 'off'; got {value!r}")
    return sides


def resolve_slice(request: SliceRequest, overlap: Optional[float], trained: Optional[TileSettings],
                  weights: str) -> Optional[tuple[tuple[int, int], float]]:
    """The (tile_hw, overlap) a run slices its frames into, or None for whole frames.

    'auto' follows the weights: a --tile checkpoint is sliced into its training windows at its training overlap
    (said once per process and weights, with how to turn it off), any other model runs on whole frames.
    """
    if request == SLICE_OFF or (request == SLICE_AUTO and trained is None):
        return None
    if request == SLICE_AUTO:
        overlap = trained.overlap if overlap is None else overlap
        log_once(logger, logging.INFO, "%s was trained on tiles (--tile %d --tile-scale %g): slicing each frame "
                 "into %dx%d px tiles, overlap %g (--slice off: whole frames)", weights, trained.size, trained.scale,
                 trained.window, trained.window, overlap)
        return (trained.window, trained.window), overlap
    return request, DEFAULT_OVERLAP if overlap is None else overlap


def cut_box_mask(boxes: torch.Tensor, owner_tiles: torch.Tensor, tiles: torch.Tensor,
                 image_hw: tuple[int, int]) -> torch.Tensor:
    """Which boxes are cut by a tile border while another tile holds the object whole.

    A box touching an inner edge (one that is not an image border) of its own tile is a cut box. Its
    object is assumed to extend across that edge by up to the box's own size; if some other tile
    contains that grown box without it touching that tile's inner edges, that tile saw it whole.

    Args:
        boxes: (n, 4) xyxy frame pixels. owner_tiles: (n,) index of the tile each box came from.
        tiles: (T, 4) xyxy tiles. image_hw: (height, width) of the frame.
    Returns:
        (n,) bool, True for the boxes to drop.
    """
    height, width = image_hw
    image_edges = torch.tensor([0.0, 0.0, width, height])
    inner = tiles.float() != image_edges  # (T, 4) edge lies inside the image
    own = tiles[owner_tiles].float()  # (n, 4)
    sign = torch.tensor([-1.0, -1.0, 1.0, 1.0])
    touching = ((boxes - own) * sign >= -BORDER_MARGIN_PX) & inner[owner_tiles]  # (n, 4)
    cut = touching.any(1)
    if not cut.any():
        return cut
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)  # (n, 4) w, h, w, h
    grown = boxes + sign * size * touching  # (n, 4) grown across each cut edge
    inside = ((grown[:, None, :] - tiles[None].float()) * sign <= 0).all(2)  # (n, T)
    clear = (((grown[:, None, :] - tiles[None].float()) * sign < -BORDER_MARGIN_PX) | ~inner[None]).all(2)  # (n, T)
    holders = inside & clear
    holders[torch.arange(len(boxes)), owner_tiles] = False
    return cut & holders.any(1)


def merge_detections(dets: torch.Tensor, iou_thres: float, agnostic: bool = False,
                     prefer_certain: bool = True) -> torch.Tensor:
    """Merge detections of overlapping tiles.

    Class-aware greedy NMS picks one leader per object (highest confidence). With an uncertainty column
    (C-BBL) and ``prefer_certain``, each leader keeps its confidence but takes box and uncertainty from
    its lowest-uncertainty member among those with conf >= CERTAIN_CONF_RATIO * leader conf.

    Args:
        dets: (n, 6 + E) ``x1, y1, x2, y2, conf, cls, extra..`` frame pixels; uncertainty at column 6.
    Returns:
        (m, 6 + E) merged detections by decreasing confidence.
    """
    class_ids = torch.zeros_like(dets[:, 5]) if agnostic else dets[:, 5]
    keep = batched_nms(dets[:, :4], dets[:, 4], class_ids, iou_thres)
    leaders = dets[keep]
    if not prefer_certain or dets.shape[1] < 7 or len(keep) == 0:
        return leaders
    owner = _assign_to_leaders(dets, class_ids, keep, iou_thres)
    assigned = owner >= 0  # all but borderline-IoU rounding differences with the NMS kernel
    owner = owner.clamp(min=0)
    eligible = assigned & (dets[:, 4] >= CERTAIN_CONF_RATIO * leaders[owner, 4])  # (n,)
    uncertainty = torch.where(eligible, dets[:, 6], torch.full_like(dets[:, 6], float("inf")))
    best = torch.full((len(keep),), float("inf"), dtype=dets.dtype).scatter_reduce(0, owner, uncertainty, "amin")
    chosen = keep.clone()
    winners = (uncertainty == best[owner]).nonzero().squeeze(1)  # (w,) ties: any winner is fine
    chosen[owner[winners]] = winners
    merged = leaders.clone()
    merged[:, :4] = dets[chosen, :4]
    merged[:, 6:] = dets[chosen, 6:]
    return merged


def _assign_to_leaders(dets: torch.Tensor, class_ids: torch.Tensor, keep: torch.Tensor,
                       iou_thres: float) -> torch.Tensor:
    """(n,) index into ``keep`` of the first (most confident) leader each detection overlaps above
    ``iou_thres`` in its class: exactly the box that suppressed it in greedy NMS (a leader owns itself)."""
    owner = torch.full((len(dets),), -1, dtype=torch.int64)
    for start in range(0, len(keep), _MERGE_BLOCK_ROWS):
        block = keep[start : start + _MERGE_BLOCK_ROWS]
        overlaps = box_iou(dets[block, :4], dets[:, :4]) > iou_thres  # (L, n)
        overlaps &= class_ids[block][:, None] == class_ids[None, :]
        overlaps[torch.arange(len(block)), block] = True
        hit = overlaps.any(0) & (owner < 0)  # (n,)
        owner[hit] = overlaps[:, hit].float().argmax(0) + start
    return owner


def sliced_detect(detect_fn: DetectFn, image_bgr: np.ndarray, tile_hw: tuple[int, int], overlap: float,
                  iou_thres: float, agnostic: bool = False, full_pass: bool = False, max_det: int = 1000,
                  batch_size: int = 8) -> torch.Tensor:
    """Detect on overlapping tiles of a full-resolution frame (plus the whole frame if ``full_pass``).

    Args:
        detect_fn: list of BGR images -> list of (n_i, 6 + E) detections in each image's own pixels
            (the per-image detector with its NMS; see utils/infer/predictor.py ``detect_images``).
        image_bgr: (H, W, 3) uint8 frame. tile_hw: (tile_h, tile_w) in frame pixels.
        batch_size: tiles per forward pass.
    Returns:
        (m, 6 + E) ``x1, y1, x2, y2, conf, cls, extra..`` frame pixels, by decreasing confidence, m <= max_det.
    """
    height, width = image_bgr.shape[:2]
    tiles = torch.from_numpy(tile_grid(height, width, tile_hw[0], tile_hw[1], overlap))  # (T, 4)
    crops = [image_bgr[y1:y2, x1:x2] for x1, y1, x2, y2 in tiles.tolist()]
    tile_dets = []
    for start in range(0, len(crops), batch_size):
        tile_dets += detect_fn(crops[start : start + batch_size])
    for tile, dets in zip(tiles, tile_dets):
        dets[:, [0, 2]] += tile[0]
        dets[:, [1, 3]] += tile[1]
    owners = torch.cat([torch.full((len(d),), i, dtype=torch.int64) for i, d in enumerate(tile_dets)])
    dets = torch.cat(tile_dets)
    dets = dets[~cut_box_mask(dets[:, :4], owners, tiles, (height, width))]
    if len(tiles) == 1 and not full_pass:  # one tile is the whole frame: its own NMS output is the result
        return dets[:max_det]
    if full_pass:
        dets = torch.cat([dets, detect_fn([image_bgr])[0]])
    logger.debug("%d tiles of %s, %d candidate boxes", len(tiles), tuple(tile_hw), len(dets))
    return merge_detections(dets, iou_thres, agnostic)[:max_det]
