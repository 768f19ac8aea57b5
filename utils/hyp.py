"""Training hyperparameters: one frozen, validated dataclass read from data/hyps/*.yaml.

YOLOv5's keys keep their names and meanings; the box head's settings are one ``head:`` section, declared and
validated by utils/head.py's HeadConfig; augmentation-survival keys are ours. Older files' flat head keys
(``box_loss``, ``cbbl_bins``, ...) are still read, with one log line saying how to update the file.
An unknown key or an out-of-range value is an error at load time, never later.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from utils.files import load_yaml_file
from utils.head import HEAD_FLAGS, HEAD_SETTINGS, HeadConfig

logger = logging.getLogger(__name__)

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
    anchor_t: float = HeadConfig.anchor_t  # max size ratio between a ground truth and an anchor it is assigned to
    fl_gamma: float = 0.0  # focal loss gamma (0 = plain BCE)
    label_smoothing: float = 0.0
    # the box head: the file's head: section (settings, defaults and checks: utils/head.py HeadConfig)
    head: HeadConfig = dataclasses.field(default_factory=HeadConfig)
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
            if field.name != "head":
                object.__setattr__(self, field.name, _typed_value(field.name, getattr(self, field.name), field.type))
        object.__setattr__(self, "head", _head_section(self.head, self.anchor_t))
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        for name in ("lr0", "box", "cls", "obj", "fl_gamma", "box_min_px"):
            if getattr(self, name) < 0:
                raise ValueError(f"hyperparameter {name} must be >= 0, got {getattr(self, name)}")
        for name in ("label_smoothing", "flipud", "fliplr", "mosaic", "mixup", "copy_paste", "box_min_area_frac"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"hyperparameter {name} must lie in [0, 1], got {getattr(self, name)}")

    def replace(self, **changes: Any) -> Hyp:
        """A copy with some values changed (hyp keys or head flag keys such as ``cbbl_um``), validated again."""
        return load_hyp(self.to_dict(), **changes)

    def value(self, key: str) -> Any:
        """A value by its hyp key or head flag key (``cbbl_um`` is ``head.um``), as --evolve's search space names
        them."""
        return getattr(self.head, HEAD_FLAGS[key]) if key in HEAD_FLAGS else getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as a hyp file spells it (the head's settings as the ``head:`` section)."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return {**values, "head": self.head.settings()}


def _head_section(section: Any, anchor_t: float) -> HeadConfig:
    """The HeadConfig of a ``head:`` section (a mapping of settings, or a HeadConfig whose settings are taken), its
    values typed as the hyp file's other keys are."""
    types = {field.name: field.type for field in dataclasses.fields(HeadConfig) if field.name in HEAD_SETTINGS}
    typed = {key: _typed_value(f"head.{key}", value, types[key]) if key in types else value
             for key, value in _head_settings(section, "hyperparameter head").items()}
    return HeadConfig.from_settings(typed, anchor_t)


def _head_settings(section: Any, name: str) -> dict[str, Any]:
    """A ``head:`` section as a new dict of settings (a HeadConfig gives its settings); ``name`` names it in the
    error when it is no mapping."""
    if isinstance(section, HeadConfig):
        return section.settings()
    if not isinstance(section, dict):
        raise ValueError(f"{name} must be a mapping of head settings, got {section!r}")
    return dict(section)


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
    """A Hyp from a YAML file or dict (missing keys take defaults), then keyword overrides (None skipped): hyp keys
    or head flag keys (``box_loss``, ``cbbl_bins``, ... as train.py's flags name them).

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
    values["head"] = _flat_head_keys_moved(values, origin)
    known = {field.name for field in dataclasses.fields(Hyp)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{origin}: unknown hyperparameter(s) {unknown}; known keys are {sorted(known)}")
    overrides = {key: value for key, value in overrides.items() if value is not None}
    unknown = sorted(set(overrides) - known - set(HEAD_FLAGS))
    if unknown:
        raise ValueError(f"unknown hyperparameter override(s) {unknown}")
    values["head"].update({HEAD_FLAGS[key]: value for key, value in overrides.items() if key in HEAD_FLAGS})
    values.update({key: value for key, value in overrides.items() if key not in HEAD_FLAGS})
    try:
        return Hyp(**values)
    except ValueError as error:
        raise ValueError(f"{origin}: {error}") from None


def _flat_head_keys_moved(values: dict[str, Any], origin: str) -> dict[str, Any]:
    """The ``head:`` section with older files' flat keys (``box_loss``, ``cbbl_bins``, ...; ``cbbl_in``: true =
    the paper's grid 'in', false = its uniform row, 'in' with beta 0) moved into it, popped from ``values``;
    one log line says how to update the file."""
    section = _head_settings(values.pop("head", None) or {}, f"{origin}: head")
    flat = [key for key in values if key in HEAD_FLAGS or key == "cbbl_in"]
    if not flat:
        return section
    logger.warning("%s: flat head keys %s are the older form of this file: move them into its 'head:' section "
                   "without the cbbl_ prefix (e.g. head: {box_loss: cbbl, bins: 11}; cbbl_in: true is grid: in)",
                   origin, flat)
    if "cbbl_in" in values:
        if not values.pop("cbbl_in"):
            values["cbbl_beta"] = 0.0
        values.setdefault("cbbl_grid", "in")
    moved = {HEAD_FLAGS[key]: values.pop(key) for key in list(values) if key in HEAD_FLAGS}
    both = sorted(set(moved) & set(section))
    if both:
        raise ValueError(f"{origin}: head setting(s) {both} given both as flat keys and in 'head:'; keep 'head:'")
    return {**section, **moved}
