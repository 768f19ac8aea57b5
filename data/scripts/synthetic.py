"""Generate the synthetic small-object dataset (what data/synthetic.yaml makes on first use).

    python data/scripts/synthetic.py --out datasets/synthetic --images 96 --val-images 32 --seed 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere: the repo root holds utils/

from utils.data.synthetic import generate_dataset  # noqa: E402
from utils.log import setup_logging  # noqa: E402
from utils.options import cli_main  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="output folder (images/ and labels/ go inside)")
    parser.add_argument("--images", type=int, default=96, help="number of training images")
    parser.add_argument("--val-images", type=int, default=None, help="number of validation images (default images/3)")
    parser.add_argument("--size", type=int, default=384, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging()
    val_images = args.val_images if args.val_images is not None else max(1, args.images // 3)
    generate_dataset(args.out, args.images, val_images, args.size, args.seed)


if __name__ == "__main__":
    cli_main(main, "synthetic.py")
