"""C-BBL distributions: the softmax over a grid's K logits, what the head decodes from it, and the loss.

The head decodes the expectation of the softmax (and its entropy, the localization uncertainty);
``side_statistics`` adds the variance of the decoded values, which variance voting reads. The training loss is
:func:`two_hot_loss`, fused: KL(p* || p) + w * L_UM in one softmax with a closed-form gradient
(tests/cbbl/reference.py holds the plain cross-entropy and uncertainty-matching forms it is tested against).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F

from utils.boxes import decode_offsets

UM_MODES = ("abs", "min")
# Probabilities per coordinate kept as the distribution's top-k mass (GFLv2's DGQP reads the top 4).
TOP_K = 4
# The detection score: YOLOv5's objectness x class, or times a learned IoU estimate read from the distributions.
SCORE_MODES = ("cls", "quality")
# Inputs of the quality estimate: per coordinate the top-k probabilities and their mean (GFLv2's DGQP).
QUALITY_FEATURES = 4 * (TOP_K + 1)


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


def expectation_and_entropy(logits: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One log-softmax for both decode outputs: logits (..., C, K), points (C, K) or (K,) -> (expectation (..., C),
    entropy (..., C)).

    The expectation is softmax followed by a fixed K -> 1 projection on each coordinate's grid (export friendly).
    """
    log_probs = log_softmax(logits)  # (..., C, K)
    probs = log_probs.exp()
    return (probs * points.float()).sum(-1), -(probs * log_probs).sum(-1)


class SideStats(NamedTuple):
    """What variance voting reads from C-BBL distributions, from one log-softmax (see :func:`side_statistics`).

    mean, entropy: (..., C) the decode's expectation on the grid's own offset scale and its entropy (nats);
    value_variance: (..., C) the variance of the decoded values (cells for x, y; size ratios for w, h).
    """

    mean: torch.Tensor
    entropy: torch.Tensor
    value_variance: torch.Tensor


def side_statistics(logits: torch.Tensor, points: torch.Tensor, values: torch.Tensor) -> SideStats:
    """Logits (..., C, K) on grid ``points`` (C, K) or (K,), decoding to ``values`` (same shape as ``points``:
    :func:`decoded_points`) -> :class:`SideStats`.

    The variance of the decoded value is exact over the K bins (no linearisation of the sigmoid decode). mean and
    entropy are computed exactly as :func:`expectation_and_entropy` computes them, so boxes decoded from either agree
    bit for bit. Nothing else is computed: exports evaluate this for every anchor.
    """
    log_probs = log_softmax(logits)  # (..., C, K)
    probs = log_probs.exp()
    values = values.float()
    value_mean = (probs * values).sum(-1, keepdim=True)  # (..., C, 1)
    return SideStats((probs * points.float()).sum(-1), -(probs * log_probs).sum(-1),
                     (probs * (values - value_mean) ** 2).sum(-1))


def quality_features(logits: torch.Tensor) -> torch.Tensor:
    """Box logits (..., 4, K) -> (..., QUALITY_FEATURES): each coordinate's top-k probabilities and their mean, the
    shape of the distribution a sharp, well-placed box has (GFLv2's DGQP input), whatever the offset."""
    topk = log_softmax(logits).exp().topk(min(TOP_K, logits.shape[-1]), dim=-1).values  # (..., 4, k)
    return torch.cat((topk, topk.mean(-1, keepdim=True)), -1).flatten(-2)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy H(softmax(l)) in nats over the last axis: (..., K) -> (...); the localization uncertainty."""
    log_probs = log_softmax(logits)
    return -(log_probs.exp() * log_probs).sum(-1)


def decoded_points(points: torch.Tensor, space: str) -> torch.Tensor:
    """Grid points (4, K) of the offsets x, y, w, h -> the values they decode to (4, K): cells for x, y, size ratios
    to the anchor for w, h (:func:`decode_offsets` applied to every bin)."""
    dxy, ratio = decode_offsets(points.float().T, space)  # (K, 2) each
    return torch.cat((dxy, ratio), -1).T


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
                 um_weight: float, um_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """C-BBL box loss per coordinate, fused, and the expectation decode of the same softmax.

    Args:
        logits: (..., K); left, weight_left: (...) two-hot label from utils/cbbl/grid.py ``CBBLGrid.two_hot``;
        points: (K,) one grid for every coordinate, or (C, K) one per coordinate (the last axis of ``left``).
    Returns:
        loss (...) float32 = CE(p*, p) - H(p*) + um_weight * L_UM, L_UM = |H(p*) - H(p)| (``abs``, the seed
        paper) or H(p) (``min``, the method's later version): the cross-entropy less the label's own entropy
        (KL divergence: same gradient p - p*, 0 at the optimum);
        expectation (...) = sum_i p_i y'_i, without gradient (for the objectness target).
    """
    if um_mode not in UM_MODES:
        raise ValueError(f"unknown UM mode {um_mode!r}; expected one of {UM_MODES}")
    columns = logits.float().movedim(-1, 0).contiguous()  # (K, ...), K outermost in memory
    points = points.to(device=columns.device, dtype=torch.float32)
    points = points.T.contiguous() if points.dim() == 2 else points  # (K, C): K first like the logits
    loss, expectation = _TwoHotLoss.apply(columns, left, weight_left.float(), points, float(um_weight), um_mode)
    return loss, expectation
