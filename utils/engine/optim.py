"""Optimizer construction and learning-rate curves for training.

Three parameter groups, in YOLOv5's order so logs read the same (results.csv x/lr0..x/lr2):
pg0 normalisation weights (no decay), pg1 other weights (decay), pg2 biases (no decay).
Decay on BN scales or biases only shrinks them towards zero without regularising anything useful.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

OPTIMIZERS = ("SGD", "Adam", "AdamW")
# YOLOv5's nominal batch: gradients are accumulated to about this many images per optimizer step.
YOLOV5_NOMINAL_BATCH = 64
# With --nbs 0 (auto), small datasets lower the nominal batch to keep at least this many steps per epoch.
MIN_STEPS_PER_EPOCH = 12
# hyp weight_decay is per optimizer step of this many images (YOLOv5's nominal batch, where it was tuned).
WEIGHT_DECAY_IMAGES = 64
# Adam's second-moment decay; the hyp's momentum is its beta1.
ADAM_BETA2 = 0.999


def split_param_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """(norm_weights, decayed_weights, biases) of the trainable parameters, each parameter exactly once."""
    norm_types = tuple(cls for name, cls in vars(nn).items() if "Norm" in name and isinstance(cls, type))
    norm_weights, decayed_weights, biases = [], [], []
    for module in model.modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if param_name == "bias":
                biases.append(param)
            elif isinstance(module, norm_types):
                norm_weights.append(param)
            else:
                decayed_weights.append(param)
    return norm_weights, decayed_weights, biases


def build_optimizer(model: nn.Module, name: str = "SGD", lr: float = 0.01, momentum: float = 0.937,
                    weight_decay: float = 5e-4) -> torch.optim.Optimizer:
    """An SGD (Nesterov), Adam or AdamW optimizer with the three groups; only pg1 gets ``weight_decay``.

    Raises ValueError for an unknown optimizer name.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"--optimizer {name!r} is not one of {OPTIMIZERS}")
    norm_weights, decayed_weights, biases = split_param_groups(model)
    if name == "SGD":
        optimizer = torch.optim.SGD(norm_weights, lr=lr, momentum=momentum, nesterov=True)
    elif name == "Adam":
        optimizer = torch.optim.Adam(norm_weights, lr=lr, betas=(momentum, ADAM_BETA2))
    else:
        optimizer = torch.optim.AdamW(norm_weights, lr=lr, betas=(momentum, ADAM_BETA2), weight_decay=0.0)
    optimizer.add_param_group({"params": decayed_weights, "weight_decay": weight_decay})
    optimizer.add_param_group({"params": biases, "weight_decay": 0.0})
    logger.info("optimizer: %s(lr=%g) with parameter groups %d norm weights (no decay), %d weights "
                "(decay=%g), %d biases (no decay)", name, lr, len(norm_weights), len(decayed_weights),
                weight_decay, len(biases))
    return optimizer


def lr_lambda(epochs: int, lrf: float, cosine: bool = False) -> Callable[[int], float]:
    """Multiplier of lr0 at an epoch: 1 at epoch 0, falling to ``lrf`` at ``epochs``, linearly or by a cosine."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if cosine:
        return lambda epoch: ((1 - math.cos(epoch * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return lambda epoch: (1 - epoch / epochs) * (1.0 - lrf) + lrf


def nominal_batch(requested: int, num_train_images: int) -> int:
    """The nominal batch: ``requested`` if > 0, else YOLOv5's 64, lowered on tiny datasets.

    Auto keeps at least MIN_STEPS_PER_EPOCH optimizer steps per epoch, so a 96-image demo set learns in
    minutes while VisDrone-sized sets accumulate to 64 images exactly as YOLOv5/TPH-YOLOv5 do.
    """
    if requested > 0:
        return requested
    return min(YOLOV5_NOMINAL_BATCH, max(1, num_train_images // MIN_STEPS_PER_EPOCH))


def accumulate_steps(batch_size: int, nominal_batch: int = 64) -> int:
    """How many batches to accumulate before an optimizer step so each step sees about ``nominal_batch`` images."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    return max(round(nominal_batch / batch_size), 1)


def scaled_weight_decay(weight_decay: float, batch_size: int, accumulate: int) -> float:
    """Per-step weight decay for steps of ``batch_size * accumulate`` images.

    The hyp value is tuned per WEIGHT_DECAY_IMAGES images, so the regularisation per image stays the same
    whatever --batch-size and --nbs are.
    """
    return weight_decay * batch_size * accumulate / WEIGHT_DECAY_IMAGES
