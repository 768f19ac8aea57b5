"""Optimizer construction, learning-rate curves and warmup arithmetic for training.

Three parameter groups, in YOLOv5's order so logs read the same (results.csv x/lr0..x/lr2):
pg0 normalisation weights (no decay), pg1 other weights (decay), pg2 biases (no decay).
Decay on BN scales or biases only shrinks them towards zero without regularising anything useful.

Which optimizer and LR a run uses (:func:`choose_optimizer`): TPH-YOLOv5's ``--adam`` is Adam at
TPH_ADAM_LR for every group; YOLOv5's ``--optimizer X`` is X at the hyp's lr0; with neither, the
hyp file's own ``optimizer`` at its lr0.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn

from utils.hyp import OPTIMIZERS, Hyp

logger = logging.getLogger(__name__)

# TPH-YOLOv5's --adam: Adam at this LR for every parameter group; the hyp's lr0 is not used (its train.py).
TPH_ADAM_LR = 3e-4
# Warmup lasts at least this many batches (YOLOv5 v7.0's 100; TPH-YOLOv5 and YOLOv5 v5/v6.0 use 1000).
MIN_WARMUP_ITERATIONS = 100
# Index of the bias group (pg2): during warmup its LR falls from warmup_bias_lr while the others rise from 0.
BIAS_GROUP = 2
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

    Every group starts at ``lr``, also stored as its ``initial_lr`` (torch's scheduler key), which the LR
    schedule multiplies. Raises ValueError for an unknown optimizer name.
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
    for group in optimizer.param_groups:
        group["initial_lr"] = lr
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


def choose_optimizer(hyp: Hyp, optimizer: Optional[str] = None, adam: bool = False,
                     hyp_name: str = "the hyp") -> tuple[str, float]:
    """(optimizer name, learning rate) of a run: ``adam`` (TPH-YOLOv5's --adam) -> Adam at TPH_ADAM_LR;
    ``optimizer`` (YOLOv5's --optimizer) -> it at hyp.lr0; neither -> hyp.optimizer at hyp.lr0.

    Logs one warning when the hyp's lr0 was tuned for SGD and meets Adam/AdamW, or the other way round
    (an lr0 of 0.01 is ~30x too high for Adam; an Adam lr0 leaves SGD barely moving).
    """
    if adam:
        logger.info("--adam: TPH-YOLOv5's Adam at lr %g for every group (the hyp's lr0 %g is not used)",
                    TPH_ADAM_LR, hyp.lr0)
        return "Adam", TPH_ADAM_LR
    name = optimizer or hyp.optimizer
    if (name == "SGD") != (hyp.optimizer == "SGD"):
        logger.warning("%s is tuned for %s (lr0 %g) but trains with %s at that lr0; pass --optimizer %s, "
                       "or a hyp file for %s (optimizer: %s)", hyp_name, hyp.optimizer, hyp.lr0, name,
                       hyp.optimizer, name, name)
    return name, hyp.lr0


def use_cosine_lr(hyp: Hyp, cos_lr: bool = False, linear_lr: bool = False) -> bool:
    """Cosine (True) or linear LR curve: YOLOv5's --cos-lr or TPH-YOLOv5's --linear-lr, else hyp.lr_schedule
    (TrainOptions refuses both flags at once)."""
    return cos_lr or (not linear_lr and hyp.lr_schedule == "cosine")


def warmup_iterations(warmup_epochs: float, num_batches: int) -> int:
    """Warmup length in batches: ``warmup_epochs`` epochs, at least MIN_WARMUP_ITERATIONS; 0 epochs = none."""
    if warmup_epochs <= 0:
        return 0
    return max(round(warmup_epochs * num_batches), MIN_WARMUP_ITERATIONS)


def warmup_accumulate(iteration: int, warmup_length: int, full_accumulate: float) -> int:
    """Batches per optimizer step during warmup: from 1 at iteration 0 up to ``full_accumulate`` (nominal
    batch / batch size) at ``warmup_length``, rounded half to even as numpy does (YOLOv5's ramp)."""
    return max(1, int(np.interp(iteration, [0, warmup_length], [1.0, full_accumulate]).round()))


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
