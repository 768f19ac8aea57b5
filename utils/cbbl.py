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
from typing import Any, NamedTuple, Optional, Union

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
# Probabilities per coordinate kept as the distribution's top-k mass (GFLv2's DGQP reads the top 4).
TOP_K = 4


def _is_uniform(beta: float, uniform: bool) -> bool:
    return uniform or beta < _UNIFORM_BETA


def grid_points(alpha: float = 4.0, bins: int = 11, beta: float = 5.0, uniform: bool = False) -> torch.Tensor:
    """The paper's K grid values: uniform on [-alpha, alpha], then the normalised IN transform.

    y' = sign(y) * alpha * (exp(beta*|y|/alpha) - 1) / (exp(beta) - 1); beta ~ 0 or ``uniform`` keeps y.
    Symmetric, strictly increasing, ends at +-alpha, denser near 0 as beta grows.
    Returns (K,) float32.
    """
    if alpha <= 0:
        raise ValueError(f"C-BBL needs alpha > 0, got alpha={alpha}")
    return in_family_points(-alpha, 0.0, alpha, bins, 0.0 if uniform else beta)


def in_family_points(low: float, centre: float, high: float, bins: int, beta: float) -> torch.Tensor:
    """The IN family on [low, high], densest at ``centre``: (K,) float32, strictly increasing.

    Point k sits at u_k = -1 + 2k/(K-1) warped as centre + sign(u) * side * (exp(beta|u|) - 1) / (exp(beta) - 1),
    side = high - centre above the centre and centre - low below it. low = -alpha, centre 0, high = alpha is the
    paper's grid (:func:`grid_points`); beta ~ 0 is the uniform grid on each side.
    """
    if bins < 2:
        raise ValueError(f"C-BBL needs at least 2 grid points, got bins={bins}")
    if beta < 0 or not low <= centre <= high or low == high:
        raise ValueError(f"C-BBL grid needs beta >= 0 and low <= centre <= high (low < high), got beta={beta}, "
                         f"range [{low}, {high}], centre {centre}")
    points = _in_family_f64(low, centre, high, bins, beta).float()
    if not bool((points.diff() > 0).all()):
        raise ValueError(f"C-BBL beta={beta} packs the inner grid points together in float32 (range [{low}, "
                         f"{high}], bins={bins}); use a smaller beta")
    return points


def check_points(points: torch.Tensor, name: str = "C-BBL grid") -> torch.Tensor:
    """``points`` as (K,) float32 after checking K >= 2 and strictly increasing finite values."""
    points = torch.as_tensor(points, dtype=torch.float32, device="cpu").reshape(-1)
    if len(points) < 2 or not bool(torch.isfinite(points).all()) or not bool((points.diff() > 0).all()):
        raise ValueError(f"{name} points must be >= 2 finite, strictly increasing values, got {points.tolist()}")
    return points


