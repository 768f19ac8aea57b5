"""Train a detector: ``python train.py --data synthetic.yaml --cfg yolov5n.yaml --img 320``.

Thin CLI: flags -> TrainOptions (utils/engine/options.py, which also generates this parser) ->
``utils.engine.run.run``. From Python, ``train.run(data=..., imgsz=..., epochs=...)`` takes the same
options as keyword arguments and trains the same recipe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from utils.distributed import DistContext
from utils.engine.options import TrainOptions, parse_options
from utils.engine.run import TrainOutcome
from utils.engine.run import run as run_training
from utils.log import setup_logging
from utils.options import cli_main, options_from_kwargs


def run(**kwargs: Any) -> TrainOutcome:
    """YOLOv5's ``train.run(**kwargs)``: TrainOptions fields as keyword arguments (``hyp`` a path or dict)."""
    return _train(options_from_kwargs(TrainOptions, kwargs))


def main(argv: Optional[Sequence[str]] = None) -> TrainOutcome:
    return _train(parse_options(argv))


def _train(opts: TrainOptions) -> TrainOutcome:
    setup_logging(DistContext.from_env(local_rank=opts.local_rank).rank)
    return run_training(opts)


if __name__ == "__main__":
    cli_main(main, "train.py")
