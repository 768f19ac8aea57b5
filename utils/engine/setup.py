"""Building a training run's parts from TrainOptions: run folder, model, data loaders, optimizer.

Each builder takes the options and explicit arguments and returns plain objects; utils/engine/run.py
wires them into a Trainer with its hooks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
import yaml

from models.yolo import Model, transfer_state_dict
from utils.checkpoint import load_checkpoint
from utils.data.dataset import create_dataloader
from utils.distributed import DistContext, barrier
from utils.engine.options import TrainOptions
from utils.files import increment_path
from utils.head import HeadConfig

logger = logging.getLogger(__name__)

# Validation batches hold twice the training batch: no gradients are kept, so memory allows it.
VAL_BATCH_FACTOR = 2
# Rectangular validation batches are padded by half a stride (YOLOv5's val pad).
VAL_RECT_PAD = 0.5


@contextmanager
def main_process_first(context: DistContext) -> Iterator[None]:
    """Let rank 0 do a one-time job (generate/scan the dataset) before the other ranks read its results."""
    if not context.is_main:
        barrier(context)
    yield
    if context.is_main:
        barrier(context)


def make_run_dir(opts: TrainOptions) -> Path:
    """runs/train/<name> (incremented unless --exist-ok) with weights/, plus opt.yaml and hyp.yaml."""
    save_dir = increment_path(Path(opts.project) / opts.name, exist_ok=opts.exist_ok, mkdir=True)
    (save_dir / "weights").mkdir(parents=True, exist_ok=True)
    write_run_yamls(opts, save_dir)
    return save_dir


def write_run_yamls(opts: TrainOptions, save_dir: Path) -> None:
    options = opts.to_dict()
    hyp = options.pop("hyp")
    (save_dir / "hyp.yaml").write_text(yaml.safe_dump(hyp, sort_keys=False), encoding="utf-8")
    (save_dir / "opt.yaml").write_text(yaml.safe_dump(options, sort_keys=False), encoding="utf-8")


def class_names(data: dict[str, Any], single_cls: bool) -> list[str]:
    return ["item"] if single_cls else [str(name) for name in data["names"]]


def build_model(opts: TrainOptions, names: list[str], device: torch.device,
                resume_checkpoint: Optional[dict] = None) -> nn.Module:
    """The model to train: exactly the checkpoint's on resume; else from --cfg (or --weights' architecture),
    with --weights transferred by name and shape (a different nc or head keeps those layers' init)."""

    if resume_checkpoint is not None:
        model = Model(resume_checkpoint["model_yaml"])
        model.load_state_dict(resume_checkpoint["model"])
    else:
        pretrained = load_checkpoint(opts.weights, weights_only_transfer=bool(opts.cfg)) if opts.weights else None
        cfg = opts.cfg or pretrained["model_yaml"]
        model = Model(cfg, nc=len(names), anchors=opts.hyp.anchors and int(opts.hyp.anchors),
                      head=HeadConfig.from_hyp(opts.hyp, opts.imgsz))
        if pretrained is not None:
            state = pretrained.get("ema") or pretrained["model"]
            loaded, total = transfer_state_dict(model, {k: v.float() for k, v in state.items()})
            logger.info("transferred %d/%d items from %s", loaded, total, opts.weights)
    model.names = names
    model.yaml["names"] = names
    freeze_layers(model, opts.freeze)
    return model.to(device)


def freeze_layers(model: nn.Module, freeze: tuple[int, ...]) -> list[str]:
    """--freeze N freezes layers 0..N-1; --freeze i j k freezes those layers. Returns the frozen names."""
    indices = list(range(freeze[0])) if len(freeze) == 1 else list(freeze)
    prefixes = tuple(f"model.{index}." for index in indices)
    frozen = []
    for name, param in model.named_parameters():
        if prefixes and name.startswith(prefixes):
            param.requires_grad_(False)
            frozen.append(name)
    if frozen:
        logger.info("froze %d parameter tensors in layers %s", len(frozen), indices)
    return frozen


def grid_size(model: nn.Module) -> int:
    """The largest stride (at least 32): image sizes must be multiples of it."""
    return max(int(model.stride.max()), 32)


def check_image_size(imgsz: int, stride: int) -> int:
    """--img rounded up to a multiple of the model's largest stride (with a warning when changed)."""
    size = int(math.ceil(imgsz / stride) * stride)
    if size != imgsz:
        logger.warning("--img %d is not a multiple of the max stride %d; using %d", imgsz, stride, size)
    return size


def build_loaders(opts: TrainOptions, data: dict[str, Any], imgsz: int, stride: int, context: DistContext,
                  batch_size: int) -> tuple[Any, Any, Optional[Any]]:
    """(train_loader, train_dataset, val_loader or None on non-main ranks); ``batch_size`` per process."""

    nc = 1 if opts.single_cls else int(data["nc"])
    with main_process_first(context):
        train_loader, dataset = create_dataloader(
            data["train"], imgsz, batch_size, stride, hyp=opts.hyp, augment=True, rect=opts.rect, cache=opts.cache,
            workers=opts.workers, shuffle=not opts.rect, single_cls=opts.single_cls, rank=context.rank,
            image_weights=opts.image_weights, quad=opts.quad, seed=opts.seed, prefix="train: ", nc=nc)
    val_loader = None
    if context.is_main:
        val_loader, _ = create_dataloader(
            data["val"], imgsz, batch_size * VAL_BATCH_FACTOR, stride, hyp=opts.hyp, rect=True, cache=opts.cache,
            workers=opts.workers, single_cls=opts.single_cls, pad=VAL_RECT_PAD, seed=opts.seed, prefix="val: ", nc=nc)
    return train_loader, dataset, val_loader
