"""HeadConfig: the one description of the box head, shared by the head, the loss, val, detect and export.

Built once per training run (:meth:`HeadConfig.from_hyp`, with the size training actually uses), stored as
plain data in the checkpoint (``model_yaml['detect']``) and read back by :meth:`HeadConfig.from_dict`, which
is also the one place where older checkpoints' keys are mapped. Each setting has one name everywhere
(``box_loss``, ``bins``, ``alpha``, ``beta``, ``grid``, ...); ``box_mode`` is derived from ``box_loss``.

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
from utils.cbbl.distribution import UM_MODES
from utils.cbbl.grid import RESTORE_MODES, BoxGrids, CBBLGrid, check_points
from utils.cbbl.modes import FITTED_GRIDS, GRID_MODE_TABLE, GRID_MODES, FittedGridMode, GridMode, GridRanges

# Paper section 4.4: the IN strength by training size (only for grid 'in' without an explicit beta).
PAPER_BETA_BELOW, PAPER_BETA_AT_OR_ABOVE, PAPER_BETA_SIZE = 5.0, 3.0, 1024
# Keys older checkpoints stored in model_yaml['detect'] (and models/yolo.py --box), mapped by from_dict.
_LEGACY_BOX = {"regress": "ciou", "cbbl": "cbbl"}


class DetectOutput(NamedTuple):
    """What the Detect head (models/detect.py), and so a Model, returns in training and in eval.

    pred: (B, N, 5 + nc + num_extra) decoded ``cx, cy, w, h`` (network-input pixels), sigmoid objectness and
        classes, and in C-BBL mode the mean entropy of the 4 box distributions; None in training mode.
    raw: per level (B, A, H, W, box_channels + 1 + nc) raw outputs, what the loss reads.
    Unpacks as ``pred, raw = model(images)``.
    """

    pred: Optional[torch.Tensor]
    raw: list[torch.Tensor]


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

    box_loss: str = "ciou"  # ciou | l1 | smooth_l1 (regression head) | cbbl (C-BBL head)
    bins: int = 11  # C-BBL grid points per coordinate (K)
    alpha: float = 4.0  # C-BBL offsets live in [-alpha, alpha]
    beta: Optional[float] = None  # IN strength: given for 'in' (None = paper_beta), fitted (centre) for 'auto'
    size_beta: Optional[float] = None  # 'auto' only: the IN strength fitted for the size grid
    grid: str = "in"  # in | auto | quantile | uniform
    space: str = "logit"  # offset space: logit (YOLOv5 decode) | linear
    restore: str = "expectation"  # expectation | top2
    anchor_t: float = 4.0  # the assignment's size-ratio bound: the size grid's reachable range
    um: float = 1.0  # uncertainty-matching loss weight (0 = off)
    um_mode: str = "abs"  # abs | min
    ciou: float = 0.0  # extra CIoU term on C-BBL's decoded boxes (0 = off)
    centre_points: tuple[float, ...] = ()  # (K,) grid of x and y
    size_points: tuple[float, ...] = ()  # (K,) grid of w and h

    def __post_init__(self) -> None:
        for name, value, choices in (("box_loss", self.box_loss, BOX_LOSSES), ("grid", self.grid, GRID_MODES),
                                     ("space", self.space, OFFSET_SPACES), ("restore", self.restore, RESTORE_MODES),
                                     ("um_mode", self.um_mode, UM_MODES)):
            if value not in choices:
                raise ValueError(f"head setting {name}={value!r} is not one of {choices}")
        if self.bins < 2 or self.alpha <= 0 or (self.beta is not None and self.beta < 0):
            raise ValueError(f"C-BBL needs bins >= 2, alpha > 0, beta >= 0; got {self.bins}, {self.alpha}, {self.beta}")
        if self.anchor_t <= 1 or self.um < 0 or self.ciou < 0:
            raise ValueError(f"head needs anchor_t > 1, um >= 0, ciou >= 0; got {self.anchor_t}, {self.um}, "
                             f"{self.ciou}")
        if not self.is_cbbl and self.space != "logit":
            raise ValueError(f"regression always decodes in the 'logit' space, got space={self.space!r}")
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
        """The head a training run uses: ``hyp`` (utils.hyp.Hyp) and the training size ROUNDED TO THE STRIDE
        (the only place where beta-by-size is derived: --img 1000 trains at 1024, so beta 3)."""
        beta = hyp.cbbl_beta
        if beta is None and hyp.cbbl_grid == "in":
            beta = paper_beta(imgsz)
        return cls(box_loss=hyp.box_loss, bins=hyp.cbbl_bins, alpha=hyp.cbbl_alpha, beta=beta, grid=hyp.cbbl_grid,
                   space=hyp.cbbl_space if hyp.is_cbbl else "logit", restore=hyp.cbbl_restore,
                   anchor_t=hyp.anchor_t, um=hyp.cbbl_um, um_mode=hyp.cbbl_um_mode, ciou=hyp.cbbl_ciou)

    @classmethod
    def from_dict(cls, values: Optional[dict[str, Any]]) -> HeadConfig:
        """A config from plain data (``to_dict``, a model YAML's ``detect:``), mapping older checkpoints' keys
        (``box: regress|cbbl`` and a bare ``beta``, from before grids had modes) once, here."""
        values = dict(values or {})
        if "box" in values:
            box = values.pop("box")
            if box not in _LEGACY_BOX:
                raise ValueError(f"Detect head box={box!r} is not one of {tuple(_LEGACY_BOX)}")
            values.setdefault("box_loss", _LEGACY_BOX[box])
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown Detect head setting(s) {unknown}; known: {sorted(known)}")
        values = {key: value for key, value in values.items() if value is not None or key.endswith("beta")}
        for name in ("centre_points", "size_points"):
            values[name] = tuple(values.get(name) or ())
        return cls(**values)

    def replace(self, **changes: Any) -> HeadConfig:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples) for model_yaml['detect'] and the checkpoint."""
        values = dataclasses.asdict(self)
        values["centre_points"], values["size_points"] = list(self.centre_points), list(self.size_points)
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
