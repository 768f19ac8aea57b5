"""TrainOptions: the one frozen, validated object a training run is driven by, and train.py's flags.

Each field is declared once with its default and help (:func:`utils.options.option`); train.py's parser
is generated from it, so ``python train.py`` and ``train.run(**kwargs)`` train the same recipe. The box head's
flags (--box-loss, --cbbl-*) come from utils/head.py (HeadFlags, generated from HeadConfig). The --hyp
YAML, with those flags applied over its head: section, is merged here once; a bad value is an error at
construction, never halfway through training. ``to_dict()`` is what opt.yaml and checkpoints store.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch

from models.yolo import resolve_model_config
from utils.data.config import recommended_training
from utils.data.dataset import check_cache_mode
from utils.data.tiles import TileSettings
from utils.engine.optim import OPTIMIZERS, YOLOV5_NOMINAL_BATCH
from utils.files import REPO_ROOT, resolve_path
from utils.head import HEAD_FLAGS, HeadFlags
from utils.hyp import Hyp, load_hyp
from utils.options import build_parser as build_options_parser
from utils.options import option, parse_into

DEFAULT_CFG = "models/yolov5n.yaml"
DEFAULT_DATA = "data/synthetic.yaml"
# YOLOv5's default recipe (SGD); a dataset YAML may recommend another (the embedded demo's fast CPU recipe).
DEFAULT_HYP = "data/hyps/hyp.scratch-low.yaml"
RESUME_LATEST = "latest"  # --resume without a path: the newest last.pt under the project folder
DESCRIPTION = "Train a TPH-YOLOv5-style detector (regression or C-BBL box head)"


@dataclass(frozen=True)
class TrainOptions(HeadFlags):
    """Everything one run needs. ``hyp`` may be given as a YAML path, a dict or a Hyp; after construction it is
    the merged, validated :class:`Hyp` (the head flags inherited from HeadFlags and label_smoothing override
    single settings of it)."""

    weights: str = option("", "initial weights: a checkpoint ('' = from scratch)")
    cfg: str = option("", f"model YAML, bare names look in models/ (default {DEFAULT_CFG}, or the --weights "
                          "architecture)")
    data: str = option(DEFAULT_DATA, "dataset YAML, bare names look in data/")
    hyp: Union[Hyp, str, dict] = option("", f"hyperparameter YAML, bare names look in data/hyps/ (default: the "
                                            f"--data YAML's recommended hyp, else {DEFAULT_HYP} as YOLOv5)")
    epochs: int = option(30, "training epochs")
    batch_size: int = option(8, "total batch size over all processes", flags=("--batch",))
    imgsz: int = option(320, "train and val image size (pixels)", flags=("--img", "--img-size"))
    rect: bool = option(False, "rectangular training batches")
    resume: str = option("", "resume the latest run or a given last.pt", nargs="?", const=RESUME_LATEST)
    nosave: bool = option(False, "only save the final checkpoint")
    noval: bool = option(False, "only validate after the final epoch")
    noautoanchor: bool = option(False, "keep the YAML's anchors")
    noplots: bool = option(False, "save no plot files")
    evolve: int = option(0, "evolve hyperparameters for N generations", nargs="?", const=300)
    cache: Optional[str] = option(None, "cache decoded images in RAM", nargs="?", const="ram")
    image_weights: bool = option(False, "sample images by their class weights")
    device: str = option("", "cuda device, i.e. 0 or 0,1,2,3 or cpu")
    amp: bool = option(True, "mixed precision where an automatic check passes: fp16 on CUDA, bfloat16 on CPUs with "
                             "AMX/AVX512-BF16 (--no-amp: float32)")
    multi_scale: bool = option(False, "vary the image size +/- 50%%")
    single_cls: bool = option(False, "train multi-class data as one class")
    optimizer: Optional[str] = option(None, "YOLOv5's optimizer at the hyp's lr0 (default: the hyp file's "
                                            "'optimizer')", choices=OPTIMIZERS)
    adam: bool = option(False, "TPH-YOLOv5's Adam: lr 3e-4 for every parameter group, the hyp's lr0 unused")
    sync_bn: bool = option(False, "SyncBatchNorm in DDP mode")
    workers: int = option(2, "dataloader workers (per process)")
    project: str = option(str(REPO_ROOT / "runs" / "train"), "save to project/name")
    name: str = option("exp", "save to project/name")
    exist_ok: bool = option(False, "reuse project/name instead of incrementing it")
    quad: bool = option(False, "quad dataloader")
    cos_lr: bool = option(False, "cosine LR schedule (default: the hyp file's 'lr_schedule')")
    linear_lr: bool = option(False, "linear LR schedule (TPH-YOLOv5's flag)")
    patience: int = option(100, "early stopping patience (epochs without improvement)")
    freeze: tuple[int, ...] = option((0,), "freeze the first N layers, or layer indices 0 1 2")
    save_period: int = option(-1, "also save a checkpoint every N epochs (-1 = off)")
    seed: int = option(0, "global training seed")
    local_rank: int = option(-1, "set by torch.distributed launchers", flags=("--local_rank",))
    close_mosaic: int = option(0, "turn mosaic off for the last N epochs")
    nbs: Optional[int] = option(None, f"nominal batch: gradients accumulate to about this many images (default: the "
                                      f"--data YAML's recommended nbs, else YOLOv5's {YOLOV5_NOMINAL_BATCH}); 0 = "
                                      "auto: 64, lowered on tiny datasets to keep >= 12 steps/epoch (weight decay "
                                      "stays normalised to 64)")
    tile: int = option(0, "train on tiles of this many pixels cut from the frames at native resolution x "
                          "--tile-scale, each resized to --img (0 = whole frames; utils/data/tiles.py)")
    tile_overlap: float = option(0.25, "overlap ratio of neighbouring --tile windows")
    tile_scale: float = option(1.0, "frame scale the --tile windows are cut at (0.5: windows of 2x --tile "
                                      "frame pixels, halved)")
    # A single key of the hyp file (None = keep the file's value), like the inherited head flags.
    label_smoothing: Optional[float] = option(None, "class label smoothing epsilon")
    hyp_path: str = option("", "the resolved --hyp file ('' = none); set from hyp", cli=False)
    recommended: tuple[str, ...] = option((), "options taken from the --data YAML's recommendations", cli=False)

    def __post_init__(self) -> None:
        fix = object.__setattr__  # normalise inputs once; the object stays frozen afterwards
        if not self.resume and not self.cfg and not self.weights:
            fix(self, "cfg", DEFAULT_CFG)
        if self.cfg and not self.resume:
            fix(self, "cfg", str(resolve_model_config(self.cfg, "--cfg")))
        if self.weights and not self.resume:
            fix(self, "weights", str(resolve_path(self.weights, "--weights")))
        if not self.resume:
            self._apply_recommendations()
        if isinstance(self.hyp, (str, Path)):
            fix(self, "hyp_path", str(resolve_path(self.hyp, "--hyp", "data/hyps")) if str(self.hyp) else "")
        fix(self, "hyp", self._merged_hyp())
        fix(self, "freeze", tuple(int(index) for index in self.freeze))
        fix(self, "recommended", tuple(self.recommended))
        fix(self, "cache", self.cache or None)
        fix(self, "project", str(self.project))
        self._validate()

    def _apply_recommendations(self) -> None:
        """--hyp and --nbs when the command gives none: the --data YAML's ``recommended:`` values, else YOLOv5's."""
        fix, taken = object.__setattr__, list(self.recommended)
        recommended = recommended_training(self.data) if self.hyp == "" or self.nbs is None else {}
        if self.hyp == "":
            fix(self, "hyp", recommended.get("hyp", DEFAULT_HYP))
            taken += ["hyp"] if "hyp" in recommended else []
        if self.nbs is None:
            fix(self, "nbs", recommended.get("nbs", YOLOV5_NOMINAL_BATCH))
            taken += ["nbs"] if "nbs" in recommended else []
        fix(self, "recommended", tuple(taken))

    def _merged_hyp(self) -> Hyp:
        overrides = {name: getattr(self, name) for name in HYP_OVERRIDES}
        if isinstance(self.hyp, Hyp):
            return load_hyp(self.hyp.to_dict(), **overrides)
        return load_hyp(self.hyp_path or None if isinstance(self.hyp, (str, Path)) else self.hyp, **overrides)

    def _validate(self) -> None:
        if self.nbs is not None and self.nbs < 0:
            raise ValueError(f"--nbs must be >= 0 (0 = auto), got {self.nbs}")
        for name in ("epochs", "batch_size", "imgsz"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("workers", "patience", "close_mosaic", "evolve"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer {self.optimizer!r} is not one of {OPTIMIZERS}")
        if self.adam and self.optimizer not in (None, "Adam"):
            raise ValueError(f"--adam (TPH-YOLOv5's Adam at 3e-4) contradicts --optimizer {self.optimizer}; give one")
        if self.cos_lr and self.linear_lr:
            raise ValueError("--cos-lr and --linear-lr contradict each other; give one")
        if self.cache is not None:
            check_cache_mode(self.cache)
        if self.tile < 0:
            raise ValueError(f"--tile must be >= 0 (0 = whole frames), got {self.tile}")
        if self.tile:
            TileSettings(self.tile, self.tile_overlap, self.tile_scale)  # raises on a bad overlap or scale
            if self.rect:
                raise ValueError("--tile trains on square tiles with mosaic: drop --rect")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (hyp as the merged dict, tuples as lists) for opt.yaml and checkpoints."""
        values = {**dataclasses.asdict(self), "hyp": self.hyp.to_dict()}
        values["freeze"], values["recommended"] = list(self.freeze), list(self.recommended)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any], **changes: Any) -> TrainOptions:
        """Rebuild options stored by ``to_dict`` (e.g. from a checkpoint), with some values changed."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}")
        values = {"amp": torch.cuda.is_available(), **values}  # stored before --amp: mixed precision on CUDA only
        return cls(**{**values, **changes})


# The fields that override single keys of the --hyp file: label_smoothing and the head flags.
HYP_OVERRIDES = ("label_smoothing", *HEAD_FLAGS)


def build_parser() -> argparse.ArgumentParser:
    """train.py's parser, generated from TrainOptions (YOLOv5's flag names and spellings)."""
    return build_options_parser(TrainOptions, DESCRIPTION)


def parse_options(argv: Optional[Sequence[str]] = None) -> TrainOptions:
    """train.py's command line (``argv`` for tests; None = sys.argv) -> TrainOptions."""
    return parse_into(TrainOptions, argv, DESCRIPTION)
