"""TrainOptions: the one frozen, validated object a training run is driven by.

argparse (YOLOv5's flag names and meanings, plus --box-loss and the C-BBL knobs), the --hyp YAML
(with CLI overrides) and the --data YAML are merged here once; a bad value is an error at
construction, never halfway through training. ``asdict(opts)`` is what checkpoints store.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from utils.engine.optim import OPTIMIZERS
from utils.files import REPO_ROOT
from utils.head import GRID_MODES
from utils.hyp import BOX_LOSSES, UM_MODES, Hyp, load_hyp

DEFAULT_CFG = "models/yolov5n.yaml"
DEFAULT_DATA = "data/synthetic.yaml"
DEFAULT_HYP = "data/hyps/hyp.VisDrone.yaml"  # the project's (Adam) recipe; pass --hyp '' for built-in YOLOv5 values
RESUME_LATEST = "latest"  # --resume without a path: the newest last.pt under the project folder
CACHE_MODES = ("ram",)  # the dataset never writes caches into the data folders
# CLI flag -> Hyp field, applied over the --hyp file when given.
HYP_OVERRIDES = ("box_loss", "label_smoothing", "cbbl_bins", "cbbl_alpha", "cbbl_beta", "cbbl_um",
                 "cbbl_um_mode", "cbbl_grid", "cbbl_restore", "cbbl_space", "cbbl_ciou")


@dataclass(frozen=True)
class TrainOptions:
    """Everything one run needs; ``hyp`` is the merged, validated hyperparameter set."""

    weights: str = ""
    cfg: str = DEFAULT_CFG
    data: str = DEFAULT_DATA
    hyp_path: str = ""  # "" = built-in Hyp() values; the CLI defaults to DEFAULT_HYP
    hyp: Hyp = field(default_factory=Hyp)
    epochs: int = 30
    batch_size: int = 8
    imgsz: int = 320
    rect: bool = False
    resume: str = ""
    nosave: bool = False
    noval: bool = False
    noautoanchor: bool = False
    noplots: bool = False
    evolve: int = 0
    cache: Optional[str] = None
    image_weights: bool = False
    device: str = ""
    multi_scale: bool = False
    single_cls: bool = False
    optimizer: str = "AdamW"
    sync_bn: bool = False
    workers: int = 2
    project: str = "runs/train"
    name: str = "exp"
    exist_ok: bool = False
    quad: bool = False
    cos_lr: bool = False
    patience: int = 100
    freeze: tuple[int, ...] = (0,)
    save_period: int = -1
    seed: int = 0
    local_rank: int = -1
    close_mosaic: int = 0
    nbs: int = 0

    def __post_init__(self) -> None:
        if self.nbs < 0:
            raise ValueError(f"--nbs must be >= 0 (0 = auto), got {self.nbs}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "imgsz": self.imgsz}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.workers < 0 or self.patience < 0 or self.close_mosaic < 0 or self.evolve < 0:
            raise ValueError(f"--workers/--patience/--close-mosaic/--evolve must be >= 0, got {self.workers}, "
                             f"{self.patience}, {self.close_mosaic}, {self.evolve}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer {self.optimizer!r} is not one of {OPTIMIZERS}")
        if self.cache is not None and self.cache not in CACHE_MODES:
            raise ValueError(f"--cache {self.cache!r} is not one of {CACHE_MODES}")
        if not self.resume and not self.cfg and not self.weights:
            raise ValueError("give a model: --cfg models/*.yaml and/or --weights some.pt")
        for flag, path in (("--cfg", self.cfg), ("--weights", self.weights)):
            if path and not self.resume and not Path(path).is_file():
                raise FileNotFoundError(f"{flag} {path} not found")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (nested hyp as a dict, tuples as lists) for opt.yaml and checkpoints."""
        values = dataclasses.asdict(self)
        values["freeze"] = list(self.freeze)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any], **changes: Any) -> TrainOptions:
        """Rebuild options stored by ``to_dict`` (e.g. from a checkpoint), with some values changed."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}")
        merged = {**values, **changes}
        if isinstance(merged.get("hyp"), dict):
            merged["hyp"] = load_hyp(merged["hyp"])
        merged["freeze"] = tuple(merged.get("freeze", (0,)))
        return cls(**merged)


def build_parser() -> argparse.ArgumentParser:
    """The train.py argument parser (YOLOv5 names; defaults make ``python train.py`` a short CPU run)."""
    parser = argparse.ArgumentParser(description="Train a TPH-YOLOv5-style detector (regression or C-BBL box head)")
    add = parser.add_argument
    add("--weights", default="", help="initial weights: a checkpoint of this project ('' = from scratch)")
    add("--cfg", default="", help=f"model YAML (default {DEFAULT_CFG}, or the --weights architecture)")
    add("--data", default=DEFAULT_DATA, help="dataset YAML")
    add("--hyp", default=DEFAULT_HYP, help="hyperparameter YAML ('' = built-in YOLOv5 scratch values)")
    add("--epochs", type=int, default=30)
    add("--batch-size", "--batch", type=int, default=8, help="total batch size over all processes")
    add("--imgsz", "--img", "--img-size", type=int, default=320, help="train and val image size (pixels)")
    add("--rect", action="store_true", help="rectangular training batches")
    add("--resume", nargs="?", const=RESUME_LATEST, default="", help="resume the latest run or a given last.pt")
    add("--nosave", action="store_true", help="only save the final checkpoint")
    add("--noval", action="store_true", help="only validate after the final epoch")
    add("--noautoanchor", action="store_true", help="keep the YAML's anchors")
    add("--noplots", action="store_true", help="save no plot files")
    add("--evolve", type=int, nargs="?", const=300, default=0, help="evolve hyperparameters for N generations")
    add("--cache", nargs="?", const="ram", default=None, help="cache decoded images in RAM")
    add("--image-weights", action="store_true", help="sample images by their class weights")
    add("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    add("--multi-scale", action="store_true", help="vary the image size +/- 50%%")
    add("--single-cls", action="store_true", help="train multi-class data as one class")
    add("--optimizer", choices=OPTIMIZERS, default="AdamW", help="YOLOv5 default: SGD")
    add("--adam", action="store_true", help="alias of --optimizer Adam (lr0 still comes from the hyp file)")
    add("--sync-bn", action="store_true", help="SyncBatchNorm in DDP mode")
    add("--workers", type=int, default=2, help="dataloader workers (per process)")
    add("--project", default="runs/train")
    add("--name", default="exp")
    add("--exist-ok", action="store_true", help="reuse project/name instead of incrementing it")
    add("--quad", action="store_true", help="quad dataloader")
    add("--cos-lr", action="store_true", help="cosine LR schedule")
    add("--patience", type=int, default=100, help="early stopping patience (epochs without improvement)")
    add("--freeze", nargs="+", type=int, default=[0], help="freeze the first N layers, or layer indices 0 1 2")
    add("--save-period", type=int, default=-1, help="also save a checkpoint every N epochs (-1 = off)")
    add("--seed", type=int, default=0)
    add("--local_rank", "--local-rank", type=int, default=-1, help="set by torch.distributed launchers")
    add("--close-mosaic", type=int, default=0, help="turn mosaic off for the last N epochs")
    add("--nbs", type=int, default=0, help="nominal batch: gradients accumulate to about this many images; "
        "0 = auto: YOLOv5's 64, lowered on tiny datasets to keep >= 12 steps/epoch (weight decay stays "
        "normalised to 64 images either way)")
    _add_hyp_overrides(parser)
    return parser


def _add_hyp_overrides(parser: argparse.ArgumentParser) -> None:
    """Flags that override single keys of the --hyp file (None = keep the file's value)."""
    add = parser.add_argument
    add("--box-loss", choices=BOX_LOSSES, default=None, help="box loss (cbbl = C-BBL head)")
    add("--label-smoothing", type=float, default=None)
    add("--cbbl-bins", type=int, default=None, help="C-BBL grid points per coordinate (K)")
    add("--cbbl-alpha", type=float, default=None, help="C-BBL offset range [-alpha, alpha]")
    add("--cbbl-beta", type=float, default=None, help="C-BBL IN strength of --cbbl-grid in (default by --img)")
    add("--cbbl-um", type=float, default=None, help="weight of the uncertainty-matching loss (0 = off)")
    add("--cbbl-um-mode", choices=UM_MODES, default=None)
    add("--cbbl-grid", choices=GRID_MODES, default=None, help="C-BBL grid: in (paper, with --cbbl-beta), auto "
        "(IN family fitted to the training targets), quantile (equal target mass), uniform")
    add("--cbbl-restore", choices=("expectation", "top2"), default=None)
    add("--cbbl-space", choices=("logit", "linear"), default=None)
    add("--cbbl-ciou", type=float, default=None, help="weight of an extra CIoU term on C-BBL boxes")


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    """Merge parsed flags and the --hyp file (flag overrides win) into validated TrainOptions."""
    values = {key: value for key, value in vars(args).items() if key not in HYP_OVERRIDES}
    hyp_path = values.pop("hyp")
    if values.pop("adam"):
        values["optimizer"] = "Adam"
    if hyp_path and not Path(hyp_path).is_file():
        in_repo = REPO_ROOT / hyp_path  # so the default works from any working directory
        if not in_repo.is_file():
            raise FileNotFoundError(f"--hyp {hyp_path} not found")
        hyp_path = str(in_repo)
    overrides = {key: getattr(args, key) for key in HYP_OVERRIDES}
    hyp = load_hyp(hyp_path or None, **overrides)
    if not values["cfg"] and not values["weights"]:
        values["cfg"] = DEFAULT_CFG
    values["freeze"] = tuple(values["freeze"])
    values["cache"] = values["cache"] or None
    return TrainOptions(hyp_path=hyp_path, hyp=hyp, **values)


def parse_options(argv: Optional[Sequence[str]] = None) -> TrainOptions:
    """train.py's command line (``argv`` for tests; None = sys.argv) -> TrainOptions."""
    return options_from_args(build_parser().parse_args(argv))
