"""--weights into a freshly built model: every layer that fits, but never box logits read on another grid.

A Detect layer's box channels mean something only under the head settings they were trained with
(box mode; for C-BBL also the grid: bins, alpha, beta, offset space). Loading them by name and shape
alone would put a K=11, beta=5 head's logits onto a K=11, beta=3 grid without a word. So when the
checkpoint's box encoding differs from the model's, the whole Detect layer keeps its initialisation
(with its YOLOv5 priors), one line says why, and everything else transfers as usual.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional

import torch.nn as nn

from models.detect import resolve_head
from models.yolo import transfer_state_dict

logger = logging.getLogger(__name__)

# Head settings that change what the box channels mean; ``restore`` only changes the decode, not the logits.
BOX_ENCODING_KEYS = ("box", "bins", "alpha", "beta", "space")


def box_encoding(head: Optional[dict]) -> dict[str, Any]:
    """The settings that give a head's box logits their meaning; regression has none besides its mode.

    ``head`` is a ``model.yaml['detect']`` dict; None (a checkpoint without it, e.g. a converted YOLOv5
    state dict) means YOLOv5's regression head.
    """
    settings = resolve_head(head)
    if settings["box"] == "regress":
        return {"box": "regress"}
    return {key: settings[key] for key in BOX_ENCODING_KEYS}


def head_difference(stored: Optional[dict], requested: Optional[dict]) -> str:
    """'' when both heads encode boxes the same way, else e.g. ``box regress -> cbbl`` or ``beta 5.0 -> 3.0``."""
    old, new = box_encoding(stored), box_encoding(requested)
    if old["box"] != new["box"]:
        return f"box {old['box']} -> {new['box']}"
    changed = [f"{key} {old[key]} -> {new[key]}" for key in BOX_ENCODING_KEYS[1:] if key in old
               and not (old[key] == new[key] or (isinstance(old[key], float) and math.isclose(old[key], new[key])))]
    return ", ".join(changed)


def transfer_weights(model: nn.Module, checkpoint: dict[str, Any], source: str) -> tuple[int, int]:
    """Copy ``checkpoint``'s weights (EMA when present) into ``model`` by name and shape; returns (loaded, total).

    Args:
        model: a Model whose last layer is its Detect head (the requested head settings).
        checkpoint: a dict with ``model`` (and optionally ``ema``, ``model_yaml['detect']``) state.
        source: how to name the weights in messages, e.g. ``--weights best.pt``.
    """
    state = checkpoint.get("ema") or checkpoint["model"]
    state = {name: value.float() if value.is_floating_point() else value for name, value in state.items()}
    stored_head = (checkpoint.get("model_yaml") or {}).get("detect")
    difference = head_difference(stored_head, model.detect.settings())
    if difference:
        prefix = detect_prefix(model)
        state = {name: value for name, value in state.items() if not name.startswith(prefix)}
        logger.warning("%s: its head differs from the requested one (%s%s); the Detect layer starts afresh, "
                       "every other layer is transferred", source, difference,
                       "" if stored_head else "; no head settings stored, taken as YOLOv5 regression")
    loaded, total = transfer_state_dict(model, state)
    logger.info("transferred %d/%d items from %s", loaded, total, source)
    return loaded, total


def detect_prefix(model: nn.Module) -> str:
    """The state-dict name prefix of ``model``'s Detect layer, e.g. ``model.24.``."""
    return next(name for name, module in model.named_modules() if module is model.detect) + "."
