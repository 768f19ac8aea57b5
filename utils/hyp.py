"""Training hyperparameters: one frozen, validated dataclass read from data/hyps/*.yaml.

YOLOv5's keys keep their names and meanings; C-BBL and augmentation-survival keys are ours.
An unknown key or an out-of-range value is an error at load time, never later.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from utils.boxes import OFFSET_SPACES
from utils.cbbl.distribution import UM_MODES
from utils.cbbl.grid import RESTORE_MODES
from utils.files import load_yaml_file
from utils.head import BOX_LOSSES, GRID_MODES

OPTIMIZERS = ("SGD", "Adam", "AdamW")
LR_SCHEDULES = ("linear", "cosine")
# Keys of YOLOv5/TPH-YOLOv5 hyp files that no code of theirs reads any more (v5+ assigns by anchor_t alone):
# accepted so their files load unchanged, and dropped.
UNUSED_YOLOV5_KEYS = ("iou_t",)


@dataclass(frozen=True)
class Hyp:
    """All hyperparameters of one training run (defaults = data/hyps/hyp.scratch-low.yaml, YOLOv5 v7.0)."""

    # optimisation: ``optimizer`` and ``lr_schedule`` name the recipe lr0..warmup_bias_lr were tuned for;
    # they apply when train.py gets no --optimizer/--adam and no --cos-lr/--linear-lr
    optimizer: str = "SGD"
    lr_schedule: str = "linear"
    lr0: float = 0.01  # initial learning rate (used by --optimizer X; TPH-YOLOv5's --adam ignores it)
    lrf: float = 0.01  # final learning rate = lr0 * lrf
    momentum: float = 0.937  # SGD momentum / Adam beta1
    weight_decay: float = 0.0005
    warmup_epochs: float = 3.0
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    # loss gains and assignment
    box: float = 0.05
    cls: float = 0.5
    cls_pw: float = 1.0  # positive weight of the class BCE
    obj: float = 1.0
    obj_pw: float = 1.0
    anchor_t: float = 4.0  # max size ratio between a ground truth and an anchor it is assigned to
    fl_gamma: float = 0.0  # focal loss gamma (0 = plain BCE)
    label_smoothing: float = 0.0
    # box branch
    box_loss: str = "ciou"
    cbbl_bins: int = 11
    cbbl_alpha: float = 4.0
    cbbl_beta: Optional[float] = None  # grid 'in': None = by training size (5 below 1024 px, 3 at/above)
    cbbl_grid: str = "auto"  # in (paper) | auto (IN family fitted to the data) | quantile | uniform
    cbbl_um: float = 1.0  # weight of the uncertainty loss (0 = off)
    cbbl_um_mode: str = "abs"
    cbbl_restore: str = "expectation"
    cbbl_space: str = "logit"
    cbbl_ciou: float = 0.0  # extra CIoU term on C-BBL's decoded boxes (0 = off)
    # augmentation
    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    degrees: float = 0.0
    translate: float = 0.1
    scale: float = 0.5
    shear: float = 0.0
    perspective: float = 0.0
    flipud: float = 0.0
    fliplr: float = 0.5
    mosaic: float = 1.0
    mixup: float = 0.0
    copy_paste: float = 0.0
    # what survives an augmentation: tiny drone objects are legitimate, so these are small
    box_min_px: float = 1.5  # min width and height in pixels after the transform
    box_min_area_frac: float = 0.1  # min area kept relative to the box before the transform (cut-off boxes)
    box_max_aspect: float = 50.0  # max aspect ratio
    anchors: Optional[float] = None  # YOLOv5's optional anchors-per-level override

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, _typed_value(field.name, getattr(self, field.name), field.type))
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_choice("box_loss", self.box_loss, BOX_LOSSES)
        _check_choice("cbbl_um_mode", self.cbbl_um_mode, UM_MODES)
        _check_choice("cbbl_restore", self.cbbl_restore, RESTORE_MODES)
        _check_choice("cbbl_space", self.cbbl_space, OFFSET_SPACES)
        _check_choice("cbbl_grid", self.cbbl_grid, GRID_MODES)
        if self.cbbl_bins < 2 or self.cbbl_alpha <= 0 or (self.cbbl_beta is not None and self.cbbl_beta < 0):
            raise ValueError(f"C-BBL needs bins >= 2, alpha > 0, beta >= 0; got {self.cbbl_bins}, "
                             f"{self.cbbl_alpha}, {self.cbbl_beta}")
        if self.anchor_t <= 1:
            raise ValueError(f"anchor_t must be > 1, got {self.anchor_t}")
        for name in ("lr0", "box", "cls", "obj", "cbbl_um", "cbbl_ciou", "fl_gamma", "box_min_px"):
            if getattr(self, name) < 0:
                raise ValueError(f"hyperparameter {name} must be >= 0, got {getattr(self, name)}")
        for name in ("label_smoothing", "flipud", "fliplr", "mosaic", "mixup", "copy_paste", "box_min_area_frac"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"hyperparameter {name} must lie in [0, 1], got {getattr(self, name)}")

    @property
    def is_cbbl(self) -> bool:
        return self.box_loss == "cbbl"

    def replace(self, **changes: Any) -> Hyp:
        """A copy with some values changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _typed_value(name: str, value: Any, annotation: str) -> Any:
    """``value`` as the field's type: a number must be finite (NaN or inf would train to NaN weights), a numeric
    string such as YAML's ``1e-3`` (a string in YAML 1.1) becomes a float; anything else is a ValueError."""
    if value is None and annotation.startswith("Optional"):
        return None
    if annotation == "str":
        if not isinstance(value, str):
            raise ValueError(f"hyperparameter {name} must be a name (text), got {value!r}")
        return value
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"hyperparameter {name} must be a number, got {value!r}") from None
    if isinstance(number, bool) or not isinstance(number, numbers.Real):
        raise ValueError(f"hyperparameter {name} must be a number, got {value!r}")
    if not math.isfinite(number):
        raise ValueError(f"hyperparameter {name} must be a finite number, got {value!r}")
    if annotation == "int":
        if number != int(number):
            raise ValueError(f"hyperparameter {name} must be a whole number, got {value!r}")
        return int(number)
    return float(number)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"hyperparameter {name}={value!r} is not one of {choices}")


