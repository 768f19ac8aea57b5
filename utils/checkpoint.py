"""Checkpoints: plain data only, written atomically, read with ``weights_only=True``.

A checkpoint is a dict of tensors and builtins (DESIGN.md section 6):
    model        state_dict (float32) of the trained model
    ema          state_dict of the EMA model or None (what val/detect use when present)
    model_yaml   dict that rebuilds the architecture exactly (nc, resolved anchors, head settings)
    names        list of class names
    hyp, opt     dicts of the run's hyperparameters and options
    epoch, best_fitness, optimizer, scaler, ema_updates, scheduler   (what --resume needs)
    rng          every random state the next epoch draws from (global, multi-scale, loader): exact resume
    save_dir     the run folder that wrote it: --resume continues there only if the file still lies in it
Nothing here unpickles code, so a checkpoint from anywhere is safe to open.

At the end of training both best.pt and last.pt are stripped like YOLOv5's ``strip_optimizer``: the
EMA weights become ``model`` in float16 and the resume state is dropped (about a seventh of the size);
loading casts back to float32 (models/yolo.model_from_checkpoint).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any, Union

import torch

from utils.files import atomic_write_bytes, remove_stale_temps

logger = logging.getLogger(__name__)

# What a stripped checkpoint keeps: enough to rebuild, run, fine-tune from and describe the model.
STRIPPED_KEYS = ("model", "model_yaml", "names", "hyp", "opt", "epoch", "best_fitness")


def save_checkpoint(checkpoint: dict[str, Any], path: Union[str, Path]) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a kill never leaves a broken file.

    Temporary files that a killed save of the same file left behind are removed first. The checkpoint is
    serialised in memory and written in one go, so a full disk raises OutputWriteError with the system's
    reason rather than torch's serializer error.
    """
    path = Path(path)
    remove_stale_temps(path)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu",
                    weights_only_transfer: bool = False) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``); clear errors for a missing or foreign file.

    ``weights_only_transfer`` also accepts a plain ``{'model': state_dict}`` (no ``model_yaml``): enough to
    transfer pretrained weights by name and shape into a model built from ``--cfg``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found (train one with train.py or see weights/README.md)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for corrupt/unsafe files; name the file
        raise ValueError(f"{path}: not a readable checkpoint of this project ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from err
    required = ("model",) if weights_only_transfer else ("model", "model_yaml")
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in required):
        raise ValueError(f"{path}: not a checkpoint of this project (expected a dict with {' and '.join(required)})")
    return checkpoint


def is_stripped(checkpoint: dict[str, Any]) -> bool:
    """True for a finished run's checkpoint (no optimizer state): nothing to resume from it."""
    return checkpoint.get("optimizer") is None


def strip_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint as training ships it: EMA (else model) weights in float16 as ``model``, no resume state."""
    state = checkpoint.get("ema") if checkpoint.get("ema") is not None else checkpoint["model"]
    stripped = {key: checkpoint[key] for key in STRIPPED_KEYS if key in checkpoint}
    stripped["model"] = {key: value.half() if value.is_floating_point() else value for key, value in state.items()}
    return stripped


def strip_checkpoint_file(path: Union[str, Path]) -> float:
    """Strip a checkpoint in place (atomically); returns its new size in MB."""
    path = Path(path)
    save_checkpoint(strip_checkpoint(load_checkpoint(path)), path)
    size_mb = path.stat().st_size / 1e6
    logger.info("optimizer stripped from %s, %.1f MB", path, size_mb)
    return size_mb
