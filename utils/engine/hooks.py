"""Training hooks: small classes with named events, called by utils/engine/trainer.Trainer in list order.

Order used by training (utils/engine/run.py): LR schedule, mosaic closing, validation, best model +
early stopping, results.csv, checkpoint, plots, TensorBoard (after the plots, whose images it logs).
results.csv is written before the checkpoint, so a kill between the two leaves at most an extra row,
which the resume truncates.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from utils.checkpoint import save_checkpoint, strip_checkpoint_file
from utils.distributed import DistContext, broadcast_object
from utils.engine.optim import (
    BIAS_GROUP,
    GROUP_ORDER,
    YOLOV5_RULES,
    ScheduleRules,
    lr_lambda,
    warmup_accumulate,
    warmup_iterations,
)
from utils.engine.trainer import Hook, Trainer

logger = logging.getLogger(__name__)


class LRScheduleHook(Hook):
    """Linear or cosine LR per epoch after warmup, iteration for iteration as YOLOv5 v7.0's and TPH-YOLOv5's
    train.py set it (``rules``: utils/engine/optim.py ScheduleRules).

    Each group's LR is its ``initial_lr`` (utils/engine/optim.py) times the curve lf. Their LambdaLR steps after
    each epoch from ``last_epoch = start_epoch - 1``, so epoch e >= 1 trains at lf(e - 1) (:meth:`epoch_factor`).
    During warmup, by batch index: the bias group falls from warmup_bias_lr and the others rise from 0 to
    initial_lr * lf(e), SGD momentum rises from warmup_momentum (Adam's beta1 stays: they warm only a
    ``momentum`` key), and gradient accumulation ramps from 1 to ``full_accumulate`` = nominal batch / batch
    size. Everything is a pure function of (epoch, iteration), so a resume needs no scheduler state.
    """

    name = "lr"

    def __init__(self, lrf: float, epochs: int, cosine: bool, momentum: float, warmup_epochs: float,
                 warmup_momentum: float, warmup_bias_lr: float, num_batches: int, full_accumulate: float = 1.0,
                 rules: ScheduleRules = YOLOV5_RULES):
        self.momentum, self.full_accumulate = momentum, full_accumulate
        self.lf = lr_lambda(epochs, lrf, cosine, rules)
        self.warmup_momentum, self.warmup_bias_lr = warmup_momentum, warmup_bias_lr
        self.num_batches = num_batches
        self.warmup_iterations = warmup_iterations(warmup_epochs, num_batches, rules)

    def epoch_factor(self, epoch: int) -> float:
        """lf of the scheduler at ``epoch``: lf(epoch - 1), or lf(epoch) for an epoch that began inside the
        warmup, whose last warmup batch set that value and which no scheduler step follows before its end."""
        began_in_warmup = epoch * self.num_batches <= self.warmup_iterations
        return self.lf(epoch if began_in_warmup else epoch - 1)

    def before_epoch(self, trainer: Trainer) -> None:
        factor = self.epoch_factor(trainer.epoch)
        for group in trainer.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    def before_step(self, trainer: Trainer) -> None:
        """During warmup interpolate accumulation, LR and momentum from their warmup values by the batch index."""
        if not self.warmup_iterations or trainer.iteration > self.warmup_iterations:
            return
        ramp = [0, self.warmup_iterations]
        trainer.accumulate = warmup_accumulate(trainer.iteration, self.warmup_iterations, self.full_accumulate)
        for index, group in enumerate(trainer.optimizer.param_groups):
            start_lr = self.warmup_bias_lr if index == BIAS_GROUP else 0.0
            target_lr = group["initial_lr"] * self.lf(trainer.epoch)
            group["lr"] = float(np.interp(trainer.iteration, ramp, [start_lr, target_lr]))
            if "momentum" in group:
                group["momentum"] = float(np.interp(trainer.iteration, ramp, [self.warmup_momentum, self.momentum]))

    def after_epoch(self, trainer: Trainer) -> None:
        for index, group in enumerate(trainer.optimizer.param_groups):  # v7.0's group order: biases first
            trainer.metrics[f"x/lr{index}"] = group["lr"]  # YOLOv5's results.csv names

    def state_dict(self) -> dict[str, Any]:
        return {"warmup_iterations": self.warmup_iterations, "group_order": GROUP_ORDER}


class CloseMosaicHook(Hook):
    """Turn the training dataset's mosaic off for the last ``close_epochs`` epochs (cleaner final fit)."""

    name = "close_mosaic"

    def __init__(self, dataset: Any, close_epochs: int):
        self.dataset, self.close_epochs = dataset, close_epochs

    def before_epoch(self, trainer: Trainer) -> None:
        if self.close_epochs and trainer.epoch >= trainer.epochs - self.close_epochs and self.dataset.mosaic:
            logger.info("closing mosaic for the last %d epoch(s)", trainer.epochs - trainer.epoch)
            self.dataset.mosaic = False


class ImageWeightsHook(Hook):
    """--image-weights: each epoch, draw images in proportion to the inverse frequency of their classes."""

    name = "image_weights"

    def __init__(self, dataset: Any, nc: int):
        classes = np.concatenate([labels[:, 0].astype(int) for labels in dataset.labels] or [np.zeros(0, int)])
        counts = np.bincount(classes, minlength=nc).astype(np.float64)  # (nc,)
        self.dataset, self.class_weights = dataset, 1.0 / np.maximum(counts, 1.0)

    def before_epoch(self, trainer: Trainer) -> None:
        self.dataset.sample_by_class_weights(self.class_weights / self.class_weights.sum())


