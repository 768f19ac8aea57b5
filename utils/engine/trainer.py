"""The training loop: fixed phases, one small step; everything else is a hook (utils/engine/hooks.py).

``fit()`` runs ``before_train``, then per epoch ``before_epoch`` / ``train_one_epoch`` /
``after_epoch`` inside try/finally, so ``after_train`` (final checkpoint, plots, writers) always runs.
Hooks read and set the trainer's public attributes (epoch, iteration, metrics, stop, ...).
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Sequence
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from utils.boxes import xyxy_to_cxcywhn
from utils.data.dataset import loader_rng_state, set_loader_rng_state
from utils.data.synthetic import make_image
from utils.distributed import DistContext
from utils.nms import non_max_suppression
from utils.torch_utils import (
    ModelEMA,
    autocast,
    autocast_dtype,
    de_parallel,
    global_rng_states,
    python_rng_state,
    set_global_rng_states,
    set_python_rng_state,
)

logger = logging.getLogger(__name__)

# Largest gradient norm applied: a single bad batch early in training cannot blow the weights up.
GRAD_CLIP_NORM = 10.0
# --multi-scale draws each batch's size from this fraction range of --img (rounded to the stride).
MULTI_SCALE_RANGE = (0.5, 1.5)
# The AMP check (YOLOv5's check_amp, on CPU bf16 too): on the built-in image, float32 and mixed-precision detections
# (NMS at conf 0.25, IoU 0.45, as hub models run) must be as many, and each must have a partner in the other set with
# x, y, w, h (fractions of the image), confidence and class within this absolute tolerance: YOLOv5's 0.1.
AMP_CHECK_TOLERANCE = 0.1
AMP_CHECK_IMAGE_SIZE = 640
AMP_CHECK_SEED = 0  # the built-in image: synthetic scene 0 (utils/data/synthetic.py), no file or download
AMP_CHECK_NMS = {"conf_thres": 0.25, "iou_thres": 0.45, "max_det": 1000}
EVENTS = ("before_train", "before_epoch", "before_step", "after_step", "after_epoch", "after_train")


def check_finite_loss(loss: torch.Tensor, loss_items: dict[str, float], paths: Sequence[str], iteration: int) -> None:
    """Stop at once on a NaN/inf loss, naming the batch's images and the per-term losses."""
    if torch.isfinite(loss).all():
        return
    shown = ", ".join(str(p) for p in list(paths)[:8]) + (" ..." if len(paths) > 8 else "")
    raise FloatingPointError(f"non-finite training loss {loss.detach().flatten().tolist()} at iteration {iteration}; "
                             f"loss terms {loss_items}; batch images: {shown}")


def amp_check_image(size: int = AMP_CHECK_IMAGE_SIZE) -> torch.Tensor:
    """The AMP check's built-in image: (1, 3, size, size) RGB float in [0, 1], the same on every machine."""
    bgr, _labels = make_image(size, np.random.default_rng(AMP_CHECK_SEED))
    return torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1))).float().div(255)[None]


@torch.no_grad()
def amp_check_detections(model: nn.Module, image: torch.Tensor, mixed: bool,
                         conf_thres: float = AMP_CHECK_NMS["conf_thres"]) -> torch.Tensor:
    """(n, 6) detections ``x, y, w, h`` (fractions of the image), confidence, class of ``model`` (eval) on
    ``image``, in float32 or under mixed precision."""
    device = next(model.parameters()).device
    with autocast(device, mixed):
        pred = model(image.to(device))[0]
    nms = {**AMP_CHECK_NMS, "conf_thres": conf_thres}
    det = non_max_suppression(pred.float(), nc=int(model.nc), **nms)[0][:, :6].cpu()
    height, width = image.shape[2:]
    return torch.cat([xyxy_to_cxcywhn(det[:, :4], width, height), det[:, 4:6]], 1)


def detections_agree(first: torch.Tensor, second: torch.Tensor, atol: float = AMP_CHECK_TOLERANCE) -> bool:
    """Same number of (n, 6) detections, and each row of either has a row of the other within ``atol`` everywhere.

    YOLOv5 compares the rows in NMS order; here the order is free, since NMS sorts by confidence and confidences tied
    within bf16's rounding swap places.
    """
    if first.shape != second.shape:
        return False
    close = ((first[:, None] - second[None]).abs() <= atol).all(-1)  # (n, n)
    return bool(close.any(1).all() and close.any(0).all())


