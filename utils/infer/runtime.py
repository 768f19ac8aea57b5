"""Weights ready to run, for detect.py and val.py alike: :func:`load_backend` (PyTorch, or ONNX Runtime over an
in-memory export) and :func:`check_input_memory`, which refuses an input size the device cannot hold."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from utils.infer.backend import DetectBackend
from utils.infer.export import ExportOptions, export
from utils.infer.options import RUNTIMES
from utils.torch_utils import device_memory


def load_backend(weights: Sequence[str], device: torch.device, half: bool = False, runtime: str = "torch",
                 cbbl_fusion: Optional[bool] = False) -> DetectBackend:
    """The weights as a :class:`DetectBackend`; ``runtime="onnxruntime"`` runs a single .pt through ONNX Runtime.

    The checkpoint is exported (fused, dynamic shapes; with the C-BBL side variances unless ``cbbl_fusion`` is
    False, for variance voting) to a temporary ONNX file that ONNX Runtime loads into memory; nothing is written
    beside the weights. On CPU this is faster than PyTorch eager (docs/benchmarks.md).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"--runtime {runtime!r}: choose one of {RUNTIMES}")
    weights = list(weights)
    if runtime == "torch" or Path(weights[0]).suffix != ".pt":
        return DetectBackend(weights, device=device, half=half)
    if len(weights) > 1:
        raise ValueError("--runtime onnxruntime takes one .pt checkpoint, not an ensemble")
    with tempfile.TemporaryDirectory(prefix="cbbl_tph_ort_") as folder:
        (path,) = export(ExportOptions(weights=weights[0], include=("onnx",), dynamic=True, check=False,
                                       side_variance=cbbl_fusion is not False, project=folder, name="onnx"))
        return DetectBackend(path, device=device, half=half)


def check_input_memory(backend: DetectBackend, imgsz: Sequence[int], batch_size: int) -> None:
    """Refuse an inference size whose first tensors cannot fit on the device (``--imgsz 100000``), before anything
    is allocated: a lower bound, the letterboxed uint8 batch, its float copy and the first layer's float output."""
    height, width = imgsz
    first = next((m for m in backend.models[0].modules() if isinstance(m, nn.Conv2d)), None) \
        if hasattr(backend, "models") else None
    channels, stride = (first.out_channels, first.stride[0]) if first is not None else (3, 1)
    needed = batch_size * (height * width * 3 * (1 + 4) + channels * math.ceil(height / stride)
                           * math.ceil(width / stride) * 4)
    available = device_memory(backend.device)
    if needed > available:
        raise ValueError(f"--imgsz {height} {width}: a batch of {batch_size} needs more than {needed / 1e9:,.0f} GB "
                         f"for the input and the first layer, and {backend.device} has {available / 1e9:,.0f} GB; "
                         "lower --imgsz (detect.py --slice H W runs a large frame in tiles)")
