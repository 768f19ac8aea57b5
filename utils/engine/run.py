"""``run(opts)``: one training run (or --evolve generations) from TrainOptions, as train.py calls it.

Wires the parts (utils/engine/setup.py) into a Trainer with hooks in a fixed order, handles --resume
(latest or a given last.pt: same options, exact state) and the torchrun/DDP context.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from models.yolo import model_from_checkpoint
from utils.anchors import check_anchors
from utils.cbbl.calibration import CHECKPOINT_KEY as CALIBRATION_KEY
from utils.checkpoint import is_stripped, load_checkpoint, save_checkpoint
from utils.data.config import load_data_config
from utils.data.tiles import TileSettings
from utils.distributed import DistContext, cleanup, init_distributed, wrap_ddp
from utils.engine import setup as train_setup
from utils.engine.evolve import evolve
from utils.engine.grid_fit import fit_model_grid
from utils.engine.hooks import (
    BestModelHook,
    CheckpointHook,
    CloseMosaicHook,
    Hook,
    ImageWeightsHook,
    LRScheduleHook,
    ValidationHook,
)
from utils.engine.optim import (
    GROUP_ORDER,
    LEGACY_GROUP_ORDER,
    accumulate_steps,
    build_optimizer,
    choose_optimizer,
    nominal_batch,
    reorder_saved_groups,
    scaled_weight_decay,
    schedule_rules,
    use_cosine_lr,
)
from utils.engine.options import RESUME_LATEST, TrainOptions
from utils.engine.trainer import Trainer
from utils.engine.writers import PlotsHook, ResultsCsvHook, TensorBoardHook
from utils.eval.validator import Slicing, validate
from utils.files import folder_lock
from utils.infer.options import CBBL_FUSION_DEFAULT, votes
from utils.torch_utils import TRAIN_GRID_FLOOR, ModelEMA, init_seeds, max_stride, select_device

logger = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    """What a finished run leaves: its folder, the last epoch's metrics row, the final validation, and whether it
    trained in mixed precision (--amp after its automatic check)."""

    save_dir: Path
    epochs_done: int
    metrics: dict[str, float] = field(default_factory=dict)
    final: Optional[Any] = None
    amp: bool = False


def find_resume_checkpoint(opts: TrainOptions) -> Path:
    """--resume: the newest last.pt under --project, or the given path. Raises FileNotFoundError if none."""
    if opts.resume != RESUME_LATEST:
        path = Path(opts.resume)
        if not path.is_file():
            raise FileNotFoundError(f"--resume {path}: no such checkpoint")
        return path
    candidates = sorted(Path(opts.project).glob("**/weights/last.pt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f"--resume: no last.pt found under {opts.project}; give the path of one")
    return candidates[-1]


def resume_options(opts: TrainOptions) -> tuple[TrainOptions, dict[str, Any], Path]:
    """The options stored in the checkpoint (the run continues exactly as started), its dict and path.

    A full (unstripped) last.pt whose epochs are all done was killed during the final step (validation of
    best.pt, plots, stripping): resuming it runs that step alone. A stripped one is a finished run.
    """
    path = find_resume_checkpoint(opts)
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint.get("opt"), dict) or "epoch" not in checkpoint:
        raise ValueError(f"--resume {path}: not a training checkpoint of this project (no options stored); "
                         "start a new run from it with --weights")
    stored = TrainOptions.from_dict(checkpoint["opt"], resume=str(path), local_rank=opts.local_rank)
    epochs_done = int(checkpoint["epoch"]) + 1
    if is_stripped(checkpoint):
        raise ValueError(f"--resume {path}: training already finished (after epoch {epochs_done} of "
                         f"{stored.epochs}); nothing to resume (start a new run with --weights to train further)")
    if epochs_done >= stored.epochs or checkpoint.get("stop"):
        logger.info("resuming %s: its %d epochs are done; running the final step it was stopped in (validation "
                    "of best.pt, plots, stripping the checkpoints)", path, epochs_done)
    else:
        logger.info("resuming %s from epoch %d of %d", path, epochs_done, stored.epochs)
    return stored, checkpoint, path


def check_resume_classes(checkpoint: dict[str, Any], names: list[str], path: Path, data: str) -> None:
    """Refuse a resume whose dataset no longer has the checkpoint's classes (before any epoch runs: the model's
    head and the labels would disagree)."""
    stored = [str(name) for name in checkpoint.get("names") or []]
    if stored and len(stored) != len(names):
        raise ValueError(f"--resume {path}: the model was trained on {len(stored)} classes but {data} now has "
                         f"{len(names)}; restore that YAML, or start a new run from it with --weights {path}")


def recorded_run_dir(checkpoint: dict[str, Any], path: Path) -> Optional[Path]:
    """The run folder that wrote ``checkpoint`` when ``path`` still lies in its ``weights/``, else None.

    Never derived from the path alone: a checkpoint copied elsewhere continues in a new run folder, so
    the folders around it (and any results.csv there) are left alone.
    """
    recorded = checkpoint.get("save_dir")
    if recorded and (Path(recorded) / "weights" / path.name).is_file():
        if (Path(recorded) / "weights" / path.name).samefile(path):
            return Path(recorded)
    logger.info("--resume %s: not inside the run folder that wrote it (%s); continuing in a new run folder",
                path, recorded or "not recorded")
    return None


def run(opts: TrainOptions) -> TrainOutcome:
    """Train (or evolve hyperparameters with --evolve N) and return the outcome of the (last) run."""
    if opts.evolve:
        return evolve(opts, train)
    return train(opts)


def train(opts: TrainOptions) -> TrainOutcome:
    """One training run; DDP when launched by torchrun (WORLD_SIZE > 1).

    The inputs (options, --resume checkpoint, dataset YAML, the memory the run needs) are checked before the
    run folder is made; the folder is locked for the run (one training per folder).
    """
    context = DistContext.from_env(local_rank=opts.local_rank)
    checkpoint, save_dir, resume_path = None, None, None
    if opts.resume:
        opts, checkpoint, resume_path = resume_options(opts)
        save_dir = recorded_run_dir(checkpoint, resume_path)
    device = select_device(opts.device, opts.batch_size)
    if context.enabled and device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
    init_distributed(context, device)
    try:
        if opts.recommended:
            logger.info("%s recommends %s: used, since the command gives none", opts.data,
                        ", ".join(f"--{name} {getattr(opts, name + '_path' if name == 'hyp' else name)}"
                                  for name in opts.recommended))
        with train_setup.main_process_first(context):
            data = load_data_config(opts.data)
        names = train_setup.class_names(data, opts.single_cls)
        if checkpoint is not None:
            check_resume_classes(checkpoint, names, resume_path, opts.data)
        else:
            train_setup.check_memory(opts, names, device)
        with ExitStack() as stack:
            if context.is_main:
                new_folder = save_dir is None
                # a copy of last.pt continues in a new folder even when its run was --exist-ok (never the original)
                save_dir = save_dir or train_setup.new_run_dir(opts, exist_ok=opts.exist_ok and checkpoint is None)
                stack.enter_context(folder_lock(save_dir, "training"))
                if new_folder:
                    train_setup.write_run_yamls(opts, save_dir)
            return _train(opts, context, device, save_dir, checkpoint, data, names)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(interrupted_message(save_dir)) from None
    finally:
        cleanup(context)


def interrupted_message(save_dir: Optional[Path]) -> str:
    """What ctrl-C leaves: where the last complete epoch is saved and the command that continues from it."""
    last = Path(save_dir) / "weights" / "last.pt" if save_dir is not None else None
    if last is None or not last.is_file():
        where = f" (run folder {save_dir})" if save_dir is not None else ""
        return f"training interrupted before its first epoch was saved; nothing to resume{where}"
    return (f"training interrupted; the last complete epoch is saved in {last}: continue with "
            f"python train.py --resume {last}")


def _train(opts: TrainOptions, context: DistContext, device: torch.device, save_dir: Optional[Path],
           checkpoint: Optional[dict], data: dict[str, Any], names: list[str]) -> TrainOutcome:
    init_seeds(opts.seed + 1 + max(context.rank, 0), deterministic=True)
    model, loss_fn, imgsz = train_setup.build(opts, names, device, checkpoint)
    stride = max_stride(model.stride, TRAIN_GRID_FLOOR)
    batch_size = opts.batch_size // context.world_size
    train_loader, dataset, val_loader = train_setup.build_loaders(opts, data, imgsz, stride, context, batch_size)
    if checkpoint is None and not opts.noautoanchor:
        check_anchors(dataset, model, thr=opts.hyp.anchor_t, imgsz=imgsz)
    if checkpoint is None:
        fit_model_grid(model, dataset, imgsz, seed=opts.seed)

    optimizer, accumulate, schedule = build_optimization(opts, model, len(dataset), len(train_loader))
    ema = ModelEMA(model) if context.is_main else None
    final = FinalValidation(save_dir, val_loader, names, device, plots=not opts.noplots,
                            slicing=tile_slicing(opts, imgsz)) if context.is_main else None
    hooks = build_hooks(opts, context, save_dir, model, dataset, val_loader, loss_fn, schedule, final)
    trainer = Trainer(model=wrap_ddp(model, context, device, opts.sync_bn), loss_fn=loss_fn, optimizer=optimizer,
                      train_loader=train_loader, device=device, epochs=opts.epochs, hooks=hooks, ema=ema,
                      accumulate=accumulate, imgsz=imgsz, stride=stride, multi_scale=opts.multi_scale,
                      context=context, seed=opts.seed, amp=opts.amp)
    if checkpoint is not None:
        restore_state(trainer, checkpoint)
    logger.info("training %d epochs at --img %d, batch %d (x%d accumulated), results to %s",
                opts.epochs, imgsz, opts.batch_size, accumulate, save_dir)
    trainer.fit()
    if context.is_main:
        logger.info("Results saved to %s", save_dir)
    return TrainOutcome(save_dir=save_dir, epochs_done=trainer.epoch + 1, metrics=dict(trainer.metrics),
                        final=final and final.results, amp=trainer.amp)


def build_optimization(opts: TrainOptions, model: torch.nn.Module, num_images: int,
                       num_batches: int) -> tuple[torch.optim.Optimizer, int, LRScheduleHook]:
    """The optimizer (utils/engine/optim.choose_optimizer), batches per step after warmup, and the LR hook.

    ``num_images`` sets the auto nominal batch; ``num_batches`` (per epoch) the warmup length.
    """
    hyp = opts.hyp
    nbs = nominal_batch(opts.nbs, num_images)
    accumulate = accumulate_steps(opts.batch_size, nbs)
    logger.info("gradient accumulation: %d batch(es) of %d per optimizer step%s", accumulate, opts.batch_size,
                " (ramping up from 1 during warmup)" if accumulate > 1 else "")
    weight_decay = scaled_weight_decay(hyp.weight_decay, opts.batch_size, accumulate)
    name, lr = choose_optimizer(hyp, opts.optimizer, opts.adam, opts.hyp_path or "the built-in hyp (scratch-low)")
    optimizer = build_optimizer(model, name, lr, hyp.momentum, weight_decay)
    cosine = use_cosine_lr(hyp, opts.cos_lr, opts.linear_lr)
    rules = schedule_rules(opts.adam, opts.linear_lr)
    logger.info("LR schedule: %s, %g -> %g over %d epochs (%s's rules)", "cosine" if cosine else "linear", lr,
                lr * hyp.lrf, opts.epochs, rules.source)
    schedule = LRScheduleHook(hyp.lrf, opts.epochs, cosine, hyp.momentum, hyp.warmup_epochs, hyp.warmup_momentum,
                              hyp.warmup_bias_lr, num_batches, full_accumulate=nbs / opts.batch_size, rules=rules)
    return optimizer, accumulate, schedule


def restore_state(trainer: Trainer, checkpoint: dict[str, Any]) -> None:
    """Optimizer, scaler, epoch, EMA and every hook's state from a last.pt."""
    hook_states = checkpoint.get("hooks") or {}
    # ours before the groups followed v7.0 lack "group_order"; files without our hooks are YOLOv5's
    saved_order = hook_states["lr"].get("group_order", LEGACY_GROUP_ORDER) if "lr" in hook_states else GROUP_ORDER
    trainer.load_state_dict({**checkpoint, "optimizer": reorder_saved_groups(checkpoint["optimizer"], saved_order)})
    if trainer.ema is not None and checkpoint.get("ema") is not None:
        trainer.ema.load_state_dict({"ema": checkpoint["ema"], "updates": checkpoint["ema_updates"]})
    for hook in trainer.hooks:
        hook.load_state_dict(hook_states.get(hook.name, {}))


