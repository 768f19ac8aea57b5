"""Plain reference forms of the C-BBL encodings and losses, which the fused library code is tested against."""

from __future__ import annotations

import torch

from utils.cbbl.distribution import entropy, log_softmax
from utils.cbbl.grid import CBBLGrid, in_family_points


def paper_grid(alpha: float = 4.0, bins: int = 11, beta: float = 5.0) -> CBBLGrid:
    """The paper's symmetric IN grid on [-alpha, alpha] (grid mode 'in')."""
    return CBBLGrid(in_family_points(-alpha, 0.0, alpha, bins, beta))


def dense_two_hot(grid: CBBLGrid, t: torch.Tensor) -> torch.Tensor:
    """Raw offsets (...) -> two-hot targets (..., K), clamped to the range; sum(p* y') == t inside."""
    left, weight_left = grid.two_hot(t)
    target = torch.zeros(*left.shape, grid.bins, device=t.device, dtype=weight_left.dtype)  # (..., K)
    target.scatter_(-1, left.unsqueeze(-1), weight_left.unsqueeze(-1))
    target.scatter_add_(-1, left.unsqueeze(-1) + 1, (1 - weight_left).unsqueeze(-1))
    return target


def ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy -sum p* log softmax(l) over the last axis: (..., K), (..., K) -> (...)."""
    return -(target.float() * log_softmax(logits)).sum(-1)


def distribution_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of a distribution (..., K) -> (...), with 0 log 0 = 0 (for two-hot targets)."""
    probs = probs.float()
    return -torch.where(probs > 0, probs * probs.clamp(min=1e-30).log(), torch.zeros_like(probs)).sum(-1)


def um_loss(logits: torch.Tensor, target: torch.Tensor, mode: str = "abs") -> torch.Tensor:
    """Uncertainty loss over the last axis: (..., K), (..., K) -> (...). ``abs``: |H(p*) - H(p)| (seed paper);
    ``min``: H(p) alone (the method's later version)."""
    predicted = entropy(logits)
    return predicted if mode == "min" else (distribution_entropy(target) - predicted).abs()
