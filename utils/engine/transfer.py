"""--weights into a freshly built model: every layer that fits, but never box logits read on another grid.

A Detect layer's box channels mean something only under the head settings they were trained with
(box mode; for C-BBL also K, the offset space and the grid points). Loading them by name and shape
alone would put a K=11, beta=5 head's logits onto a K=11, beta=3 grid without a word. So when the
checkpoint's box encoding differs from the model's, the whole Detect layer keeps its initialisation
(with its YOLOv5 priors), one line says why, and everything else transfers as usual.
"""

from __future__ import annotations

import logging
from typing import Any

import torch.nn as nn

from models.yolo import transfer_state_dict
from utils.checkpoint import checkpoint_weights
from utils.head import HeadConfig, as_head_config

logger = logging.getLogger(__name__)

# What makes two C-BBL heads' box logits mean the same: K, the offset space and the grid points themselves.
ENCODING_KEYS = ("bins", "space")
# Settings that explain a change of grid points in the message (the points decide).
GRID_KEYS = ("grid", "alpha", "beta", "size_beta")
# Grid points closer than this are the same grid (float32 round trips through checkpoints).
POINTS_TOLERANCE = 1e-6


def head_difference(stored: HeadConfig | dict | None, requested: HeadConfig | dict | None) -> str:
    """'' when both heads encode boxes the same way, else e.g. ``box regress -> cbbl``, ``bins 11 -> 15`` or
    ``beta 5.0 -> 3.0``. ``restore`` only changes the decode, not the logits, so it never counts.

    A head given as a ``model.yaml['detect']`` dict or None (a checkpoint without one, e.g. a converted YOLOv5
    state dict: YOLOv5's regression head) is read with :func:`utils.head.as_head_config`.
    """
    old, new = as_head_config(stored), as_head_config(requested)
    if old.box_mode != new.box_mode:
        return f"box {old.box_mode} -> {new.box_mode}"
    if not old.is_cbbl:
        return ""
    changed = [f"{key} {getattr(old, key)} -> {getattr(new, key)}" for key in ENCODING_KEYS
               if getattr(old, key) != getattr(new, key)]
    if not changed and not (_same_points(old.centre_points, new.centre_points)
                            and _same_points(old.size_points, new.size_points)):
        changed = [f"{key} {getattr(old, key)} -> {getattr(new, key)}" for key in GRID_KEYS
                   if getattr(old, key) != getattr(new, key)] or ["grid points"]
    return ", ".join(changed)


def _same_points(first: tuple[float, ...], second: tuple[float, ...]) -> bool:
    return len(first) == len(second) and all(abs(a - b) <= POINTS_TOLERANCE for a, b in zip(first, second))


def transfer_weights(model: nn.Module, checkpoint: dict[str, Any], source: str) -> tuple[int, int]:
    """Copy ``checkpoint``'s weights (EMA when present) into ``model`` by name and shape; returns (loaded, total).

    Args:
        model: a Model whose last layer is its Detect head (the requested head settings).
        checkpoint: a dict with ``model`` (and optionally ``ema``, ``model_yaml['detect']``) state.
        source: how to name the weights in messages, e.g. ``--weights best.pt``.
    """
    state = checkpoint_weights(checkpoint)
    state = {name: value.float() if value.is_floating_point() else value for name, value in state.items()}
    stored_head = (checkpoint.get("model_yaml") or {}).get("detect")
    difference = head_difference(stored_head, model.detect.head)
    if difference:
        prefix = detect_prefix(model)
        state = {name: value for name, value in state.items() if not name.startswith(prefix)}
        logger.warning("%s: its head differs from the requested one (%s%s); the Detect layer starts afresh, "
                       "every other layer is transferred", source, difference,
                       "" if stored_head else "; no head settings stored, taken as YOLOv5 regression")
    loaded, total, kept_init = transfer_state_dict(model, state)
    logger.info("transferred %d/%d items from %s%s", loaded, total, source,
                f"; not transferred (another shape, or the YAML's anchors/strides): {', '.join(kept_init)}"
                if kept_init else "")
    return loaded, total


def detect_prefix(model: nn.Module) -> str:
    """The state-dict name prefix of ``model``'s Detect layer, e.g. ``model.24.``."""
    return next(name for name, module in model.named_modules() if module is model.detect) + "."