def tile_slicing(opts: TrainOptions, imgsz: int) -> Optional[Slicing]:
    """A --tile run's final validation slices each full val frame into its training windows (what detect.py
    --slice will do with the model); None for whole-frame training."""
    if not opts.tile:
        return None
    window = TileSettings(opts.tile, opts.tile_overlap, opts.tile_scale).window
    return Slicing((window, window), opts.tile_overlap, imgsz)


class FinalValidation:
    """After training: validate best.pt (last.pt if no best) verbosely, per class, with plots, as val.py scores it
    by default: a tile run's sliced, a C-BBL model's with variance voting (per-epoch validation stays whole-frame at
    --img and plain NMS: about 6x cheaper for tiles, and it reports the val losses)."""

    def __init__(self, save_dir: Path, val_loader: Any, names: list[str], device: torch.device, plots: bool,
                 slicing: Optional[Slicing] = None):
        self.save_dir, self.val_loader, self.names = save_dir, val_loader, names
        self.device, self.plots, self.slicing, self.results = device, plots, slicing, None

    def __call__(self) -> Any:
        path = self.save_dir / "weights" / "best.pt"
        path = path if path.is_file() else path.with_name("last.pt")
        if not path.is_file():
            return None
        checkpoint = load_checkpoint(path)
        model = model_from_checkpoint(checkpoint, source=path).to(self.device)
        sliced = "" if self.slicing is None else " on {}x{} slices of the full frames".format(*self.slicing.tile_hw)
        logger.info("validating %s%s", path, sliced)
        model.detect.side_variance = votes(CBBL_FUSION_DEFAULT, model.detect.box_mode == "cbbl")
        self.results = validate(model, self.val_loader, self.names, verbose=True, plots=self.plots,
                                save_dir=self.save_dir, slicing=self.slicing, cbbl_fusion=model.detect.side_variance)
        calibration = (self.results.uncertainty or {}).get("calibration")
        if calibration is not None:  # detect.py and the hub model then report the uncertainty as expected IoU
            save_checkpoint({**checkpoint, CALIBRATION_KEY: calibration}, path)
            logger.info("%s: the C-BBL uncertainty is now read as expected IoU (fitted on %d true positives)", path,
                        calibration["num_boxes"])
        return self.results


