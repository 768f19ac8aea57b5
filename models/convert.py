"""Convert a YOLOv5 / TPH-YOLOv5 checkpoint into this project's checkpoint format, once.

    python models/convert.py --weights yolov5s.pt                 # writes yolov5s-converted.pt beside it
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
from utils.log import setup_logging  # noqa: E402

logger = logging.getLogger(__name__)


def convert(weights: Union[str, Path], output: Optional[Union[str, Path]] = None) -> Path:
    """Write ``weights`` (YOLOv5/TPH-YOLOv5 or ours) as our checkpoint; returns the output path.

    Refuses to overwrite the input or an existing file (ValueError naming it).
    """
    weights = Path(weights)
    output = Path(output) if output is not None else weights.with_name(f"{weights.stem}-converted.pt")
    if output.exists():
        raise ValueError(f"{output} exists; choose another --output (nothing is overwritten)")
    checkpoint = load_checkpoint(weights)
    model = model_from_checkpoint(checkpoint, use_ema=True, source=weights)
    save_checkpoint({"model": model.state_dict(), "ema": None, "model_yaml": model.yaml, "names": list(model.names),
                     "epoch": -1, "foreign": checkpoint.get("foreign")}, output)
    logger.info("%s -> %s: %s, %d classes, strides %s", weights, output, checkpoint.get("foreign") or "checkpoint",
                model.nc, model.stride.tolist())
    return output


def main(argv: Optional[list[str]] = None) -> int:
    """CLI entry: 0 on success, 2 with a one-line error for a missing, unsafe or mismatched file."""
    setup_logging()
    parser = argparse.ArgumentParser(description="Convert a YOLOv5/TPH-YOLOv5 .pt into this project's format")
    parser.add_argument("--weights", required=True, help="the .pt file to convert")
    parser.add_argument("--output", default=None, help="where to write it (default: <name>-converted.pt beside it)")
    opts = parser.parse_args(argv)
    try:
        convert(opts.weights, opts.output)
    except (ValueError, FileNotFoundError) as err:
        logger.error("error: %s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
