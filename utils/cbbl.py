"""C-BBL: box offsets as confidence distributions over a non-uniform grid (DESIGN.md section 3).

Each raw YOLO offset t (the value fed to the decode) is clamped to [-alpha, alpha], written as a
two-hot distribution over K grid points, predicted as K logits, and restored as the expectation of
the softmax. The offset spaces (``logit``: YOLOv5's sigmoid decode inverted; ``linear``) say how a
matched ground truth becomes t and back; both pairs live here, next to each other.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

OFFSET_SPACES = ("logit", "linear")
RESTORE_MODES = ("expectation", "top2")
# Keeps logit() finite when a target sits exactly on the decode's open-interval ends.
_LOGIT_EPS = 1e-6


def grid_points(alpha: float = 4.0, bins: int = 11, beta: float = 5.0, uniform: bool = False) -> torch.Tensor:
    """The K grid values: uniform on [-alpha, alpha], then the normalised IN transform.

    y' = sign(y) * alpha * (exp(beta*|y|/alpha) - 1) / (exp(beta) - 1); beta == 0 or ``uniform`` keeps y.
    Symmetric, strictly increasing, ends at +-alpha, denser near 0 as beta grows.
    Returns (K,) float32.
    """
    if bins < 2:
        raise ValueError(f"C-BBL needs at least 2 grid points, got bins={bins}")
    if alpha <= 0 or beta < 0:
        raise ValueError(f"C-BBL needs alpha > 0 and beta >= 0, got alpha={alpha}, beta={beta}")
    half_steps = torch.arange(bins, dtype=torch.float64) - (bins - 1) / 2  # exact 0 at the centre for odd K
    uniform_points = half_steps * (2 * alpha / (bins - 1))
    if uniform or beta == 0:
        return uniform_points.float()
    scale = alpha / math.expm1(beta)
    warped = torch.sign(uniform_points) * scale * torch.expm1(beta * uniform_points.abs() / alpha)
    return warped.float()


class CBBLGrid:
    """The grid and its two-hot encode / expectation decode pair.

    Invariant: ``decode_expectation(encode(t)) == clamp(t, -alpha, alpha)`` (lossless inside the range).
    """

    def __init__(self, alpha: float = 4.0, bins: int = 11, beta: float = 5.0, uniform: bool = False):
        self.alpha, self.bins, self.beta, self.uniform = float(alpha), int(bins), float(beta), bool(uniform)
        self.points = grid_points(self.alpha, self.bins, self.beta, self.uniform)  # (K,)

    def __repr__(self) -> str:
        return f"CBBLGrid(alpha={self.alpha}, bins={self.bins}, beta={self.beta}, uniform={self.uniform})"

    def encode(self, t: torch.Tensor) -> torch.Tensor:
        """Raw offsets (...) -> two-hot targets (..., K), clamped to [-alpha, alpha].

        For y'_l <= t < y'_r: p_l = (y'_r - t) / (y'_r - y'_l), p_r = 1 - p_l, so sum(p * y') == t.
        """
        points = self.points.to(device=t.device, dtype=torch.float32)
        t = t.float().clamp(-self.alpha, self.alpha)
        right = torch.searchsorted(points, t.contiguous(), right=True).clamp(1, self.bins - 1)  # (...)
        left = right - 1
        y_left, y_right = points[left], points[right]
        weight_left = ((y_right - t) / (y_right - y_left)).clamp(0, 1)  # (...)
        target = torch.zeros(*t.shape, self.bins, device=t.device)  # (..., K)
        target.scatter_(-1, left.unsqueeze(-1), weight_left.unsqueeze(-1))
        target.scatter_add_(-1, right.unsqueeze(-1), (1 - weight_left).unsqueeze(-1))
        return target

    def decode(self, logits: torch.Tensor, restore: str = "expectation") -> torch.Tensor:
        """Logits (..., K) -> offsets (...).

        ``expectation``: sum_i softmax(l)_i y'_i (the paper's choice). ``top2``: the two largest
        probabilities, renormalised, weight their points (the paper's ablation).
        """
        points = self.points.to(device=logits.device, dtype=torch.float32)
        probs = logits.float().softmax(-1)  # (..., K)
        if restore == "expectation":
            return (probs * points).sum(-1)
        if restore == "top2":
            top_probs, top_idx = probs.topk(2, dim=-1)  # (..., 2)
            return (top_probs * points[top_idx]).sum(-1) / top_probs.sum(-1).clamp(min=1e-12)
        raise ValueError(f"unknown C-BBL restore mode {restore!r}; expected one of {RESTORE_MODES}")


def ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy -sum p* log softmax(l) over the last axis: (..., K), (..., K) -> (...).

    Its gradient wrt the logits is softmax(l) - p*; log_softmax keeps fp16 and +-1e4 logits finite.
    """
    return -(target.float() * F.log_softmax(logits.float(), dim=-1)).sum(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy H(softmax(l)) in nats over the last axis: (..., K) -> (...); the localization uncertainty."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return -(log_probs.exp() * log_probs).sum(-1)


def distribution_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of a distribution (..., K) -> (...), with 0 log 0 = 0 (for two-hot targets)."""
    probs = probs.float()
    return -torch.where(probs > 0, probs * probs.clamp(min=1e-30).log(), torch.zeros_like(probs)).sum(-1)


def um_loss(logits: torch.Tensor, target: torch.Tensor, mode: str = "abs") -> torch.Tensor:
    """Uncertainty loss over the last axis: (..., K), (..., K) -> (...).

    ``abs``: |H(p*) - H(p)| (seed paper, default; 0 when p equals p*). ``min``: H(p) alone (the
    method's later version).
    """
    predicted = entropy(logits)
    if mode == "abs":
        return (distribution_entropy(target) - predicted).abs()
    if mode == "min":
        return predicted
    raise ValueError(f"unknown UM mode {mode!r}; expected 'abs' or 'min'")


# Offset spaces: matched ground truth <-> raw offset t. ``dxy`` is the box centre minus the cell's
# top-left corner, in cell units (YOLOv5 assignment keeps it in [-0.5, 1.5]); ``ratio`` is box size
# over anchor size (kept in [1/anchor_t, anchor_t]).


def decode_offsets(t: torch.Tensor, space: str = "logit") -> tuple[torch.Tensor, torch.Tensor]:
    """Raw offsets (..., 4) -> (dxy (..., 2) in cells, size ratio (..., 2) to the anchor).

    logit: dxy = 2 sigmoid(t) - 0.5, ratio = (2 sigmoid(t))^2 (YOLOv5). linear: dxy = t + 0.5, ratio = exp(t).
    Inverse of :func:`encode_offsets`.
    """
    if space == "logit":
        sig = t.sigmoid()
        return sig[..., :2] * 2 - 0.5, (sig[..., 2:] * 2) ** 2
    if space == "linear":
        return t[..., :2] + 0.5, t[..., 2:].exp()
    raise ValueError(f"unknown offset space {space!r}; expected one of {OFFSET_SPACES}")


def encode_offsets(dxy: torch.Tensor, ratio: torch.Tensor, space: str = "logit") -> torch.Tensor:
    """(dxy (..., 2) cells, ratio (..., 2)) -> raw offsets (..., 4); inverse of :func:`decode_offsets`.

    logit: t = logit((dxy + 0.5) / 2) and logit(sqrt(ratio) / 2); linear: t = dxy - 0.5 and ln(ratio).
    Values beyond the decode's reach come out large and are clamped later by the grid.
    """
    if space == "logit":
        unit_xy = ((dxy + 0.5) / 2).clamp(_LOGIT_EPS, 1 - _LOGIT_EPS)
        unit_wh = (ratio.sqrt() / 2).clamp(_LOGIT_EPS, 1 - _LOGIT_EPS)
        return torch.cat([torch.logit(unit_xy), torch.logit(unit_wh)], -1)
    if space == "linear":
        return torch.cat([dxy - 0.5, ratio.clamp(min=_LOGIT_EPS).log()], -1)
    raise ValueError(f"unknown offset space {space!r}; expected one of {OFFSET_SPACES}")


def default_beta(imgsz: int) -> float:
    """Paper section 4.4: beta = 5 below 1024 px training size, 3 at and above."""
    return 5.0 if imgsz < 1024 else 3.0
