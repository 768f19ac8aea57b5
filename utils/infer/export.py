"""Export a trained checkpoint to ONNX and TorchScript, written beside the weights (best.pt -> best.onnx).

The exported graph returns the eval-mode decoded predictions (B, N, 5 + nc + num_extra); in C-BBL mode
the expectation decode (softmax, then a fixed projection on the grid values) and the uncertainty are in
the graph, so every runtime gets ordinary boxes. The model's facts travel as JSON metadata
(utils/infer/backend.py reads them). ONNX uses PyTorch's TorchScript-based exporter (``dynamo=False``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn as nn

from models.yolo import model_from_checkpoint
from utils.checkpoint import load_checkpoint
from utils.infer.backend import METADATA_KEY, model_metadata

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
# Largest allowed |onnxruntime - torch| difference, relative to max(1, |torch value|) (box pixels reach ~1e3).
ONNX_TOLERANCE = 1e-4


class PredictionOnly(nn.Module):
    """Wraps a model so that its forward returns the decoded predictions alone (no raw level list)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.train(model.training)  # exporters restore the wrapper's mode afterwards: keep it the model's

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float [0, 1] -> (B, N, 5 + nc + num_extra)."""
        return self.model(images)[0]


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict, opset: int = 17,
                dynamic: bool = False) -> Path:
    """Write an ONNX file with input ``images`` and output ``output``; dynamic batch/height/width if asked."""
    import onnx

    dynamic_axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 1: "anchors"}}
    torch.onnx.export(PredictionOnly(model), (example,), str(path), dynamo=False, opset_version=opset,
                      input_names=["images"], output_names=["output"],
                      dynamic_axes=dynamic_axes if dynamic else None, do_constant_folding=True)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    entry = graph.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.save(graph, str(path))
    return path


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict) -> Path:
    """Trace the model and save it with the metadata as an extra file."""
    traced = torch.jit.trace(PredictionOnly(model), example, strict=False, check_trace=False)
    torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": json.dumps(metadata)})
    return path


def onnx_max_error(path: Path, model: nn.Module, images: torch.Tensor) -> float:
    """max |onnxruntime - torch| / max(1, |torch|) over the predictions for ``images`` (B, 3, H, W)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = PredictionOnly(model)(images).detach().cpu().numpy()
    got = session.run(None, {session.get_inputs()[0].name: images.cpu().numpy()})[0]
    if got.shape != expected.shape:
        raise ValueError(f"{path}: ONNX output shape {got.shape} differs from PyTorch's {expected.shape}")
    return float((np.abs(got - expected) / np.maximum(1.0, np.abs(expected))).max())


def run(weights: Union[str, Path], include: Sequence[str] = ("onnx", "torchscript"),
        imgsz: Union[int, Sequence[int]] = (640, 640), batch_size: int = 1, dynamic: bool = False,
        opset: int = 17, check: bool = True, out_dir: Union[str, Path, None] = None) -> list[Path]:
    """Export ``weights`` (a .pt checkpoint, EMA weights when present) to each format in ``include``.

    Args:
        out_dir: folder for the files (default: beside the weights), named like the weights (best.pt -> best.onnx).
        imgsz: (h, w) of the example input (the fixed input size unless ``dynamic``); multiples of the stride.
        dynamic: dynamic batch, height and width (ONNX); TorchScript traces stay shape-generic where the model is.
        check: compare ONNX Runtime with PyTorch on a random batch; ValueError beyond ONNX_TOLERANCE.
    Returns:
        Paths of the written files, e.g. [best.onnx, best.torchscript].
    """
    unknown = sorted(set(include) - set(FORMATS))
    if unknown or not include:
        raise ValueError(f"--include {list(include)}: unknown or empty; choose from {FORMATS}")
    weights = Path(weights)
    if weights.suffix != ".pt":
        raise ValueError(f"{weights}: export takes a .pt checkpoint of this project")
    imgsz = [int(imgsz)] * 2 if isinstance(imgsz, int) else [int(s) for s in imgsz] * (2 if len(imgsz) == 1 else 1)
    model = model_from_checkpoint(load_checkpoint(weights), use_ema=True).fuse().eval()
    stride = int(max(model.stride.tolist()))
    if any(size % stride for size in imgsz) or batch_size < 1:
        raise ValueError(f"--imgsz {imgsz} must be multiples of the model stride {stride} and --batch-size >= 1")
    example = torch.rand(batch_size, 3, *imgsz, generator=torch.Generator().manual_seed(0))
    metadata = model_metadata(model, imgsz, batch_size, dynamic)
    base = weights if out_dir is None else Path(out_dir) / weights.name
    written = []
    if "onnx" in include:
        written.append(export_onnx(model, example, base.with_suffix(".onnx"), metadata, opset, dynamic))
        if check:
            _check_onnx(written[-1], model, example, dynamic, stride)
    if "torchscript" in include:
        written.append(export_torchscript(model, example, base.with_suffix(".torchscript"), metadata))
    for path in written:
        logger.info("exported %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return written


def _check_onnx(path: Path, model: nn.Module, example: torch.Tensor, dynamic: bool, stride: int) -> None:
    """ONNX Runtime vs PyTorch on the export shape (and on another shape when dynamic)."""
    batches = [torch.rand_like(example)]
    if dynamic:
        height, width = example.shape[2:]
        batches.append(torch.rand(example.shape[0] + 1, 3, height + stride, width, generator=torch.Generator()
                                  .manual_seed(1)))
    for images in batches:
        error = onnx_max_error(path, model, images)
        if error > ONNX_TOLERANCE:
            raise ValueError(f"{path}: ONNX Runtime differs from PyTorch by {error:.2e} (> {ONNX_TOLERANCE}) "
                             f"on input {tuple(images.shape)}")
        logger.info("ONNX Runtime matches PyTorch on %s: max relative error %.2e", tuple(images.shape), error)
