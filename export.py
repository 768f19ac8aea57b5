"""Export a checkpoint to ONNX and/or TorchScript, written beside it (best.pt -> best.onnx, best.torchscript).

    python export.py --weights runs/train/exp/weights/best.pt --include onnx torchscript --imgsz 640 --dynamic

The ONNX file is checked against PyTorch with ONNX Runtime; detect.py and val.py take either file as --weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from utils.infer.export import ExportOptions, export
from utils.log import setup_logging


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="a .pt checkpoint of this project")
    parser.add_argument("--include", nargs="+", default=list(ExportOptions.include),
                        help="formats to write (YOLOv5's names; this project writes torchscript and onnx)")
    parser.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640], help="input h w")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size of the example input")
    parser.add_argument("--device", default=ExportOptions.device, help="cpu or a CUDA device, e.g. 0")
    parser.add_argument("--half", action="store_true", help="float16 export (CUDA --device only)")
    parser.add_argument("--dynamic", action="store_true", help="ONNX: dynamic batch, height and width")
    parser.add_argument("--simplify", action="store_true", help="ONNX: simplify with onnxsim (pip install onnxsim)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    parser.add_argument("--no-check", dest="check", action="store_false", help="skip the ONNX Runtime comparison")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> list[Path]:
    setup_logging()
    return export(ExportOptions(**vars(parse_args(argv))))


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"export.py: error: {err}")
