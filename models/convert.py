"""Convert a YOLOv5 / TPH-YOLOv5 checkpoint into this project's checkpoint format, once.

    python models/convert.py --weights yolov5s.pt                 # writes runs/convert/exp/yolov5s.pt
    python models/convert.py --weights best.pt --output weights/tph.pt

The file is read without running its pickled code (utils/checkpoint.py), its graph is rebuilt from its own
``yaml`` and checked against its weights (models/verify.py), and the result is a plain checkpoint
(``weights_only=True`` loadable) that needs nothing from YOLOv5. Converting is optional: train.py, val.py,
detect.py and export.py also take the original file directly.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Union

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.yolo import model_from_checkpoint  # noqa: E402
from utils.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from utils.files import REPO_ROOT, increment_path  # noqa: E402
from utils.log import setup_logging  # noqa: E402
from utils.options import cli_main  # noqa: E402

logger = logging.getLogger(__name__)


def convert(weights: Union[str, Path], output: Optional[Union[str, Path]] = None) -> Path:
    """Write ``weights`` (YOLOv5/TPH-YOLOv5 or ours) as our checkpoint; returns the output path.

    The default output is a new ``runs/convert/exp*`` folder, never beside the input (a file there may be the
    user's). Refuses to overwrite an existing ``output`` (ValueError naming it).
    """
    weights = Path(weights)
    if output is not None and Path(output).exists():
        raise ValueError(f"{output} exists; choose another --output (nothing is overwritten)")
    checkpoint = load_checkpoint(weights)
    model = model_from_checkpoint(checkpoint, use_ema=True, source=weights)
    if output is None:
        output = increment_path(REPO_ROOT / "runs" / "convert" / "exp", mkdir=True) / weights.name
    save_checkpoint({"model": model.state_dict(), "ema": None, "model_yaml": model.yaml, "names": list(model.names),
                     "epoch": -1, "foreign": checkpoint.get("foreign")}, output)
    logger.info("%s -> %s: %s, %d classes, strides %s", weights, output, checkpoint.get("foreign") or "checkpoint",
                model.nc, model.stride.tolist())
    return Path(output)


def main(argv: Optional[list[str]] = None) -> Path:
    """CLI entry: a missing, unsafe or mismatched file is one line and exit 2 (through cli_main)."""
    parser = argparse.ArgumentParser(description="Convert a YOLOv5/TPH-YOLOv5 .pt into this project's format")
    parser.add_argument("--weights", required=True, help="the .pt file to convert")
    parser.add_argument("--output", default=None, help="where to write it (default: runs/convert/exp*/<name>)")
    opts = parser.parse_args(argv)
    setup_logging()
    return convert(opts.weights, opts.output)


if __name__ == "__main__":
    cli_main(main, "models/convert.py")
