"""Tests for utils/box_terms.py: the table is the list of box losses, and each term computes its own loss."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from models.detect import QualityBranch
from utils.assign import LevelTargets
from utils.box_terms import BOX_LOSSES, BOX_TERMS, ciou_loss, decoded_box, offset_labels
from utils.boxes import aligned_iou
from utils.cbbl.distribution import two_hot_loss
from utils.head import HeadConfig
from utils.hyp import load_hyp


def positives(num: int = 6, seed: int = 0) -> LevelTargets:
    """P positives with boxes (dx, dy, w, h) in grid units; two sit where their labels leave +-4."""
    generator = torch.Generator().manual_seed(seed)
    centre, size = torch.rand(num, 2, generator=generator) * 1.8 - 0.4, torch.rand(num, 2, generator=generator) + 0.5
    box = torch.cat([centre, size], 1)  # (P, 4)
    box[0, 0], box[1, 3] = -0.4999, 0.05  # a logit label near -8.3 and a size ratio of 1/30
    index = torch.zeros(num, dtype=torch.long)
    return LevelTargets(index, index, index, index, box, torch.ones(num, 2), index, torch.arange(num))


def detect_for(**settings) -> SimpleNamespace:
    """What a term reads of the Detect head (models/detect.py), built from a HeadConfig."""
    head = HeadConfig(**settings)
    grid = head.box_grids()
    return SimpleNamespace(head=head, grid=grid, grid_points=grid.points if grid is not None else None,
                           quality=QualityBranch() if head.score == "quality" else None)


def test_the_table_is_the_list_of_box_losses_everywhere():
    assert BOX_LOSSES == tuple(BOX_TERMS) == ("ciou", "l1", "smooth_l1", "cbbl")
    for name in BOX_LOSSES:
        assert HeadConfig(box_loss=name).box_loss == load_hyp(box_loss=name).head.box_loss == name
    with pytest.raises(ValueError, match="box_loss"):
        HeadConfig(box_loss="giou")


def test_ciou_term_is_one_minus_ciou_of_the_decoded_box():
    assigned, detect = positives(), detect_for(box_loss="ciou")
    raw = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    result = BOX_TERMS["ciou"](raw, assigned, detect)
    pred_box = decoded_box(raw, assigned, "logit")
    assert torch.equal(result.pred_box, pred_box) and result.clamped is None
    torch.testing.assert_close(result.loss, (1 - aligned_iou(pred_box, assigned.box, kind="ciou")).mean())


@pytest.mark.parametrize("name, loss_fn", [("l1", F.l1_loss), ("smooth_l1", F.smooth_l1_loss)])
def test_offset_terms_compare_raw_offsets_with_labels_clamped_to_alpha(name, loss_fn):
    assigned, detect = positives(), detect_for(box_loss=name)
    raw = torch.randn(6, 4, generator=torch.Generator().manual_seed(1)) * 3
    labels = offset_labels(assigned, "logit")
    result = BOX_TERMS[name](raw, assigned, detect)
    torch.testing.assert_close(result.loss, loss_fn(raw, labels.clamp(-4.0, 4.0)))
    assert torch.equal(result.clamped, labels.abs() > 4.0) and result.clamped.any()
    assert torch.equal(result.pred_box, decoded_box(raw, assigned, "logit"))


def test_l1_and_smooth_l1_differ_where_the_residual_passes_the_transition():
    assigned = positives()
    labels = offset_labels(assigned, "logit").clamp(-4.0, 4.0)
    losses = {name: BOX_TERMS[name](labels + 3.0, assigned, detect_for(box_loss=name)).loss
              for name in ("l1", "smooth_l1")}
    torch.testing.assert_close(losses["l1"], torch.tensor(3.0))
    torch.testing.assert_close(losses["smooth_l1"], torch.tensor(2.5))  # |x| - beta / 2 beyond beta = 1


@pytest.mark.parametrize("ciou, restore", [(0.0, "expectation"), (0.5, "top2")])
def test_cbbl_term_is_the_fused_two_hot_loss_plus_the_optional_ciou(ciou, restore):
    assigned = positives()
    detect = detect_for(box_loss="cbbl", grid="uniform", ciou=ciou, restore=restore, um=0.7)
    raw = torch.randn(6, 4 * 11, generator=torch.Generator().manual_seed(2))
    result = BOX_TERMS["cbbl"](raw, assigned, detect)
    labels, logits = offset_labels(assigned, "logit"), raw.unflatten(-1, (4, 11))
    left, weight = detect.grid.two_hot(labels)
    fused, _ = two_hot_loss(logits, left, weight, detect.grid_points, 0.7, "abs")
    pred_box = decoded_box(detect.grid.decode(logits, restore), assigned, "logit")
    torch.testing.assert_close(result.pred_box, pred_box)
    torch.testing.assert_close(result.loss, fused.mean() + ciou_loss(pred_box, assigned.box, ciou))
    assert torch.equal(result.clamped, detect.grid.outside(labels)) and result.clamped.any()


def test_the_quality_term_trains_the_branch_on_each_positives_iou_and_leaves_the_distributions_alone():
    """--cbbl-score quality adds BCE(branch(logits), IoU of the decoded box); both inputs are detached, so the
    box logits get exactly the plain C-BBL gradient and the branch gets one of its own."""
    assigned = positives()
    plain, scored = detect_for(box_loss="cbbl", grid="uniform"), detect_for(box_loss="cbbl", grid="uniform",
                                                                            score="quality")
    raw = torch.randn(6, 4 * 11, generator=torch.Generator().manual_seed(2))
    gradients, results = [], []
    for detect in (plain, scored):
        leaf = raw.clone().requires_grad_(True)
        results.append(BOX_TERMS["cbbl"](leaf, assigned, detect))
        results[-1].loss.backward()
        gradients.append(leaf.grad)
    logits = raw.unflatten(-1, (4, 11))
    iou = aligned_iou(results[0].pred_box, assigned.box, kind="iou").clamp(0, 1)
    expected = F.binary_cross_entropy_with_logits(scored.quality(logits).squeeze(-1), iou)
    torch.testing.assert_close(results[1].loss - results[0].loss, expected)
    torch.testing.assert_close(gradients[1], gradients[0])
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in scored.quality.parameters())