class CBBLGrid:
    """The grid and its two-hot encode / expectation decode pair.

    Invariant: ``encode(t) @ points == clamp(t, -alpha, alpha)`` (lossless inside the range), and
    ``decode`` of logits peaked on one point returns that point.
    """

    def __init__(self, alpha: float = 4.0, bins: int = 11, beta: float = 5.0, uniform: bool = False):
        self.alpha, self.bins, self.beta, self.uniform = float(alpha), int(bins), float(beta), bool(uniform)
        self.points = grid_points(self.alpha, self.bins, self.beta, self.uniform)  # (K,)
        self.low, self.high = -self.alpha, self.alpha
        self.analytic = True  # the paper's symmetric IN grid: O(1) interval lookup
        self._copies: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    @classmethod
    def from_points(cls, points: torch.Tensor) -> CBBLGrid:
        """A grid on any strictly increasing points (K,): per-group, fitted or stored grids; range = the ends."""
        grid = cls.__new__(cls)
        grid.points = check_points(points)
        grid.bins, grid.low, grid.high = len(grid.points), float(grid.points[0]), float(grid.points[-1])
        grid.alpha, grid.beta, grid.uniform, grid.analytic = max(-grid.low, grid.high), 0.0, False, False
        grid._copies = {}
        return grid

    def __repr__(self) -> str:
        return f"CBBLGrid(points={[round(p, 4) for p in self.points.tolist()]})"

    def points_on(self, device: Union[torch.device, str], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``points`` on ``device`` in ``dtype``, copied once: a host-to-GPU copy per loss call would stall the
        stream every step."""
        key = (torch.device(device), dtype)
        if key not in self._copies:
            self._copies[key] = self.points.to(device=device, dtype=dtype)
        return self._copies[key]

    def two_hot(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse two-hot form of :meth:`encode`: raw offsets (...) -> (left index (...) long, p_left (...)).

        For y'_l <= t < y'_r (t clamped to the grid's range): p_l = (y'_r - t) / (y'_r - y'_l) on point l and
        p_r = 1 - p_l on point l + 1, so p_l y'_l + p_r y'_r == t. float64 input stays float64, else float32.
        """
        dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
        points = self.points_on(t.device, dtype)
        t = t.to(dtype).clamp(self.low, self.high)
        left = self._interval(t, points)  # (...)
        y_left, y_right = points.take(left), points.take(left + 1)
        return left, ((y_right - t) / (y_right - y_left)).clamp(0, 1)

    def _interval(self, t: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Index l in [0, K-2] with y'_l <= t < y'_l+1 (t in [-alpha, alpha]): (...) -> (...) long.

        Inverts the IN transform analytically (|y| = alpha/beta * log1p(|y'| (e^beta - 1) / alpha)), then
        fixes float rounding at the interval ends with one compare each way: O(1) per value, unlike searchsorted.
        """
        if not self.analytic:
            return (torch.bucketize(t, points, right=True) - 1).clamp(0, self.bins - 2)
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
        """Raw offsets (...) -> two-hot targets (..., K), clamped to the range; sum(p* y') == t inside."""
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
        points = self.points_on(logits.device)
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
    """One log-softmax for both decode outputs: logits (..., C, K), points (C, K) or (K,) -> (expectation (..., C),
    entropy (..., C)).

    The expectation is softmax followed by a fixed K -> 1 projection on each coordinate's grid (export friendly).
    """
    log_probs = log_softmax(logits)  # (..., C, K)
    probs = log_probs.exp()
    return (probs * points.float()).sum(-1), -(probs * log_probs).sum(-1)


class SideStats(NamedTuple):
    """Per-coordinate statistics of C-BBL distributions, from one log-softmax (see :func:`side_statistics`).

    mean, variance, entropy: (..., C) on the grid's own offset scale (nats for the entropy); topk: (..., C, k) the
    k largest probabilities, descending (their sum is the top-k mass); value_variance: (..., C) the variance of the
    decoded values (cells for x, y; size ratios for w, h) when the decoded points were given, else None.
    """

    mean: torch.Tensor
    variance: torch.Tensor
    topk: torch.Tensor
    entropy: torch.Tensor
    value_variance: Optional[torch.Tensor]


def side_statistics(logits: torch.Tensor, points: torch.Tensor, values: Optional[torch.Tensor] = None,
                    k: int = TOP_K) -> SideStats:
    """Logits (..., C, K) on grid ``points`` (C, K) or (K,) -> :class:`SideStats`.

    ``values``: the points decoded to box units (same shape as ``points``; :func:`decoded_points`). The variance of
    the decoded value is exact over the K bins (no linearisation of the sigmoid decode). mean and entropy are
    computed exactly as :func:`expectation_and_entropy` computes them, so boxes decoded from either agree bit for bit.
    """
    log_probs = log_softmax(logits)  # (..., C, K)
    probs = log_probs.exp()
    points = points.float()
    mean = (probs * points).sum(-1)  # (..., C)
    variance = (probs * (points - mean[..., None]) ** 2).sum(-1)
    value_variance = None
    if values is not None:
        values = values.float()
        value_mean = (probs * values).sum(-1, keepdim=True)  # (..., C, 1)
        value_variance = (probs * (values - value_mean) ** 2).sum(-1)
    topk = probs.topk(min(k, probs.shape[-1]), dim=-1).values  # (..., C, k)
    return SideStats(mean, variance, topk, -(probs * log_probs).sum(-1), value_variance)


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
        points = points.view(len(points), *([1] * (logits.dim() - 1 - (points.dim() - 1))), *points.shape[1:])
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
        points: (K,) one grid for every coordinate, or (C, K) one per coordinate (the last axis of ``left``).
    Returns:
        loss (...) float32 = ``ce_loss(l, p*) - H(p*) + um_weight * um_loss(l, p*, um_mode)``: the
        cross-entropy less the label's own entropy (KL divergence: same gradient p - p*, 0 at the optimum);
        expectation (...) = sum_i p_i y'_i, without gradient (for the objectness target).
    """
    if um_mode not in UM_MODES:
        raise ValueError(f"unknown UM mode {um_mode!r}; expected one of {UM_MODES}")
    columns = logits.float().movedim(-1, 0).contiguous()  # (K, ...), K outermost in memory
    points = points.to(device=columns.device, dtype=torch.float32)
    points = points.T.contiguous() if points.dim() == 2 else points  # (K, C): K first like the logits
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


def decoded_points(points: torch.Tensor, space: str = "logit") -> torch.Tensor:
    """Grid points (4, K) of the offsets x, y, w, h -> the values they decode to (4, K): cells for x, y, size ratios
    to the anchor for w, h (:func:`decode_offsets` applied to every bin)."""
    dxy, ratio = decode_offsets(points.float().T, space)  # (K, 2) each
    return torch.cat((dxy, ratio), -1).T


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


class BoxGrids:
    """One C-BBL grid per coordinate group: centre (x, y) and size (w, h), each with its own points and range.

    The four box coordinates are encoded, lossed and decoded each on its group's grid; ``points`` (4, K) is the
    per-coordinate table the head's export-friendly decode projects on.
    """

    def __init__(self, centre: CBBLGrid, size: CBBLGrid):
        if centre.bins != size.bins:
            raise ValueError(f"centre and size grids need the same K, got {centre.bins} and {size.bins}")
        self.centre, self.size, self.bins = centre, size, centre.bins
        self.points = torch.stack([centre.points, centre.points, size.points, size.points])  # (4, K)

    def two_hot(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw offsets (..., 4) -> (left index (..., 4) long, p_left (..., 4)), each group on its own grid."""
        centre_left, centre_weight = self.centre.two_hot(t[..., :2])
        size_left, size_weight = self.size.two_hot(t[..., 2:])
        return torch.cat([centre_left, size_left], -1), torch.cat([centre_weight, size_weight], -1)

    def decode(self, logits: torch.Tensor, restore: str = "expectation") -> torch.Tensor:
        """Logits (..., 4, K) -> offsets (..., 4) (see :meth:`CBBLGrid.decode`)."""
        return torch.cat([self.centre.decode(logits[..., :2, :], restore),
                          self.size.decode(logits[..., 2:, :], restore)], -1)


# Grid fitting: points for the targets a training set actually produces (utils/engine/grid_fit.py collects them).
# Candidate IN strengths and, for a free centre, its candidate positions (fractions of the range).
FIT_BETAS = torch.linspace(0.0, 10.0, 401, dtype=torch.float64)
FIT_CENTRES = torch.linspace(0.05, 0.95, 37, dtype=torch.float64)


def interval_mass(targets: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Fraction of ``targets`` (N,) in each of the K-1 intervals of ``points`` (..., K); (..., K-1).

    Targets outside the range count in the end intervals, as the two-hot encoding clamps them there.
    """
    ordered = targets.double().reshape(-1).sort().values
    inner = points.double()[..., 1:-1].contiguous()  # (..., K-2) the boundaries between intervals
    below = torch.searchsorted(ordered, inner.reshape(-1)).reshape(inner.shape).double()  # (..., K-2)
    edges = torch.cat([torch.zeros_like(below[..., :1]), below, torch.full_like(below[..., :1], len(ordered))], -1)
    return edges.diff(dim=-1) / max(len(ordered), 1)


def quantile_points(targets: torch.Tensor, low: float, high: float, bins: int, symmetric: bool = False) -> torch.Tensor:
    """Equal-target-mass grid: the ends at [low, high], point k at the k/(K-1) quantile of the (clamped) targets.

    ``symmetric`` pools t and -t first (centre targets are symmetric about 0 by construction; this halves the
    sampling noise). Ties are pulled apart to keep the points strictly increasing. Returns (K,) float32.
    """
    values = targets.double().reshape(-1).clamp(low, high)
    if symmetric:
        values = torch.cat([values, -values])
    levels = torch.linspace(0.0, 1.0, bins, dtype=torch.float64)[1:-1]
    if not len(values):
        raise ValueError("a quantile grid needs at least one target")
    inner = torch.quantile(values, levels)
    points = torch.cat([inner.new_tensor([low]), inner, inner.new_tensor([high])])
    gap = (high - low) * 1e-4  # ties (discrete targets) become a hair apart instead of an empty interval
    for index in range(1, bins):
        points[index] = torch.maximum(points[index], points[index - 1] + gap)
    points = points.clamp(max=high)
    for index in range(bins - 2, -1, -1):
        points[index] = torch.minimum(points[index], points[index + 1] - gap)
    return check_points(points.float(), "quantile grid")


def fit_in_family(targets: torch.Tensor, low: float, high: float, bins: int,
                  free_centre: bool = False) -> tuple[torch.Tensor, float, float]:
    """The IN-family grid on [low, high] whose intervals hold the targets most evenly: (points (K,), beta, centre).

    Minimises sum over intervals of (mass - 1/(K-1))^2 over beta in :data:`FIT_BETAS` and, with ``free_centre``,
    the densest point's position over :data:`FIT_CENTRES` (else the centre is 0, the paper's symmetric family).
    A grid search: deterministic, and no local optimum to get stuck in.
    """
    centres = [low + float(f) * (high - low) for f in FIT_CENTRES] if free_centre else [0.0]
    best = (math.inf, 0.0, 0.0)
    for centre in centres:
        candidates = torch.stack([_in_family_f64(low, centre, high, bins, float(beta)) for beta in FIT_BETAS])
        spread = ((interval_mass(targets, candidates) - 1.0 / (bins - 1)) ** 2).sum(-1)  # (B,)
        index = int(spread.argmin())
        if float(spread[index]) < best[0] - 1e-12:
            best = (float(spread[index]), float(FIT_BETAS[index]), centre)
    _, beta, centre = best
    return in_family_points(low, centre, high, bins, beta), beta, centre


def _in_family_f64(low: float, centre: float, high: float, bins: int, beta: float) -> torch.Tensor:
    """:func:`in_family_points` in float64, unchecked (the fit scores thousands of candidates)."""
    half_steps = torch.arange(bins, dtype=torch.float64, device="cpu") - (bins - 1) / 2  # exact 0 at the centre
    unit = half_steps / ((bins - 1) / 2)
    warp = unit.abs() if beta < _UNIFORM_BETA else torch.expm1(beta * unit.abs()) / math.expm1(beta)
    return centre + torch.sign(unit) * torch.where(unit > 0, high - centre, centre - low) * warp