def build_hooks(opts: TrainOptions, context: DistContext, save_dir: Optional[Path], model: torch.nn.Module,
                dataset: Any, val_loader: Any, loss_fn: Any, schedule: LRScheduleHook,
                final: Optional[FinalValidation]) -> list[Hook]:
    """The hooks in their fixed order (``schedule`` from build_optimization); rank > 0 only keeps what changes
    training itself."""
    hooks: list[Any] = [schedule, CloseMosaicHook(dataset, opts.close_mosaic)]
    if opts.image_weights:
        hooks.append(ImageWeightsHook(dataset, model.nc))
    if not context.is_main:
        return [*hooks, BestModelHook(opts.patience, context)]

    names = model.names

    def validate_epoch(ema_model: torch.nn.Module) -> Any:
        return validate(ema_model, val_loader, names, compute_loss=loss_fn)

    hooks.append(ValidationHook(validate_epoch, noval=opts.noval, final_fn=final))
    hooks.append(BestModelHook(opts.patience, context))
    hooks.append(ResultsCsvHook(save_dir / "results.csv"))
    static = {"model_yaml": model.yaml, "names": names, "hyp": opts.hyp.to_dict(), "opt": opts.to_dict(),
              "save_dir": str(Path(save_dir).resolve())}  # --resume continues here, and only from here
    hooks.append(CheckpointHook(save_dir / "weights", static, opts.save_period, opts.nosave))
    if not opts.noplots:
        hooks.append(PlotsHook(save_dir, names, dataset.labels))
    hooks.append(TensorBoardHook(save_dir))
    return hooks