def check_amp(model: nn.Module, device: torch.device, conf_thres: float = AMP_CHECK_NMS["conf_thres"]) -> bool:
    """Whether to train ``model`` in mixed precision on ``device`` (fp16 on CUDA, bf16 on CPUs with native bf16).

    As YOLOv5's check_amp: a copy of the model detects the built-in image in float32 and under autocast; the
    detections must agree within AMP_CHECK_TOLERANCE. One line says the outcome; a failed check trains in float32.
    A model that detects nothing in the image (a scratch model) passes, as in YOLOv5.
    """
    dtype = autocast_dtype(device)
    if dtype is None:
        logger.info("AMP: off, %s has no native mixed precision (CPU bf16 needs the amx_bf16 or avx512_bf16 flag); "
                    "training in float32", device)
        return False
    probe = copy.deepcopy(de_parallel(model)).eval()
    image = amp_check_image()
    try:
        reference = amp_check_detections(probe, image, mixed=False, conf_thres=conf_thres)
        mixed = amp_check_detections(probe, image, mixed=True, conf_thres=conf_thres)
        passed = detections_agree(reference, mixed)
    except RuntimeError as err:  # an operator without a mixed-precision kernel here
        logger.warning("AMP: check failed (%s); training in float32 (--no-amp skips the check)", err)
        return False
    if passed:
        logger.info("AMP: checks passed, training the backbone and neck in %s (--no-amp: float32)", dtype)
    else:
        logger.warning("AMP: checks failed, %s detections differ from float32 on the built-in image by more than "
                       "%g; training in float32", dtype, AMP_CHECK_TOLERANCE)
    return passed