class ValidationHook(Hook):
    """Validate the EMA model after each epoch (or only the last with ``noval``) into ``trainer.metrics``.

    ``validate_fn(model) -> results`` with ``.precision .recall .map50 .map50_95 .ap_small .fitness()``
    and optional ``.loss`` dict; ``final_fn()`` validates best.pt verbosely after training.
    """

    name = "validation"

    def __init__(self, validate_fn: Callable[[Any], Any], noval: bool = False,
                 final_fn: Optional[Callable[[], Any]] = None):
        self.validate_fn, self.noval, self.final_fn = validate_fn, noval, final_fn

    def after_epoch(self, trainer: Trainer) -> None:
        final_epoch = trainer.epoch + 1 == trainer.epochs
        if self.noval and not final_epoch:
            results = None
        else:
            model = trainer.ema.ema if trainer.ema is not None else trainer.unwrapped_model
            results = self.validate_fn(model)
        trainer.metrics.update(metrics_row(results))

    def after_train(self, trainer: Trainer) -> None:
        if trainer.completed and self.final_fn is not None:
            self.final_fn()


def metrics_row(results: Any) -> dict[str, float]:
    """The results.csv validation columns of a ValResults (NaN when validation was skipped)."""
    if results is None:
        keys = ("precision", "recall", "mAP_0.5", "mAP_0.5:0.95", "AP_small")
        row = {f"metrics/{key}": math.nan for key in keys}
        row.update({f"val/{term}_loss": math.nan for term in ("box", "obj", "cls")})
        return {**row, "fitness": math.nan}
    row = {"metrics/precision": float(results.precision), "metrics/recall": float(results.recall),
           "metrics/mAP_0.5": float(results.map50), "metrics/mAP_0.5:0.95": float(results.map50_95),
           "metrics/AP_small": float(results.ap_small)}
    val_losses = getattr(results, "loss", None) or {}
    row.update({f"val/{term}_loss": float(val_losses.get(term, math.nan)) for term in ("box", "obj", "cls")})
    return {**row, "fitness": float(results.fitness())}


class BestModelHook(Hook):
    """Track the best fitness (0.1*mAP50 + 0.9*mAP50-95) and stop after ``patience`` epochs without a gain."""

    name = "best"

    def __init__(self, patience: int, context: Optional[DistContext] = None):
        self.patience, self.context = patience, context or DistContext()
        self.best_fitness, self.best_epoch = -math.inf, -1

    def after_epoch(self, trainer: Trainer) -> None:
        fitness = trainer.metrics.get("fitness", math.nan)
        trainer.is_best = not math.isnan(fitness) and fitness > self.best_fitness
        if trainer.is_best:
            self.best_fitness, self.best_epoch = fitness, trainer.epoch
        stop = bool(self.patience) and self.best_epoch >= 0 and trainer.epoch - self.best_epoch >= self.patience
        if stop and self.context.is_main:
            logger.info("early stopping: no improvement for %d epochs; best epoch %d, fitness %.4f",
                        self.patience, self.best_epoch, self.best_fitness)
        trainer.stop = broadcast_object(stop, self.context)

    def state_dict(self) -> dict[str, Any]:
        return {"best_fitness": self.best_fitness, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_fitness = float(state.get("best_fitness", -math.inf))
        self.best_epoch = int(state.get("best_epoch", -1))


class CheckpointHook(Hook):
    """Write weights/last.pt every epoch (best.pt when best, epoch{N}.pt every ``save_period``), atomically;
    strip last.pt and best.pt once training ends normally (fp16 EMA weights, no resume state), as YOLOv5 does.

    ``static`` holds what does not change during training (model_yaml, names, hyp, opt).
    """

    name = "checkpoint"

    def __init__(self, weights_dir: Path, static: dict[str, Any], save_period: int = -1, nosave: bool = False):
        self.weights_dir, self.static = Path(weights_dir), static
        self.save_period, self.nosave = save_period, nosave

    def build(self, trainer: Trainer) -> dict[str, Any]:
        """The checkpoint dict (see utils/checkpoint.py for the keys)."""
        hook_states = {hook.name: hook.state_dict() for hook in trainer.hooks}
        model_state = {key: value.detach().float() if value.is_floating_point() else value.detach()
                       for key, value in trainer.unwrapped_model.state_dict().items()}
        ema = trainer.ema
        return {**self.static, **trainer.state_dict(), "model": model_state,
                "ema": ema.ema.state_dict() if ema is not None else None,
                "ema_updates": ema.updates if ema is not None else 0,
                "best_fitness": hook_states.get("best", {}).get("best_fitness"),
                "scheduler": hook_states.get("lr"), "hooks": hook_states}

    def after_epoch(self, trainer: Trainer) -> None:
        final_epoch = trainer.epoch + 1 == trainer.epochs or trainer.stop
        if self.nosave and not final_epoch:
            return
        # best.pt before last.pt: a kill in between resumes the epoch and may rewrite best.pt
        paths = [self.weights_dir / "best.pt"] if trainer.is_best else []
        paths.append(self.weights_dir / "last.pt")
        if self.save_period > 0 and (trainer.epoch + 1) % self.save_period == 0:
            paths.append(self.weights_dir / f"epoch{trainer.epoch}.pt")
        save_checkpoint(self.build(trainer), *paths)  # serialised once

    def after_train(self, trainer: Trainer) -> None:
        """A killed or failed run keeps its full last.pt for --resume; a finished one ships small files."""
        if not trainer.completed:
            return
        for name in ("last.pt", "best.pt"):
            if (self.weights_dir / name).is_file():
                strip_checkpoint_file(self.weights_dir / name)
