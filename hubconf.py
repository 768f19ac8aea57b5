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
from typing import Optional, Union

import torch.nn as nn

from models.yolo import Model, model_from_checkpoint
from utils.checkpoint import load_checkpoint
from utils.infer.hub import AutoShape
from utils.torch_utils import select_device

dependencies = ["torch", "numpy", "cv2", "yaml"]
MODELS = Path(__file__).resolve().parent / "models"


def _finish(model: Model, autoshape: bool, device: Optional[str]) -> nn.Module:
    model = model.to(select_device(device or "")).eval()
    return AutoShape(model) if autoshape else model


def custom(path: Union[str, Path], autoshape: bool = True, _verbose: bool = True, device: Optional[str] = None
           ) -> nn.Module:
    """A trained checkpoint (ours or YOLOv5/TPH-YOLOv5), EMA weights when present, in eval mode."""
    return _finish(model_from_checkpoint(load_checkpoint(path), use_ema=True, source=path), autoshape, device)


def _create(name: str, pretrained: bool, channels: int, classes: int, autoshape: bool, device: Optional[str]
            ) -> nn.Module:
    if pretrained:
        raise ValueError(f"{name}: no pretrained weights are downloaded by this project; pass pretrained=False for "
                         f"an untrained model, or load your own file with torch.hub.load(repo, 'custom', "
                         f"path='best.pt', source='local')")
    return _finish(Model(MODELS / f"{name}.yaml", ch=channels, nc=classes), autoshape, device)


def yolov5n(pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
            _verbose: bool = True, device: Optional[str] = None) -> nn.Module:
    """YOLOv5-nano graph (models/yolov5n.yaml); untrained: ``pretrained=True`` is refused (nothing to download)."""
    return _create("yolov5n", pretrained, channels, classes, autoshape, device)


def yolov5s(pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
            _verbose: bool = True, device: Optional[str] = None) -> nn.Module:
    """YOLOv5-small graph (models/yolov5s.yaml); see :func:`yolov5n`."""
    return _create("yolov5s", pretrained, channels, classes, autoshape, device)


def yolov5m(pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
            _verbose: bool = True, device: Optional[str] = None) -> nn.Module:
    """YOLOv5-medium graph (models/yolov5m.yaml); see :func:`yolov5n`."""
    return _create("yolov5m", pretrained, channels, classes, autoshape, device)


def yolov5l(pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
            _verbose: bool = True, device: Optional[str] = None) -> nn.Module:
    """YOLOv5-large graph (models/yolov5l.yaml); see :func:`yolov5n`."""
    return _create("yolov5l", pretrained, channels, classes, autoshape, device)


def yolov5x(pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
            _verbose: bool = True, device: Optional[str] = None) -> nn.Module:
    """YOLOv5-xlarge graph (models/yolov5x.yaml); see :func:`yolov5n`."""
    return _create("yolov5x", pretrained, channels, classes, autoshape, device)
