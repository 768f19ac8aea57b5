"""Validate a detector: ``python val.py --weights best.pt --data VisDrone.yaml --img 1536 --task test``.

Also scores saved predictions without a model: ``python val.py --pred preds.json --gt gt.json`` (COCO
JSON files) or ``--pred results_dir --gt annotations_dir`` (VisDrone txt folders, the toolkit's rules).
Thin CLI: flags -> ValOptions (utils/eval/options.py) -> ``utils.eval.run.run``; ``val.run(**kwargs)``
takes the same options from Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from utils.eval.options import DESCRIPTION, ValOptions
from utils.eval.run import run as run_validation
from utils.eval.validator import ValResults
from utils.log import setup_logging
from utils.options import cli_main, options_from_kwargs, parse_into

__all__ = ["main", "parse_options", "run"]


def run(**kwargs: Any) -> ValResults | list[ValResults]:
    """YOLOv5's ``val.run(weights=..., data=..., imgsz=...)``: ValOptions fields as keyword arguments."""
    return run_validation(options_from_kwargs(ValOptions, kwargs))


def parse_options(argv: Optional[Sequence[str]] = None) -> ValOptions:
    return parse_into(ValOptions, argv, DESCRIPTION)


def main(argv: Optional[Sequence[str]] = None) -> None:
    options = parse_options(argv)
    setup_logging()
    run_validation(options)


if __name__ == "__main__":
    cli_main(main, "val.py")