def load_hyp(source: Union[str, Path, dict, None] = None, **overrides: Any) -> Hyp:
    """A Hyp from a YAML file or dict (missing keys take defaults), then keyword overrides (None skipped).

    Raises ValueError naming the file and the key that Hyp does not know or whose value is wrong (not a
    number, NaN or inf, out of range).
    """
    values: dict[str, Any] = {}
    origin = "hyperparameters"
    if isinstance(source, (str, Path)):
        origin = str(source)
        values = load_yaml_file(source) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{origin}: expected a mapping of hyperparameters, got {type(values).__name__}")
    elif isinstance(source, dict):
        values = dict(source)
    values = {key: value for key, value in values.items() if key not in UNUSED_YOLOV5_KEYS}
    _map_legacy_keys(values)
    known = {field.name for field in dataclasses.fields(Hyp)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{origin}: unknown hyperparameter(s) {unknown}; known keys are {sorted(known)}")
    values.update({key: value for key, value in overrides.items() if value is not None})
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown hyperparameter override(s) {unknown}")
    try:
        return Hyp(**values)
    except ValueError as error:
        raise ValueError(f"{origin}: {error}") from None


def _map_legacy_keys(values: dict[str, Any]) -> None:
    """Older files' ``cbbl_in`` -> ``cbbl_grid``: true = the paper's 'in', false = its uniform row ('in', beta 0)."""
    if "cbbl_in" not in values:
        return
    if not values.pop("cbbl_in"):
        values["cbbl_beta"] = 0.0
    values.setdefault("cbbl_grid", "in")
