"""Export a checkpoint to ONNX and/or TorchScript, beside the weights as YOLOv5 does (best.pt -> best.onnx).

    python export.py --weights runs/train/exp/weights/best.pt --include onnx torchscript --imgsz 640 --dynamic
    python export.py --weights best.pt --include onnx --project runs/export --name v1   # into a run folder instead

A file of the same name beside the weights is replaced only when this project's export wrote it.
The ONNX file is checked against PyTorch with ONNX Runtime; detect.py and val.py take either file as --weights.
Thin CLI: flags -> ExportOptions (utils/infer/export.py, which this parser is generated from) -> ``export``;
``export.run(**kwargs)`` takes the same options from Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from utils.infer.export import ExportOptions, export
from utils.log import setup_logging
from utils.options import cli_main, options_from_kwargs, parse_into


def run(**kwargs: Any) -> list[Path]:
    """YOLOv5's ``export.run(weights=..., include=...)``: ExportOptions fields as keyword arguments."""
    return export(options_from_kwargs(ExportOptions, kwargs))


def main(argv: Optional[Sequence[str]] = None) -> list[Path]:
    options = parse_into(ExportOptions, argv, __doc__)
    setup_logging()
    return export(options)


if __name__ == "__main__":
    cli_main(main, "export.py")
