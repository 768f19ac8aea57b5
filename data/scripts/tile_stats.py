"""What tile training changes on the real VisDrone frames: objects under 8 px and the share of empty tiles.

    python data/scripts/tile_stats.py                      # train split of ../shared/data/visdrone-real, 640
    python data/scripts/tile_stats.py --img 640 --tile 640 --overlap 0.25 --scale 1.0 --split val

Whole-frame training letterboxes each frame to --img (long side); tile training cuts the frame into the
--tile grid (utils/data/tiles.py, the loader's own plan: clipping rule and empty-tile cap included) and
resizes each tile to --img. Sizes are counted on the network input, before augmentation: an object is
"under 8 px" when its longer side is below 8 network pixels (it fits one P3 cell). Tile counts are per tile
instance (an object in two overlapping tiles counts twice), so shares are the comparable figures.
Prints one table; reads only, writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from utils.data.tiles import MAX_EMPTY_SHARE, TileSettings, plan_tiles  # noqa: E402
from utils.data.visdrone import annotation_path, read_annotation, to_yolo_labels  # noqa: E402
from utils.files import image_header_size  # noqa: E402
from utils.hyp import Hyp  # noqa: E402

FRAMES = REPO_ROOT.parent / "shared" / "data" / "visdrone-real"
TINY_PX = 8.0


def frame_labels(split_dir: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    """(N, 2) frame [w, h] and N x (n, 5) normalised YOLO labels from the official annotations."""
    shapes, labels = [], []
    for image in sorted((split_dir / "images").glob("*.jpg")):
        width, height = image_header_size(image)
        shapes.append((width, height))
        labels.append(to_yolo_labels(read_annotation(annotation_path(image)), width, height))
    return np.array(shapes, np.int64).reshape(-1, 2), labels


def network_sizes(shapes: np.ndarray, labels: list[np.ndarray], imgsz: int) -> np.ndarray:
    """(M,) longer side in network pixels of every label, each image's long side resized to ``imgsz``."""
    sides = [(lab[:, 3:5] * imgsz * shape / shape.max()).max(1)
             for lab, shape in zip(labels, shapes.astype(np.float64)) if len(lab)]
    return np.concatenate(sides) if sides else np.zeros(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=Path, default=FRAMES)
    parser.add_argument("--split", choices=("train", "val"), default="train")
    parser.add_argument("--img", type=int, default=640)
    parser.add_argument("--tile", type=int, default=640)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    split_dir = args.frames / f"VisDrone2019-DET-{args.split}"
    if not split_dir.is_dir():
        sys.exit(f"{split_dir} not found: this script reads the shared real VisDrone frames")
    shapes, labels = frame_labels(split_dir)
    plan = plan_tiles(shapes, labels, TileSettings(args.tile, args.overlap, args.scale), Hyp().box_min_area_frac)
    whole = network_sizes(shapes, labels, args.img)
    tiles = network_sizes(np.abs(plan.windows[:, 2:] - plan.windows[:, :2]), plan.labels, args.img)
    print(f"{split_dir.name}: {len(shapes)} frames, {len(whole)} objects; --img {args.img}, --tile {args.tile} "
          f"--tile-overlap {args.overlap} --tile-scale {args.scale}")
    print(f"{'':28}{'images':>8}{'objects':>9}{'under 8 px':>12}{'share':>8}{'median px':>11}{'empty':>8}")
    print(f"{'whole frame --img':28}{len(shapes):8d}{len(whole):9d}{int((whole < TINY_PX).sum()):12d}"
          f"{(whole < TINY_PX).mean():8.1%}{np.median(whole):11.1f}{'-':>8}")
    print(f"{'tiles (kept)':28}{len(plan.labels):8d}{len(tiles):9d}{int((tiles < TINY_PX).sum()):12d}"
          f"{(tiles < TINY_PX).mean():8.1%}{np.median(tiles):11.1f}"
          f"{sum(len(lab) == 0 for lab in plan.labels) / len(plan.labels):8.1%}")
    print(f"empty tiles in the full grid: {plan.num_empty} of {plan.num_grid} ({plan.empty_share:.1%}); "
          f"cap {MAX_EMPTY_SHARE:.0%} of the kept tiles")


if __name__ == "__main__":
    main()
