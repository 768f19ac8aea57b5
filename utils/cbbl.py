"""C-BBL: box offsets as confidence distributions over a non-uniform grid (DESIGN.md section 3).

Each raw YOLO offset t (the value fed to the decode) is clamped to [-alpha, alpha], written as a
two-hot distribution over K grid points, predicted as K logits, and restored as the expectation of
the softmax. The offset spaces (``logit``: YOLOv5's sigmoid decode inverted; ``linear``) say how a
matched ground truth becomes t and back; both pairs live here, next to each other. The losses come
as plain reference functions (``ce_loss``, ``um_loss``, ``entropy``) and as ``two_hot_loss``, the fused
form the training loss uses (same values and gradients, tested against the reference).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F

OFFSET_SPACES = ("logit", "linear")
RESTORE_MODES = ("expectation", "top2")
UM_MODES = ("abs", "min")
# Keeps logit() finite when a target sits exactly on the decode's open-interval ends.
_LOGIT_EPS = 1e-6
# Below this beta the IN transform equals the uniform grid to float32 precision (its deviation is ~alpha*beta/8),
# and exp(beta) - 1 would underflow the normalisation.
_UNIFORM_BETA = 1e-7


def _is_uniform(beta: float, uniform: bool) -> bool:
    return uniform or beta < _UNIFORM_BETA


def grid_points(alpha: float = 4.0, bins: int = 11, beta: float = 5.0, uniform: bool = False) -> torch.Tensor:
    """The K grid values: uniform on [-alpha, alpha], then the normalised IN transform.

    y' = sign(y) * alpha * (exp(beta*|y|/alpha) - 1) / (exp(beta) - 1); beta ~ 0 or ``uniform`` keeps y.
    Symmetric, strictly increasing, ends at +-alpha, denser near 0 as beta grows.
    Returns (K,) float32.
    """
    if bins < 2:
        raise ValueError(f"C-BBL needs at least 2 grid points, got bins={bins}")
    if alpha <= 0 or beta < 0:
        raise ValueError(f"C-BBL needs alpha > 0 and beta >= 0, got alpha={alpha}, beta={beta}")
    # A constant of the head: on the CPU even while a model is built on the meta device (models/verify.py).
    half_steps = torch.arange(bins, dtype=torch.float64, device="cpu") - (bins - 1) / 2  # exact 0 at the centre
    uniform_points = half_steps * (2 * alpha / (bins - 1))
    if _is_uniform(beta, uniform):
        return uniform_points.float()
    scale = alpha / math.expm1(beta)
    warped = (torch.sign(uniform_points) * scale * torch.expm1(beta * uniform_points.abs() / alpha)).float()
    if not bool((warped.diff() > 0).all()):
        raise ValueError(f"C-BBL beta={beta} packs the inner grid points together in float32 (alpha={alpha}, "
                         f"bins={bins}); use a smaller beta")
    return warped


class CBBLGrid:
    """The grid and its two-hot encode / expectation decode pair.

    Invariant: ``encode(t) @ points == clamp(t, -alpha, alpha)`` (lossless inside the range), and
    ``decode`` of logits peaked on one point returns that point.
    """

    def __init__(self, alpha: float = 4.0, bins: int = 11, beta: float = 5.0, uniform: bool = False):
        self.alpha, self.bins, self.beta, self.uniform = float(alpha), int(bins), float(beta), bool(uniform)
        self.points = grid_points(self.alpha, self.bins, self.beta, self.uniform)  # (K,)

    def __repr__(self) -> str:
        return f"CBBLGrid(alpha={self.alpha}, bins={self.bins}, beta={self.beta}, uniform={self.uniform})"

    def two_hot(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse two-hot form of :meth:`encode`: raw offsets (...) -> (left index (...) long, p_left (...)).

        For y'_l <= t < y'_r (t clamped to [-alpha, alpha]): p_l = (y'_r - t) / (y'_r - y'_l) on point l and
        p_r = 1 - p_l on point l + 1, so p_l y'_l + p_r y'_r == t. float64 input stays float64, else float32.
        """
        dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
        points = self.points.to(device=t.device, dtype=dtype)
        t = t.to(dtype).clamp(-self.alpha, self.alpha)
        left = self._interval(t, points)  # (...)
        y_left, y_right = points.take(left), points.take(left + 1)
        return left, ((y_right - t) / (y_right - y_left)).clamp(0, 1)

    def _interval(self, t: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Index l in [0, K-2] with y'_l <= t < y'_l+1 (t in [-alpha, alpha]): (...) -> (...) long.

        Inverts the IN transform analytically (|y| = alpha/beta * log1p(|y'| (e^beta - 1) / alpha)), then
        fixes float rounding at the interval ends with one compare each way: O(1) per value, unlike searchsorted.
        """
        uniform_t = t
        if not _is_uniform(self.beta, self.uniform):
            spread = math.expm1(self.beta) / self.alpha
            uniform_t = torch.sign(t) * (self.alpha / self.beta) * torch.log1p(t.abs() * spread)
        step = 2 * self.alpha / (self.bins - 1)
        left = ((uniform_t + self.alpha) / step).floor().long().clamp(0, self.bins - 2)
        left = left - (points.take(left) > t).long()
        left = left + (points.take((left + 1).clamp(max=self.bins - 1)) <= t).long()
        return left.clamp(0, self.bins - 2)

    def encode(self, t: torch.Tensor) -> torch.Tensor:
        """Raw offsets (...) -> two-hot targets (..., K), clamped to [-alpha, alpha]; sum(p* y') == t inside."""
        left, weight_left = self.two_hot(t)
        target = torch.zeros(*left.shape, self.bins, device=t.device, dtype=weight_left.dtype)  # (..., K)
        target.scatter_(-1, left.unsqueeze(-1), weight_left.unsqueeze(-1))
        target.scatter_add_(-1, left.unsqueeze(-1) + 1, (1 - weight_left).unsqueeze(-1))
        return target

    def decode(self, logits: torch.Tensor, restore: str = "expectation") -> torch.Tensor:
        """Logits (..., K) -> offsets (...).

        ``expectation``: sum_i softmax(l)_i y'_i (the paper's choice). ``top2``: the two largest
        probabilities, renormalised, weight their points (the paper's ablation).
        """
        points = self.points.to(device=logits.device, dtype=torch.float32)
        probs = log_softmax(logits).exp()  # (..., K)
        if restore == "expectation":
            return probs @ points
        if restore == "top2":
            top_probs, top_idx = probs.topk(2, dim=-1)  # (..., 2)
            return (top_probs * points[top_idx]).sum(-1) / top_probs.sum(-1).clamp(min=1e-12)
        raise ValueError(f"unknown C-BBL restore mode {restore!r}; expected one of {RESTORE_MODES}")


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Stable float32 log-softmax over the last axis: (..., K) -> (..., K); finite for fp16 and +-1e4 logits.

    On CPU it is written out (max-shifted logsumexp): torch's CPU kernel is ~6x slower for a last axis as
    short as K = 11 (measured here: 1.8 vs 0.3 ms on (2336, 4, 11), one thread); CUDA keeps the fused kernel.
    """
    logits = logits.float()
    if logits.is_cuda:
        return F.log_softmax(logits, dim=-1)
    shifted = logits - logits.detach().amax(-1, keepdim=True)  # (..., K), max 0: exp never overflows
    return shifted - shifted.exp().sum(-1, keepdim=True).log()


def ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy -sum p* log softmax(l) over the last axis: (..., K), (..., K) -> (...).

    Its gradient wrt the logits is softmax(l) - p*; log-softmax keeps fp16 and +-1e4 logits finite.
    """
    return -(target.float() * log_softmax(logits)).sum(-1)


def expectation_and_entropy(logits: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One log-softmax for both decode outputs: logits (..., K), points (K,) -> (expectation (...), entropy (...)).

    The expectation is softmax followed by a fixed K -> 1 projection on the grid points (export friendly).
    """
    log_probs = log_softmax(logits)  # (..., K)
    probs = log_probs.exp()
    return probs @ points.reshape(-1).float(), -(probs * log_probs).sum(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy H(softmax(l)) in nats over the last axis: (..., K) -> (...); the localization uncertainty."""
    log_probs = log_softmax(logits)
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
    raise ValueError(f"unknown UM mode {mode!r}; expected one of {UM_MODES}")


class _TwoHotLoss(torch.autograd.Function):
    """KL(p* || p) + w * L_UM over the first axis of (K, ...) logits: one softmax and a closed-form gradient.

    With s = l - max l, e = exp(s), Z = sum e: p = e / Z, log p = s - log Z, H = log Z - sum(e s) / Z.
    d KL / dl = p - p*;  dH / dl = -p (log p + H);  d L_UM / dH = -sign(H* - H) (abs) or 1 (min).
    K-first layout and few full-size passes: on CPU, reductions and broadcasts over a short innermost
    axis are ~5x slower (measured here on (9344, 11) vs (11, 9344)); see benchmarks/loss_speed.py.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, left: torch.Tensor, weight_left: torch.Tensor, points: torch.Tensor,
                um_weight: float, um_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        shifted = logits - logits.amax(0, keepdim=True)  # (K, ...), max 0: exp never overflows
        exp_shifted = shifted.exp()  # (K, ...)
        partition = exp_shifted.sum(0)  # (...), >= 1
        log_partition = partition.log()
        predicted_entropy = log_partition - (exp_shifted * shifted).sum(0) / partition  # (...)
        pair_index = torch.stack([left, left + 1])  # (2, ...)
        pair_weight = torch.stack([weight_left, 1 - weight_left])  # (2, ...)
        target_entropy = -torch.special.xlogy(pair_weight, pair_weight).sum(0)  # (...)
        pair_log_probs = shifted.gather(0, pair_index) - log_partition  # (2, ...)
        divergence = -(pair_weight * pair_log_probs).sum(0) - target_entropy  # (...)
        if um_mode == "abs":
            gap = target_entropy - predicted_entropy
            uncertainty, um_slope = gap.abs(), -gap.sign()
        else:
            uncertainty, um_slope = predicted_entropy, torch.ones_like(predicted_entropy)
        ctx.save_for_backward(exp_shifted, shifted, partition, predicted_entropy - log_partition, pair_index,
                              pair_weight, um_weight * um_slope)
        points = points.view(-1, *([1] * (logits.dim() - 1)))  # (K, 1, ...)
        expectation = (points * exp_shifted).sum(0) / partition  # (...)
        ctx.mark_non_differentiable(expectation)
        return divergence + um_weight * uncertainty, expectation

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_expectation: Any) -> tuple[Optional[torch.Tensor], ...]:
        exp_shifted, shifted, partition, entropy_shift, pair_index, pair_weight, um_coef = ctx.saved_tensors
        # g (p - p* - c p (log p + H)) = e (a - b s) - g p*, with a = g (1 - c (H - log Z)) / Z, b = g c / Z.
        grad_um = grad_loss * um_coef
        offset = (grad_loss - grad_um * entropy_shift) / partition  # (...)
        grad = torch.addcmul(offset, shifted, grad_um / partition, value=-1).mul_(exp_shifted)  # (K, ...)
        grad.scatter_add_(0, pair_index, -pair_weight * grad_loss)
        return grad, None, None, None, None, None


def two_hot_loss(logits: torch.Tensor, left: torch.Tensor, weight_left: torch.Tensor, points: torch.Tensor,
                 um_weight: float = 1.0, um_mode: str = "abs") -> tuple[torch.Tensor, torch.Tensor]:
    """C-BBL box loss per coordinate, fused, and the expectation decode of the same softmax.

    Args:
        logits: (..., K); left, weight_left: (...) two-hot label from :meth:`CBBLGrid.two_hot`;
        points: (K,) the grid's points.
    Returns:
        loss (...) float32 = ``ce_loss(l, p*) - H(p*) + um_weight * um_loss(l, p*, um_mode)``: the
        cross-entropy less the label's own entropy (KL divergence: same gradient p - p*, 0 at the optimum);
        expectation (...) = sum_i p_i y'_i, without gradient (for the objectness target).
    """
    if um_mode not in UM_MODES:
        raise ValueError(f"unknown UM mode {um_mode!r}; expected one of {UM_MODES}")
    columns = logits.float().movedim(-1, 0).contiguous()  # (K, ...), K outermost in memory
    points = points.to(device=columns.device, dtype=torch.float32)
    loss, expectation = _TwoHotLoss.apply(columns, left, weight_left.float(), points, float(um_weight), um_mode)
    return loss, expectation


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
