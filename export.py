"""Export a checkpoint to ONNX and/or TorchScript, written beside it (best.pt -> best.onnx, best.torchscript).

    python export.py --weights runs/train/exp/weights/best.pt --include onnx torchscript --imgsz 640 --dynamic

The ONNX file is checked against PyTorch with ONNX Runtime; detect.py and val.py take either file as --weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from utils.infer.export import FORMATS, run
from utils.log import setup_logging
from utils.options import cli_main


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="a .pt checkpoint of this project")
    parser.add_argument("--include", nargs="+", default=list(FORMATS), choices=FORMATS, help="formats to write")
    parser.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640], help="input h w")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size of the example input")
    parser.add_argument("--dynamic", action="store_true", help="ONNX: dynamic batch, height and width")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    parser.add_argument("--no-check", dest="check", action="store_false", help="skip the ONNX Runtime comparison")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> list[Path]:
    setup_logging()
    return run(**vars(parse_args(argv)))


if __name__ == "__main__":
    cli_main(main, "export.py")