def multi_scale_size(imgsz: int, stride: int, rng: random.Random) -> int:
    """A random training size in MULTI_SCALE_RANGE * imgsz, a multiple of the largest stride."""
    low, high = int(imgsz * MULTI_SCALE_RANGE[0]), int(imgsz * MULTI_SCALE_RANGE[1] + stride)
    return max(rng.randrange(low, high) // stride * stride, stride)


class Hook:
    """What the loop calls at its fixed phases (utils/engine/hooks.py and writers.py implement it).

    Every event is a no-op here; ``name`` keys the hook's state in checkpoints.
    """

    name = "hook"

    def before_train(self, trainer: Trainer) -> None: ...
    def before_epoch(self, trainer: Trainer) -> None: ...
    def before_step(self, trainer: Trainer) -> None: ...
    def after_step(self, trainer: Trainer) -> None: ...
    def after_epoch(self, trainer: Trainer) -> None: ...
    def after_train(self, trainer: Trainer) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Hooks without state accept anything."""


class Trainer:
    """Runs epochs of forward / loss / backward / (accumulated) optimizer step / EMA; hooks do the rest."""

    def __init__(self, *, model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                 train_loader: Any, device: torch.device, epochs: int, hooks: Sequence[Hook] = (),
                 ema: Optional[ModelEMA] = None, accumulate: int = 1, imgsz: int = 640, stride: int = 32,
                 multi_scale: bool = False, context: Optional[DistContext] = None, seed: int = 0,
                 amp: bool = False):
        self.model, self.loss_fn, self.optimizer, self.ema = model, loss_fn, optimizer, ema
        self.train_loader, self.device, self.epochs, self.hooks = train_loader, device, epochs, list(hooks)
        self.accumulate = accumulate  # batches per optimizer step; the LR hook ramps it up during warmup
        self.imgsz, self.stride, self.multi_scale = imgsz, stride, multi_scale
        self.context = context or DistContext()
        # On CPU, channels-last convolutions measured 10-20% faster for a training step (docs/benchmarks.md).
        self.memory_format = torch.channels_last if device.type == "cpu" else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        # Mixed precision (--amp) where check_amp passes; bf16 on CPU needs no loss scaling (float32's range).
        self.amp = amp and check_amp(self.model, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and device.type == "cuda")
        self.rng = random.Random(seed)
        self.start_epoch = 0
        self.epoch = 0
        self.iteration = 0  # global batch index since the start of training
        self.last_optimizer_step = -1
        self.num_batches = len(train_loader)
        self.batch: tuple = ()
        self.mean_losses: dict[str, float] = {}
        self.metrics: dict[str, float] = {}  # set by hooks after an epoch (validation, lr, diagnostics)
        self.stop = False  # set by a hook (early stopping) to end training after this epoch
        self.is_best = False  # set by the best-model hook when this epoch has the best fitness so far
        self.completed = False  # True once the epoch loop ended without an exception

    def call(self, event: str) -> None:
        """Run one event on every hook, in list order."""
        assert event in EVENTS, f"unknown trainer event {event!r}"
        for hook in self.hooks:
            getattr(hook, event)(self)

    def fit(self) -> None:
        """All epochs from ``start_epoch``; ``after_train`` runs even when an epoch raises."""
        self.call("before_train")
        try:
            for epoch in range(self.start_epoch, self.epochs):
                self.epoch = epoch
                self.call("before_epoch")
                self.train_one_epoch()
                self.call("after_epoch")
                if self.stop:
                    logger.info("stopping early after epoch %d", epoch)
                    break
            self.completed = True
        finally:
            self.call("after_train")

    def train_one_epoch(self) -> None:
        """One pass over the training loader with a progress bar (rank 0 only)."""
        self.model.train()
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        if hasattr(self.loss_fn, "stats"):
            self.loss_fn.stats.reset()
        self.mean_losses = {}
        self.optimizer.zero_grad()
        progress = tqdm(enumerate(self.train_loader), total=self.num_batches, disable=not self.context.is_main,
                        bar_format="{l_bar}{bar:10}{r_bar}")
        for batch_index, (images, targets, paths, *_rest) in progress:
            self.iteration = batch_index + self.num_batches * self.epoch
            self.batch = (images, targets, paths)
            self.call("before_step")
            loss_items = self.train_step(images, targets, paths)
            self.mean_losses = {key: (self.mean_losses.get(key, 0.0) * batch_index + value) / (batch_index + 1)
                                for key, value in loss_items.items()}
            progress.set_description(self._progress_text(targets.shape[0], images.shape[-1]))
            self.call("after_step")
        stats = getattr(self.loss_fn, "stats", None)
        if stats is not None:  # assignment diagnostics of the loss (positives per level, unmatched targets, ...)
            self.metrics.update({f"diag/{key}": float(value) for key, value in stats.as_dict().items()})

    def train_step(self, images: torch.Tensor, targets: torch.Tensor, paths: Sequence[str]) -> dict[str, float]:
        """Forward, loss, backward; an optimizer step (clipped, scaled) once ``accumulate`` batches are in; EMA.

        Args: images uint8 (B, 3, H, W); targets (M, 6) [image, class, cx, cy, w, h] normalised.
        Returns the per-term losses of this batch as floats.
        """
        images = images.to(self.device, non_blocking=True).float().div_(255)
        images = images.contiguous(memory_format=self.memory_format)
        if self.multi_scale:
            size = multi_scale_size(self.imgsz, self.stride, self.rng)
            if size != images.shape[-1]:
                scale = size / max(images.shape[2:])
                new_hw = [round(side * scale / self.stride) * self.stride for side in images.shape[2:]]
                images = F.interpolate(images, size=new_hw, mode="bilinear", align_corners=False)
        with autocast(self.device, self.amp):  # the head runs float32 under CPU bf16 (models/detect.py)
            preds = self.model(images)
            with torch.autocast("cpu", enabled=False):  # the loss stays float32 on CPU; CUDA keeps YOLOv5's AMP
                loss, loss_terms = self.loss_fn(preds, targets.to(self.device))
        loss_items = {key: float(value) for key, value in loss_terms.items()}
        check_finite_loss(loss, loss_items, paths, self.iteration)
        if self.context.enabled:
            loss = loss * self.context.world_size  # DDP averages gradients over ranks; keep the per-image scale
        self.scaler.scale(loss.sum()).backward()
        if self.iteration - self.last_optimizer_step >= self.accumulate:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=GRAD_CLIP_NORM)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad()
            if self.ema is not None:
                self.ema.update(self.model)
            self.last_optimizer_step = self.iteration
        return loss_items

    def _progress_text(self, num_instances: int, size: int) -> str:
        memory = torch.cuda.memory_reserved() / 1e9 if torch.cuda.is_available() else 0.0
        losses = " ".join(f"{key}={value:.4g}" for key, value in self.mean_losses.items())
        return (f"epoch {self.epoch + 1}/{self.epochs} gpu_mem {memory:.3g}G {losses} "
                f"instances {num_instances} size {size}")

    def state_dict(self) -> dict[str, Any]:
        """What a resume needs from the loop itself (hooks and EMA save their own parts), including every
        random state the next epoch draws from, so a resumed run repeats the uninterrupted one exactly."""
        return {"epoch": self.epoch, "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "iteration": self.iteration, "last_optimizer_step": self.last_optimizer_step,
                "rng": self.rng_state(), "stop": self.stop}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the saved (complete) epoch; after the last one (or an early stop) no epoch runs, only
        the final step (validation of best.pt, plots, stripping) that a kill interrupted."""
        initial_lrs = [group.get("initial_lr") for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, initial_lr in zip(self.optimizer.param_groups, initial_lrs):
            if initial_lr is not None:  # saved groups of older versions lack it: the schedule's base is today's
                group.setdefault("initial_lr", initial_lr)
        if state.get("scaler"):  # empty when saved with AMP off (CPU)
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.start_epoch = self.epochs if state.get("stop") else self.epoch + 1
        self.last_optimizer_step = int(state.get("last_optimizer_step", -1))
        if state.get("rng"):  # absent in checkpoints of older versions: the resume is then not bit-exact
            self.set_rng_state(state["rng"])

    def rng_state(self) -> dict[str, Any]:
        """Global (Python, NumPy, torch), multi-scale and training-loader random states."""
        state = {"global": global_rng_states(), "multi_scale": python_rng_state(self.rng)}
        if getattr(self.train_loader, "generator", None) is not None:
            state["loader"] = loader_rng_state(self.train_loader)
        return state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        set_global_rng_states(state["global"])
        set_python_rng_state(self.rng, state["multi_scale"])
        if "loader" in state:
            set_loader_rng_state(self.train_loader, state["loader"])

    @property
    def unwrapped_model(self) -> nn.Module:
        return de_parallel(self.model)
