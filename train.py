"""Train a detector: ``python train.py --data data/synthetic.yaml --cfg models/yolov5n.yaml --img 320``.

Thin CLI: parse the flags into TrainOptions and call utils.engine.run.run (see --help).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Optional

from utils.distributed import DistContext
from utils.engine.options import parse_options
from utils.engine.run import run
from utils.log import setup_logging


def main(argv: Optional[Sequence[str]] = None) -> int:
    opts = parse_options(argv)
    setup_logging(DistContext.from_env(local_rank=opts.local_rank).rank)
    run(opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
