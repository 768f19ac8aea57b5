"""Convert official VisDrone2019-DET annotations to YOLO labels (``labels/*.txt`` next to ``images/``).

    python data/scripts/visdrone2yolo.py --src datasets/VisDrone

``--src`` is one split folder (with images/ and annotations/) or a folder of them. Annotation files are
left untouched: evaluation reads ignored regions from them (utils/data/visdrone.py). Each split's labels/
is written all or nothing, and only where it is absent, empty or this converter's own earlier output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere: the repo root holds utils/

from utils.data.visdrone import check_labels_folder, convert_split, split_dirs  # noqa: E402
from utils.log import setup_logging  # noqa: E402
from utils.options import cli_main  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, type=Path, help="VisDrone root or one split folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging()
    splits = split_dirs(args.src)
    for split_dir in splits:  # refuse before converting anything
        check_labels_folder(split_dir)
    for split_dir in splits:
        convert_split(split_dir)


if __name__ == "__main__":
    cli_main(main, "visdrone2yolo.py")
