"""Detect objects in images, folders, videos, image sequences, webcams and streams.

    python detect.py --weights best.pt --source path/to/images_or_video
    python detect.py --weights best.pt --source big_frame.jpg --slice 640 640 --overlap 0.2 --slice-full-pass
    python detect.py --weights best.onnx --source 0          # webcam, through ONNX Runtime

Outputs go to runs/detect/<name>. Thin CLI: flags -> DetectOptions (utils/infer/options.py) ->
``utils.infer.predictor.run``, which does the work and returns the arrays; ``detect.run(**kwargs)`` takes
the same options from Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from utils.infer.options import DetectOptions, ImageResult
from utils.infer.predictor import run as run_detection
from utils.log import setup_logging
from utils.options import cli_main, options_from_kwargs, parse_into

__all__ = ["main", "parse_options", "run"]


def run(**kwargs: Any) -> list[ImageResult]:
    """YOLOv5's ``detect.run(**kwargs)``: DetectOptions fields as keyword arguments; one ImageResult per frame."""
    return run_detection(options_from_kwargs(DetectOptions, kwargs))


def parse_options(argv: Optional[Sequence[str]] = None) -> DetectOptions:
    return parse_into(DetectOptions, argv, __doc__)


def main(argv: Optional[Sequence[str]] = None) -> list[ImageResult]:
    options = parse_options(argv)
    setup_logging()
    return run_detection(options)


if __name__ == "__main__":
    cli_main(main, "detect.py")
