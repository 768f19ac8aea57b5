"""Building a training run's parts from TrainOptions: the run folder, the model and criterion (:func:`build`,
the one builder), the data loaders.

Each function takes the options and explicit arguments and returns plain objects; utils/engine/run.py
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

from models.verify import check_graph
from models.yolo import Model, layers_on_meta, model_from_checkpoint
from utils.checkpoint import checkpoint_weights, load_checkpoint
from utils.data.augment import AugmentSettings
from utils.data.config import SINGLE_CLASS_NAME
from utils.data.dataset import create_dataloader
from utils.data.tiles import TileSettings
from utils.distributed import DistContext, barrier
from utils.engine.options import TrainOptions
from utils.engine.transfer import transfer_weights
from utils.files import atomic_write_text, increment_path, make_dirs
from utils.head import HeadConfig
from utils.loss import ComputeLoss, LossSettings
from utils.torch_utils import TRAIN_GRID_FLOOR, device_memory, max_stride, round_to_stride

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


def new_run_dir(opts: TrainOptions, exist_ok: bool) -> Path:
    """runs/train/<name> (incremented unless ``exist_ok``) with weights/; its opt.yaml and hyp.yaml are written
    once the folder is locked (:func:`write_run_yamls`)."""
    save_dir = increment_path(Path(opts.project) / opts.name, exist_ok=exist_ok, mkdir=True)
    make_dirs(save_dir / "weights")
    return save_dir


def write_run_yamls(opts: TrainOptions, save_dir: Path) -> None:
    options = opts.to_dict()
    hyp = options.pop("hyp")
    atomic_write_text(save_dir / "hyp.yaml", yaml.safe_dump(hyp, sort_keys=False))
    atomic_write_text(save_dir / "opt.yaml", yaml.safe_dump(options, sort_keys=False))


# Bytes training keeps per parameter: fp32 weights, gradients, optimizer momentum and the EMA copy.
TRAIN_BYTES_PER_PARAMETER = 16


def training_memory_floor(opts: TrainOptions, nc: int) -> tuple[int, int]:
    """(a lower bound of the bytes training needs, the model's parameter count; 0 when --weights sets the model).

    The bound is the parameters' training state plus one activation of the first layer for the whole batch
    (every layer's is kept for the backward pass, so the true need is several times larger).
    """
    channels, stride, params = 3, 1, 0  # without --cfg the model is the (loaded, real) --weights one: the input
    if opts.cfg:
        layers = layers_on_meta(opts.cfg, nc, HeadConfig.from_hyp(opts.hyp, opts.imgsz))
        params = sum(p.numel() for p in layers.parameters())
        first = next((m for m in layers.modules() if isinstance(m, nn.Conv2d)), None)
        if first is not None:
            channels, stride = first.out_channels, first.stride[0]
    activations = opts.batch_size * channels * math.ceil(opts.imgsz / stride) ** 2 * 4  # float32
    return params * TRAIN_BYTES_PER_PARAMETER + activations, params


def check_memory(opts: TrainOptions, names: list[str], device: torch.device) -> None:
    """Refuse, before anything is allocated, a run that cannot fit: --img 100000, or width_multiple: 100."""
    needed, params = training_memory_floor(opts, len(names))
    available = device_memory(device)
    if needed > available:
        model = f" and {opts.cfg} ({params / 1e6:,.0f}M parameters)" if params else ""
        raise ValueError(f"--img {opts.imgsz} --batch-size {opts.batch_size}{model}: training needs more than "
                         f"{needed / 1e9:,.0f} GB, and {device} has {available / 1e9:,.0f} GB; lower --img, "
                         "--batch-size or the model YAML's width_multiple")


def class_names(data: dict[str, Any], single_cls: bool) -> list[str]:
    return [SINGLE_CLASS_NAME] if single_cls else [str(name) for name in data["names"]]


def build(opts: TrainOptions, names: list[str], device: torch.device,
          resume_checkpoint: Optional[dict] = None) -> tuple[Model, ComputeLoss, int]:
    """The one builder: training options -> (model, criterion, training image size).

    Every size-dependent setting (the C-BBL beta, the objectness gain) comes from the size training actually
    uses: --img rounded up to the model's largest stride. On resume the model is exactly the checkpoint's.
    """
    if resume_checkpoint is not None:
        model = model_from_checkpoint(resume_checkpoint, use_ema=False, source=opts.resume).train()
        imgsz = round_to_stride(opts.imgsz, max_stride(model.stride, TRAIN_GRID_FLOOR))
    else:
        pretrained = _pretrained(opts)
        cfg = opts.cfg or pretrained["model_yaml"]
        model = Model(cfg, nc=len(names), anchors=opts.hyp.anchors and int(opts.hyp.anchors),
                      head=HeadConfig.from_hyp(opts.hyp, opts.imgsz))
        imgsz = round_to_stride(opts.imgsz, max_stride(model.stride, TRAIN_GRID_FLOOR))
        model.set_head(HeadConfig.from_hyp(opts.hyp, imgsz))  # the size training uses: --img 1000 -> 1024's beta
        if pretrained is not None:
            transfer_weights(model, pretrained, f"--weights {opts.weights}")
    model.names = names
    model.yaml["names"] = names
    freeze_layers(model, opts.freeze)
    model = model.to(device)
    return model, ComputeLoss(model, LossSettings.from_hyp(opts.hyp), imgsz=imgsz), imgsz


def _pretrained(opts: TrainOptions) -> Optional[dict]:
    """--weights to start from (None: from scratch); its graph is checked against its weights when it is the one
    built. Layers transfer by name and shape (utils/engine/transfer.py: a different box encoding rebuilds the
    Detect layer with a warning)."""
    if not opts.weights:
        return None
    pretrained = load_checkpoint(opts.weights, weights_only_transfer=bool(opts.cfg))
    if not opts.cfg:
        check_graph(pretrained["model_yaml"], checkpoint_weights(pretrained), opts.weights)
    return pretrained


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


def build_loaders(opts: TrainOptions, data: dict[str, Any], imgsz: int, stride: int, context: DistContext,
                  batch_size: int) -> tuple[Any, Any, Optional[Any]]:
    """(train_loader, train_dataset, val_loader or None on non-main ranks); ``batch_size`` per process."""
    nc = 1 if opts.single_cls else int(data["nc"])
    with main_process_first(context):
        train_loader, dataset = create_dataloader(
            data["train"], imgsz, batch_size, stride, augmentation=AugmentSettings.from_hyp(opts.hyp), augment=True,
            rect=opts.rect, cache=opts.cache,
            workers=opts.workers, shuffle=not opts.rect, single_cls=opts.single_cls, rank=context.rank,
            image_weights=opts.image_weights, quad=opts.quad, seed=opts.seed, prefix="train: ", nc=nc,
            tile=TileSettings(opts.tile, opts.tile_overlap, opts.tile_scale) if opts.tile else None)
    val_loader = None
    if context.is_main:
        val_loader, _ = create_dataloader(
            data["val"], imgsz, batch_size * VAL_BATCH_FACTOR, stride, rect=True, cache=opts.cache,
            workers=opts.workers, single_cls=opts.single_cls, pad=VAL_RECT_PAD, seed=opts.seed, prefix="val: ", nc=nc)
    return train_loader, dataset, val_loader
