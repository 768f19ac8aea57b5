"""Optimizer construction, learning-rate curves and warmup arithmetic for training.

Three parameter groups, in YOLOv5 v7.0's order so logs read the same (results.csv x/lr0..x/lr2):
group 0 biases (no decay, warmed from warmup_bias_lr), group 1 other weights (decay), group 2
normalisation weights (no decay). Decay on norm scales or biases only shrinks them towards zero without
regularising anything useful. TPH-YOLOv5 orders its groups [norm, weights, biases]; its schedule treats each
role the same way, so a TPH recipe runs on v7.0's order and only its column order in results.csv differs.

Which optimizer and LR a run uses (:func:`choose_optimizer`): TPH-YOLOv5's ``--adam`` is Adam at
TPH_ADAM_LR for every group; YOLOv5's ``--optimizer X`` is X at the hyp's lr0; with neither, the
hyp file's own ``optimizer`` at its lr0. Which schedule rules apply (:func:`schedule_rules`): TPH-YOLOv5's
where the run uses its flags, else YOLOv5 v7.0's.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn

from utils.hyp import OPTIMIZERS, Hyp

logger = logging.getLogger(__name__)

# TPH-YOLOv5's --adam: Adam at this LR for every parameter group; the hyp's lr0 is not used (its train.py).
TPH_ADAM_LR = 3e-4
# Index of the bias group: during warmup its LR falls from warmup_bias_lr while the others rise from 0.
BIAS_GROUP = 0
# YOLOv5's nominal batch: gradients are accumulated to about this many images per optimizer step.
YOLOV5_NOMINAL_BATCH = 64
# With --nbs 0 (auto), small datasets lower the nominal batch to keep at least this many steps per epoch.
MIN_STEPS_PER_EPOCH = 12
# hyp weight_decay is per optimizer step of this many images (YOLOv5's nominal batch, where it was tuned).
WEIGHT_DECAY_IMAGES = 64
# Adam's second-moment decay; the hyp's momentum is its beta1.
ADAM_BETA2 = 0.999
# The roles of build_optimizer's groups, in order; stored with the LR hook's state, so a resume can tell
# checkpoints written before the groups followed v7.0 (TPH-YOLOv5's order) and reorder them.
GROUP_ORDER = "bias,weight,norm"
LEGACY_GROUP_ORDER = "norm,weight,bias"
# SGD below this lr0 barely moves: it is Adam/AdamW's scale (YOLOv5 suggests 1e-3 for Adam, 1e-2 for SGD;
# its SGD fine-tuning hyps go down to 0.0026).
SGD_MIN_LR0 = 0.002


@dataclass(frozen=True)
class ScheduleRules:
    """Where YOLOv5 v7.0's and TPH-YOLOv5's train.py schedules differ; the rest is the same in both."""

    source: str
    min_warmup_iterations: int  # warmup lasts max(warmup_epochs * batches per epoch, this) batches
    linear_end_offset: int  # the linear curve reaches lrf at epoch ``epochs - linear_end_offset``


YOLOV5_RULES = ScheduleRules("YOLOv5 v7.0", min_warmup_iterations=100, linear_end_offset=0)
TPH_RULES = ScheduleRules("TPH-YOLOv5", min_warmup_iterations=1000, linear_end_offset=1)


def schedule_rules(adam: bool = False, linear_lr: bool = False) -> ScheduleRules:
    """TPH-YOLOv5's rules when the run uses a flag only TPH-YOLOv5 has (--adam, --linear-lr), else v7.0's."""
    return TPH_RULES if adam or linear_lr else YOLOV5_RULES


def split_param_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """(biases, decayed_weights, norm_weights) of the trainable parameters, each exactly once, by YOLOv5 v7.0's
    rule: a parameter named ``bias``, the ``weight`` of a normalisation layer, everything else."""
    norm_types = tuple(cls for name, cls in vars(nn).items() if "Norm" in name and isinstance(cls, type))
    biases, decayed_weights, norm_weights = [], [], []
    for module in model.modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if param_name == "bias":
                biases.append(param)
            elif param_name == "weight" and isinstance(module, norm_types):
                norm_weights.append(param)
            else:
                decayed_weights.append(param)
    return biases, decayed_weights, norm_weights


def build_optimizer(model: nn.Module, name: str = "SGD", lr: float = 0.01, momentum: float = 0.937,
                    weight_decay: float = 5e-4) -> torch.optim.Optimizer:
    """An SGD (Nesterov), Adam or AdamW optimizer with the three groups (module docstring); only the weights
    group gets ``weight_decay``.

    Every group starts at ``lr``, also stored as its ``initial_lr`` (torch's scheduler key), which the LR
    schedule multiplies. Raises ValueError for an unknown optimizer name.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"--optimizer {name!r} is not one of {OPTIMIZERS}")
    biases, decayed_weights, norm_weights = split_param_groups(model)
    if name == "SGD":
        optimizer = torch.optim.SGD(biases, lr=lr, momentum=momentum, nesterov=True)
    elif name == "Adam":
        optimizer = torch.optim.Adam(biases, lr=lr, betas=(momentum, ADAM_BETA2))
    else:
        optimizer = torch.optim.AdamW(biases, lr=lr, betas=(momentum, ADAM_BETA2), weight_decay=0.0)
    optimizer.add_param_group({"params": decayed_weights, "weight_decay": weight_decay})
    optimizer.add_param_group({"params": norm_weights, "weight_decay": 0.0})
    for group in optimizer.param_groups:
        group["initial_lr"] = lr
    logger.info("optimizer: %s(lr=%g) with parameter groups %d biases (no decay), %d weights (decay=%g), "
                "%d norm weights (no decay)", name, lr, len(biases), len(decayed_weights), weight_decay,
                len(norm_weights))
    return optimizer


