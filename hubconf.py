"""torch.hub entry points, named and shaped as YOLOv5's hubconf.py (local only: nothing is downloaded).

    model = torch.hub.load(".", "custom", path="runs/train/exp/weights/best.pt", source="local")
    results = model(["img.jpg", rgb_array, pil_image], size=640)  # AutoShape: any images in
    results.print(); results.xyxy[0]; results.pandas().xyxy[0]; results.save()
    model = torch.hub.load(".", "custom", path="yolov5s.pt", source="local", autoshape=False)
    pred = model(images)[0]  # (B, N, 5 + nc) cx, cy, w, h pixels, objectness, classes (+1 column for C-BBL)
    model = torch.hub.load(".", "yolov5s", source="local", pretrained=False, classes=10)  # untrained

``path`` takes our checkpoints and YOLOv5/TPH-YOLOv5 ``.pt`` files alike (read without running pickled code).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import torch.nn as nn

from models.yolo import Model, model_from_checkpoint
from utils.cbbl.calibration import UncertaintyCalibration
from utils.checkpoint import load_checkpoint
from utils.data.tiles import TileSettings
from utils.infer.hub import AutoShape
from utils.torch_utils import select_device

dependencies = ["torch", "numpy", "cv2", "yaml"]
MODELS = Path(__file__).resolve().parent / "models"


def _finish(model: Model, autoshape: bool, device: Optional[str], checkpoint: Optional[dict] = None) -> nn.Module:
    """The model on its device; with ``autoshape``, YOLOv5's AutoShape, slicing and reading the uncertainty as
    the ``checkpoint`` it came from says (its training tiles, its calibration)."""
    model = model.to(select_device(device or "")).eval()
    if not autoshape:
        return model
    return AutoShape(model, TileSettings.of_checkpoint(checkpoint or {}),
                     UncertaintyCalibration.of_checkpoint(checkpoint or {}))


def custom(path: Union[str, Path], autoshape: bool = True, _verbose: bool = True, device: Optional[str] = None
           ) -> nn.Module:
    """A trained checkpoint (ours or YOLOv5/TPH-YOLOv5), EMA weights when present, in eval mode.

    Exported files (.onnx, .torchscript) are refused by name: detect.py and val.py run them."""
    if Path(path).suffix != ".pt":
        raise ValueError(f"{path}: torch.hub 'custom' loads .pt checkpoints (this project's or YOLOv5/TPH-YOLOv5's); "
                         f"run an exported file with detect.py or val.py --weights {path}")
    checkpoint = load_checkpoint(path)
    model = model_from_checkpoint(checkpoint, use_ema=True, source=path)
    return _finish(model, autoshape, device, checkpoint)


def _create(name: str, pretrained: bool, channels: int, classes: int, autoshape: bool, device: Optional[str]
            ) -> nn.Module:
    if pretrained:
        raise ValueError(f"{name}: no pretrained weights are downloaded by this project; pass pretrained=False for "
                         f"an untrained model, or load your own file with torch.hub.load(repo, 'custom', "
                         f"path='best.pt', source='local')")
    return _finish(Model(MODELS / f"{name}.yaml", ch=channels, nc=classes), autoshape, device)


def _graph_entry(name: str, size: str) -> Callable[..., nn.Module]:
    """A YOLOv5-style entry point ``name(pretrained=True, channels=3, classes=80, autoshape=True, ...)``."""

    def entry(pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
              _verbose: bool = True, device: Optional[str] = None) -> nn.Module:
        return _create(name, pretrained, channels, classes, autoshape, device)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (f"YOLOv5-{size} graph (models/{name}.yaml), untrained: pretrained=True is refused "
                     f"(this project downloads nothing).")
    return entry


yolov5n = _graph_entry("yolov5n", "nano")
yolov5s = _graph_entry("yolov5s", "small")
yolov5m = _graph_entry("yolov5m", "medium")
yolov5l = _graph_entry("yolov5l", "large")
yolov5x = _graph_entry("yolov5x", "xlarge")
