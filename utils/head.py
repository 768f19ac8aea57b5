"""HeadConfig: the one declaration of the box head, shared by the head, the loss, val, detect and export.

Each setting is declared once, as a field with its default and help: train.py's and models/yolo.py's flags
(:data:`HeadFlags`, ``--box-loss``, ``--cbbl-bins``, ...) and the hyp file's ``head:`` section (utils.hyp.Hyp.head)
are generated from and validated by it. Built once per training run (:meth:`HeadConfig.from_hyp`, with the size
training actually uses), stored as plain data in the checkpoint (``model_yaml['detect']``) and read back by
:meth:`HeadConfig.from_dict`, the one place where older checkpoints' keys are mapped. Each setting has one name
everywhere (``box_loss``, ``bins``, ``alpha``, ``beta``, ``grid``, ...); ``box_mode`` is derived from ``box_loss``.

C-BBL grids: one grid per coordinate group, centre (x, y) and size (w, h), placed by the ``grid`` mode
(utils/cbbl/modes.py). ``auto`` and ``quantile`` points are fitted at training start (utils/engine/grid_fit.py)
and stored here, so every later decode uses the same points.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import torch

from utils.box_terms import BOX_LOSSES
from utils.boxes import OFFSET_SPACES
from utils.cbbl.distribution import SCORE_MODES, UM_MODES
from utils.cbbl.grid import RESTORE_MODES, BoxGrids, CBBLGrid, check_points
from utils.cbbl.modes import FITTED_GRIDS, GRID_MODE_TABLE, GRID_MODES, FittedGridMode, GridMode, GridRanges
from utils.options import option, override_fields

# Paper section 4.4: the IN strength by training size (only for grid 'in' without an explicit beta).
PAPER_BETA_BELOW, PAPER_BETA_AT_OR_ABOVE, PAPER_BETA_SIZE = 5.0, 3.0, 1024
# Keys older checkpoints stored in model_yaml['detect'], mapped by from_dict; a stored C-BBL head without a
# grid mode predates the modes and was decoded with the paper's grid.
_LEGACY_BOX = {"regress": "ciou", "cbbl": "cbbl"}
_LEGACY_GRID = "in"


class DetectOutput(NamedTuple):
    """What the Detect head (models/detect.py), and so a Model, returns in training and in eval.

    pred: (B, N, 5 + nc + num_extra) decoded ``cx, cy, w, h`` (network-input pixels), sigmoid objectness and
        classes, and in C-BBL mode the mean entropy of the 4 box distributions; None in training mode.
    raw: per level (B, A, H, W, box_channels + 1 + nc) raw outputs, what the loss reads; None when a C-BBL head
        decoded sparsely (inference with ``decode_conf`` set computes box channels for a few anchors only).
    Unpacks as ``pred, raw = model(images)``.
    """

    pred: Optional[torch.Tensor]
    raw: Optional[list[torch.Tensor]]


def paper_beta(imgsz: int) -> float:
    """Paper section 4.4: beta = 5 below 1024 px training size, 3 at and above. ``imgsz``: the size training
    uses (rounded up to the stride), not the raw --img."""
    return PAPER_BETA_BELOW if imgsz < PAPER_BETA_SIZE else PAPER_BETA_AT_OR_ABOVE


@dataclass(frozen=True)
class HeadConfig:
    """The box head's settings, validated at construction; ``to_dict``/``from_dict`` round-trip exactly.

    ``centre_points``/``size_points`` are the C-BBL grids (empty for regression). For ``in`` and ``uniform``
    they follow from the other settings when not given; ``auto``/``quantile`` start from the paper's grid
    until :func:`fit_head_grid` (called by utils/engine/grid_fit.py) replaces them with fitted points.
    """

    box_loss: str = option("ciou", "box loss: ciou, l1, smooth_l1 (regression head) or cbbl (C-BBL head)",
                           choices=BOX_LOSSES)
    bins: int = option(11, "C-BBL grid points per coordinate (K)")
    alpha: float = option(4.0, "C-BBL offset range [-alpha, alpha]")
    beta: Optional[float] = option(None, f"C-BBL IN strength of grid in (default by the training size: "
                                         f"{PAPER_BETA_BELOW:g} below {PAPER_BETA_SIZE} px, "
                                         f"{PAPER_BETA_AT_OR_ABOVE:g} at and above); fitted (centre) for grid auto")
    size_beta: Optional[float] = option(None, "grid auto only: the IN strength fitted for the size grid", cli=False)
    grid: str = option("auto", "C-BBL grid: in (the paper, with beta), auto (IN family fitted to the training "
                               "targets), quantile (equal target mass), uniform", choices=GRID_MODES)
    space: str = option("logit", "offset space of the grid: logit (YOLOv5's decode) or linear",
                        choices=OFFSET_SPACES)
    restore: str = option("expectation", "box from the distribution", choices=RESTORE_MODES)
    anchor_t: float = option(4.0, "the assignment's size-ratio bound, the size grid's reachable range (the hyp "
                                  "file's top-level anchor_t)", cli=False)
    um: float = option(1.0, "weight of the uncertainty-matching loss (0 = off)")
    um_mode: str = option("abs", "uncertainty-matching target", choices=UM_MODES)
    ciou: float = option(1.0, "weight of the CIoU term on C-BBL's decoded boxes (0 = off, the paper's loss; 1 wins on "
                              "real VisDrone frames, docs/benchmarks.md 0b)")
    score: str = option("cls", "C-BBL detection score: cls (objectness x class, YOLOv5's) or quality (times an IoU "
                               "estimate a small branch reads from the distributions' top-k, GFLv2's DGQP)",
                        choices=SCORE_MODES)
    centre_points: tuple[float, ...] = option((), "(K,) grid of x and y", cli=False)
    size_points: tuple[float, ...] = option((), "(K,) grid of w and h", cli=False)

    def __post_init__(self) -> None:
        for name, value, choices in (("box_loss", self.box_loss, BOX_LOSSES), ("grid", self.grid, GRID_MODES),
                                     ("space", self.space, OFFSET_SPACES), ("restore", self.restore, RESTORE_MODES),
                                     ("um_mode", self.um_mode, UM_MODES), ("score", self.score, SCORE_MODES)):
            if value not in choices:
                raise ValueError(f"head setting {name}={value!r} is not one of {choices}")
        if self.bins < 2 or self.alpha <= 0 or (self.beta is not None and self.beta < 0):
            raise ValueError(f"C-BBL needs bins >= 2, alpha > 0, beta >= 0; got {self.bins}, {self.alpha}, {self.beta}")
        if self.anchor_t <= 1 or self.um < 0 or self.ciou < 0:
            raise ValueError(f"head needs anchor_t > 1, um >= 0, ciou >= 0; got {self.anchor_t}, {self.um}, "
                             f"{self.ciou}")
        if not self.is_cbbl and self.space != "logit":
            raise ValueError(f"regression always decodes in the 'logit' space, got space={self.space!r}")
        if not self.is_cbbl and self.score != "cls":
            raise ValueError(f"score={self.score!r} reads the C-BBL distributions: it needs box_loss cbbl")
        if not self.is_cbbl:
            return
        if not self.centre_points or not self.size_points:
            centre, size = self._default_points()
            object.__setattr__(self, "centre_points", self.centre_points or centre)
            object.__setattr__(self, "size_points", self.size_points or size)
        for name in ("centre_points", "size_points"):
            points = check_points(torch.tensor(getattr(self, name), device="cpu"), f"head {name}")
            if len(points) != self.bins:
                raise ValueError(f"head {name} has {len(points)} values, expected bins={self.bins}")
            object.__setattr__(self, name, tuple(float(p) for p in points))

    @property
    def is_cbbl(self) -> bool:
        return self.box_loss == "cbbl"

    @property
    def box_mode(self) -> str:
        """The head's output form, derived from ``box_loss``: 'cbbl' (4*K logits) or 'regress' (4 offsets)."""
        return "cbbl" if self.is_cbbl else "regress"

    @property
    def resolved_beta(self) -> float:
        """The IN strength the settings give: ``beta``, or the paper's 5 when none was given or derived (grid 'in',
        and 'auto'/'quantile' before their fit)."""
        return PAPER_BETA_BELOW if self.beta is None else float(self.beta)

    @property
    def grid_mode(self) -> GridMode:
        """The object that places this head's grid points (utils/cbbl/modes.py)."""
        return GRID_MODE_TABLE[self.grid]

    @property
    def group_betas(self) -> tuple[Optional[float], Optional[float]]:
        """The IN strength of the (centre, size) grids: both ``beta`` for 'in', the fitted pair for 'auto',
        None for grids outside the IN family ('quantile') and for 'uniform' (0 in effect); see the grid mode."""
        return self.grid_mode.group_betas(self.resolved_beta, self.size_beta)

    @property
    def grid_ranges(self) -> GridRanges:
        """The offset range [low, high] the centre and size grids span (see the grid mode)."""
        return self.grid_mode.ranges(self.alpha, self.anchor_t, self.space)

    def _default_points(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Points that follow from the settings alone ('auto'/'quantile' before their fit: the IN family
        with the paper's beta on each group's range)."""
        centre, size, _, _ = self.grid_mode.points(self.grid_ranges, self.bins, self.resolved_beta)
        return centre, size

    def box_grids(self) -> Optional[BoxGrids]:
        """The centre and size grids the head decodes and the loss encodes with (None for regression)."""
        if not self.is_cbbl:
            return None
        return BoxGrids(CBBLGrid(torch.tensor(self.centre_points, device="cpu")),
                        CBBLGrid(torch.tensor(self.size_points, device="cpu")))

    @classmethod
    def from_hyp(cls, hyp: Any, imgsz: int) -> HeadConfig:
        """The head a training run uses: ``hyp.head`` (utils.hyp.Hyp, the file's ``head:`` section) at the training
        size ROUNDED TO THE STRIDE (the only place where beta-by-size is derived: --img 1000 trains at 1024,
        so beta 3)."""
        head = hyp.head
        if head.beta is None and head.grid == "in":
            return cls.from_settings({**head.settings(), "beta": paper_beta(imgsz)}, head.anchor_t)
        return head

    @classmethod
    def from_settings(cls, settings: dict[str, Any], anchor_t: float) -> HeadConfig:
        """The head a hyp file's ``head:`` section describes (keys: HEAD_SETTINGS, the rest default) with the
        file's anchor_t. The offset space is a C-BBL setting: a regression head always decodes in 'logit'."""
        unknown = sorted(set(settings) - set(HEAD_SETTINGS))
        if unknown:
            raise ValueError(f"unknown head setting(s) {unknown}; known: {list(HEAD_SETTINGS)}")
        values = {**settings, "anchor_t": anchor_t}
        if values.get("box_loss", cls.box_loss) != "cbbl":
            values["space"] = "logit"
        return cls(**values)

    @classmethod
    def from_dict(cls, values: Optional[dict[str, Any]], **overrides: Any) -> HeadConfig:
        """A config from plain data (``to_dict``, a model YAML's ``detect:``) with ``overrides`` (None skipped)
        on top; overrides in the older form (with ``box:``) are read as that form."""
        values = _current_form(values or {})
        changes = {key: value for key, value in overrides.items() if value is not None}
        values.update(_current_form(changes) if "box" in changes else changes)
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown Detect head setting(s) {unknown}; known: {sorted(known)}")
        values = {key: value for key, value in values.items() if value is not None or key.endswith("beta")}
        for name in ("centre_points", "size_points"):
            values[name] = tuple(values.get(name) or ())
        return cls(**values)

    def settings(self) -> dict[str, Any]:
        """The settings a hyp file's ``head:`` section holds (HEAD_SETTINGS), as plain data."""
        return {name: getattr(self, name) for name in HEAD_SETTINGS}

    def replace(self, **changes: Any) -> HeadConfig:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples) for model_yaml['detect'] and the checkpoint."""
        values = dataclasses.asdict(self)
        values["centre_points"], values["size_points"] = list(self.centre_points), list(self.size_points)
        return values


# What a hyp file's head: section and train.py's flags set; the rest is derived (anchor_t: the hyp's top-level
# key) or fitted (points, size_beta).
HEAD_SETTINGS = tuple(field.name for field in dataclasses.fields(HeadConfig) if field.metadata["cli"])


def flag_key(setting: str) -> str:
    """A head setting's train.py flag name and older hyp files' flat key: ``box_loss`` as is, the C-BBL settings
    with the ``cbbl_`` prefix (``bins`` -> ``--cbbl-bins``, ``cbbl_bins``)."""
    return setting if setting == "box_loss" else f"cbbl_{setting}"


HEAD_FLAGS = {flag_key(setting): setting for setting in HEAD_SETTINGS}  # flag key -> setting
# train.py's and models/yolo.py's head flags (--box-loss, --cbbl-bins, ...), generated from HeadConfig's fields;
# each is None unless given (= keep the --hyp file's or the model YAML's value).
HeadFlags = dataclasses.make_dataclass(
    "HeadFlags", override_fields(HeadConfig, {setting: key for key, setting in HEAD_FLAGS.items()},
                                 "box head (unset: the --hyp file's head: or the model YAML's detect: value; "
                                 "defaults: utils/head.py)"),
    frozen=True)
HeadFlags.__module__ = __name__  # pickled (e.g. with TrainOptions) by this name


def head_overrides(flags: Any) -> dict[str, Any]:
    """The head settings a HeadFlags instance (or subclass, e.g. TrainOptions) gives, by setting name."""
    return {setting: getattr(flags, key) for key, setting in HEAD_FLAGS.items() if getattr(flags, key) is not None}


def _current_form(values: dict[str, Any]) -> dict[str, Any]:
    """The one place where older checkpoints' head dicts are mapped: ``box: regress|cbbl`` (from before grids had
    modes) is ``box_loss``, and a stored C-BBL head without ``grid`` was decoded with the paper's 'in'."""
    values = dict(values)
    if "box" in values:
        box = values.pop("box")
        if box not in _LEGACY_BOX:
            raise ValueError(f"Detect head box={box!r} is not one of {tuple(_LEGACY_BOX)}")
        values.setdefault("box_loss", _LEGACY_BOX[box])
    if values.get("box_loss") == "cbbl":
        values.setdefault("grid", _LEGACY_GRID)
    return values


def as_head_config(head: Any) -> HeadConfig:
    """A HeadConfig from a HeadConfig, a settings dict (see :meth:`HeadConfig.from_dict`) or None (regression)."""
    return head if isinstance(head, HeadConfig) else HeadConfig.from_dict(head)


def fit_head_grid(head: HeadConfig, offsets: torch.Tensor) -> HeadConfig:
    """``head`` with its centre and size grids fitted to raw offset labels (P, 4) by its grid mode ('auto' or
    'quantile', utils/cbbl/modes.py), the IN strengths the fit chose included."""
    mode = head.grid_mode
    if not isinstance(mode, FittedGridMode):
        raise ValueError(f"only grids {FITTED_GRIDS} are fitted, got grid={head.grid!r}")
    fitted = mode.fit(offsets, head.grid_ranges, head.bins)
    return head.replace(centre_points=fitted.centre, size_points=fitted.size, beta=fitted.beta,
                        size_beta=fitted.size_beta)