def reorder_saved_groups(optimizer_state: dict, saved_order: str) -> dict:
    """A saved optimizer state_dict with its groups in GROUP_ORDER (torch pairs saved and current groups, and
    their parameters' state, by position). ``saved_order``: the roles of its groups, comma-separated."""
    if saved_order == GROUP_ORDER:
        return optimizer_state
    saved_roles, groups = saved_order.split(","), optimizer_state["param_groups"]
    return {**optimizer_state, "param_groups": [groups[saved_roles.index(role)] for role in GROUP_ORDER.split(",")]}


def lr_lambda(epochs: int, lrf: float, cosine: bool = False,
              rules: ScheduleRules = YOLOV5_RULES) -> Callable[[int], float]:
    """Multiplier of lr0 at an epoch: 1 at epoch 0, falling to ``lrf`` by a cosine at ``epochs`` or linearly
    at ``epochs - rules.linear_end_offset`` (TPH-YOLOv5's linear curve ends one epoch earlier than v7.0's)."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if cosine:
        return lambda epoch: ((1 - math.cos(epoch * math.pi / epochs)) / 2) * (lrf - 1) + 1
    span = max(epochs - rules.linear_end_offset, 1)  # TPH's 1-epoch run divides by zero; only lf(0) = 1 is used
    return lambda epoch: (1 - epoch / span) * (1.0 - lrf) + lrf


def choose_optimizer(hyp: Hyp, optimizer: Optional[str] = None, adam: bool = False,
                     hyp_name: str = "the hyp") -> tuple[str, float]:
    """(optimizer name, learning rate) of a run: ``adam`` (TPH-YOLOv5's --adam) -> Adam at TPH_ADAM_LR;
    ``optimizer`` (YOLOv5's --optimizer) -> it at hyp.lr0; neither -> hyp.optimizer at hyp.lr0.

    Logs one warning when the lr0 does not suit the optimizer: the hyp names SGD and the run uses Adam/AdamW
    (an lr0 of 0.01 is ~30x too high for Adam), or the run uses SGD at an lr0 tuned for Adam/AdamW (the hyp
    names one, or lr0 < SGD_MIN_LR0, as in a YOLOv5 hyp without an ``optimizer`` key tuned for Adam).
    """
    if adam:
        logger.info("--adam: TPH-YOLOv5's Adam at lr %g for every group (the hyp's lr0 %g is not used)",
                    TPH_ADAM_LR, hyp.lr0)
        return "Adam", TPH_ADAM_LR
    name = optimizer or hyp.optimizer
    if name == "SGD" and (hyp.optimizer != "SGD" or hyp.lr0 < SGD_MIN_LR0):
        tuned_for = hyp.optimizer if hyp.optimizer != "SGD" else "Adam/AdamW"
        logger.warning("%s: SGD at lr0 %g, an lr0 tuned for %s (SGD's is ~0.01), barely trains; pass "
                       "--optimizer %s, or a hyp file for SGD (hyp.scratch-low.yaml)", hyp_name, hyp.lr0, tuned_for,
                       "AdamW" if hyp.optimizer == "SGD" else hyp.optimizer)
    elif name != "SGD" and hyp.optimizer == "SGD":
        logger.warning("%s is tuned for SGD (lr0 %g) but trains with %s at that lr0; pass --optimizer SGD, "
                       "or a hyp file for %s (optimizer: %s)", hyp_name, hyp.lr0, name, name, name)
    return name, hyp.lr0


def use_cosine_lr(hyp: Hyp, cos_lr: bool = False, linear_lr: bool = False) -> bool:
    """Cosine (True) or linear LR curve: YOLOv5's --cos-lr or TPH-YOLOv5's --linear-lr, else hyp.lr_schedule
    (TrainOptions refuses both flags at once)."""
    return cos_lr or (not linear_lr and hyp.lr_schedule == "cosine")


def warmup_iterations(warmup_epochs: float, num_batches: int, rules: ScheduleRules = YOLOV5_RULES) -> int:
    """Warmup length in batches: ``warmup_epochs`` epochs, at least ``rules.min_warmup_iterations``.

    0 epochs = no warmup (YOLOv5 and TPH-YOLOv5 still warm up for their minimum then, which their users
    report as a bug: ultralytics/yolov5#12180).
    """
    if warmup_epochs <= 0:
        return 0
    return max(round(warmup_epochs * num_batches), rules.min_warmup_iterations)


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
