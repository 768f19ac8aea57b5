"""Tests for utils/loss.py: assignment diagnostics, loss terms, and overfitting each mode."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.detect import Detect
from models.yolo import Model
from tests.conftest import positives
from utils.assign import assign_level
from utils.boxes import aligned_iou, encode_offsets
from utils.head import HeadConfig
from utils.hyp import load_hyp
from utils.loss import ComputeLoss, LossGains, LossSettings, _LevelGather, bce_with_logits

MODES = ("ciou", "l1", "smooth_l1", "cbbl")
# Two levels (strides 8 and 16 at 64 px), anchors in pixels: small enough to run hundreds of steps on a CPU.
TINY_CFG = {"nc": 3, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": [[8, 10, 16, 12], [24, 20, 30, 36]],
            "backbone": [[-1, 1, "Conv", [8, 3, 2]], [-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [16, 3, 2]],
                         [-1, 1, "Conv", [32, 3, 2]]],
            "head": [[[2, 3], 1, "Detect", ["nc", "anchors"]]]}


@pytest.fixture
def one_thread():
    """Tiny tensors: extra threads only add contention on a shared CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class HeadOnly(nn.Module):
    """A model that is just a Detect head (the loss reads nothing else)."""

    def __init__(self, head: HeadConfig, nc: int = 3):
        super().__init__()
        self.detect = Detect(nc, TINY_CFG["anchors"], [1, 1], head)
        self.detect.set_stride(torch.tensor([8.0, 16.0]))


def targets_px(rows: list[list[float]], imgsz: int = 64) -> torch.Tensor:
    """[img, cls, cx, cy, w, h] in pixels -> normalised (M, 6)."""
    targets = torch.tensor(rows, dtype=torch.float32).view(-1, 6)
    targets[:, 2:] /= imgsz
    return targets


def random_preds(detect: Detect, batch: int = 2, imgsz: int = 64, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, detect.na, imgsz // int(s), imgsz // int(s), detect.no, generator=generator)
            .requires_grad_() for s in detect.stride.tolist()]


def test_gt_too_small_for_every_anchor_gets_no_positive_and_is_counted() -> None:
    loss_fn = ComputeLoss(HeadOnly(HeadConfig.from_hyp(load_hyp(), 64)), LossSettings.from_hyp(load_hyp()), imgsz=64)
    # 1.5 px: ratio 5.3 to the smallest anchor (8 px); a 5.5x6.5 px box matches both p3 anchors, no p4 one
    targets = targets_px([[0, 0, 20, 20, 1.5, 1.5], [1, 2, 40, 30, 5.5, 6.5]])
    loss_fn(random_preds(loss_fn.detect), targets)
    stats = loss_fn.stats.as_dict()
    assert stats["gt_total"] == 2 and stats["gt_unmatched"] == 1 and stats["gt_unmatched_frac"] == 0.5
    # x = 40 px lies on a p3 grid line: per anchor its cell, the left one, its cell again and the lower one (v7.0)
    assert stats["gt_p3"] == 1 and stats["pos_p3"] == 8 and stats["gt_p4"] == 0 and stats["pos_p4"] == 0
    loss_fn.stats.reset()
    with torch.no_grad():  # validation losses do not count
        loss_fn(random_preds(loss_fn.detect), targets)
    assert loss_fn.stats.as_dict()["gt_total"] == 0


@pytest.mark.parametrize("mode", MODES)
def test_loss_items_and_total(mode: str) -> None:
    hyp = load_hyp(box_loss=mode)
    loss_fn = ComputeLoss(HeadOnly(HeadConfig.from_hyp(hyp, 64)), LossSettings.from_hyp(hyp), imgsz=64)
    preds = random_preds(loss_fn.detect)
    total, items = loss_fn(preds, targets_px([[0, 1, 30, 30, 10, 14], [1, 2, 12, 50, 20, 16]]))
    assert set(items) == {"box", "obj", "cls"}
    assert all(value.dim() == 0 and not value.requires_grad and value > 0 for value in items.values())
    torch.testing.assert_close(total.detach(), sum(items.values()) * 2)
    total.backward()
    assert all(torch.isfinite(pred.grad).all() for pred in preds)


def test_empty_targets_give_objectness_only() -> None:
    hyp = load_hyp(box_loss="cbbl")
    loss_fn = ComputeLoss(HeadOnly(HeadConfig.from_hyp(hyp, 64)), LossSettings.from_hyp(hyp), imgsz=64)
    total, items = loss_fn(random_preds(loss_fn.detect), torch.zeros(0, 6))
    assert items["box"] == 0 and items["cls"] == 0 and items["obj"] > 0 and torch.isfinite(total)
    assert loss_fn.stats.as_dict()["gt_total"] == 0


def test_outputs_of_a_sparse_decode_have_no_raw_maps_to_score() -> None:
    hyp = load_hyp(box_loss="cbbl")
    head = HeadOnly(HeadConfig.from_hyp(hyp, 64))
    loss_fn = ComputeLoss(head, LossSettings.from_hyp(hyp), imgsz=64)
    head.detect.eval().decode_conf = 0.25
    with torch.no_grad():
        outputs = head.detect([torch.rand(1, 1, 8, 8), torch.rand(1, 1, 4, 4)])
    with pytest.raises(ValueError, match="no raw maps to score"):
        loss_fn(outputs, torch.zeros(0, 6))


def test_box_settings_come_from_the_head_alone() -> None:
    targets = targets_px([[0, 0, 20, 20, 12, 10]])
    box_losses = {}
    for um in (0.0, 1.0):
        head = HeadConfig(box_loss="cbbl", grid="uniform", um=um)
        loss_fn = ComputeLoss(HeadOnly(head), LossSettings.from_hyp(load_hyp(box_loss="ciou", cbbl_um=0.5)), imgsz=64)
        box_losses[um] = loss_fn(random_preds(loss_fn.detect), targets)[1]["box"]
    assert box_losses[1.0] > box_losses[0.0] > 0  # the head's UM weight counts, the hyp's box keys do not


def test_gains_are_rescaled_in_a_factory_without_touching_the_hyp() -> None:
    hyp = load_hyp(box=0.05, obj=1.0, cls=0.5)
    gains = LossGains.scaled(LossSettings.from_hyp(hyp), num_levels=4, num_classes=10, imgsz=1280)
    assert gains.box == pytest.approx(0.05 * 3 / 4)
    assert gains.obj == pytest.approx(1.0 * 4 * 3 / 4)
    assert gains.cls == pytest.approx(0.5 * 10 / 80 * 3 / 4)
    assert (hyp.box, hyp.obj, hyp.cls) == (0.05, 1.0, 0.5)


def test_objectness_target_is_the_best_ciou_of_the_decoded_box() -> None:
    hyp = load_hyp()
    loss_fn = ComputeLoss(HeadOnly(HeadConfig.from_hyp(hyp, 64)), LossSettings.from_hyp(hyp), imgsz=64)
    targets = targets_px([[0, 0, 20, 28, 10, 12], [0, 1, 21, 27, 16, 8]])  # both on p3 cell (2, 3)
    pred = torch.zeros(1, 2, 8, 8, loss_fn.detect.no)
    assigned = assign_level(targets, loss_fn.detect.anchors[0], (8, 8), hyp.anchor_t)
    first = assigned.gt == 0
    exact = encode_offsets(assigned.box[first, :2], assigned.box[first, 2:] / assigned.anchor_wh[first], "logit")
    pred[assigned.batch[first], assigned.anchor[first], assigned.cell_y[first], assigned.cell_x[first], :4] = exact
    obj_target = torch.zeros(1, 2, 8, 8)
    flat_index = ((assigned.batch * 2 + assigned.anchor) * 8 + assigned.cell_y) * 8 + assigned.cell_x
    loss_fn._positive_terms(pred.view(-1, loss_fn.detect.no)[flat_index], assigned, flat_index, obj_target)
    # the first GT is predicted exactly: its CIoU of 1 wins over the second GT's on the shared cells
    exact_cells = set(zip(*(v[first].tolist() for v in (assigned.anchor, assigned.cell_x, assigned.cell_y))))
    for anchor, x, y in positives(assigned):
        assert 0 <= obj_target[0, anchor, y, x] <= 1
        if (anchor, x, y) in exact_cells:
            assert obj_target[0, anchor, y, x].item() == pytest.approx(1.0, abs=1e-5)
    assert 0 < obj_target.count_nonzero() <= len(positives(assigned))


def yolov5_ciou(box1: tuple[float, ...], box2: tuple[float, ...], eps: float = 1e-7) -> float:
    """CIoU of two cxcywh boxes written out from Zheng et al. 2020 as YOLOv5 v7.0 computes it (plain floats)."""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1, box2
    h1, h2 = h1 + eps, h2 + eps
    inter = (max(0.0, min(x1 + w1 / 2, x2 + w2 / 2) - max(x1 - w1 / 2, x2 - w2 / 2))
             * max(0.0, min(y1 + h1 / 2, y2 + h2 / 2) - max(y1 - h1 / 2, y2 - h2 / 2)))
    iou = inter / (w1 * h1 + w2 * h2 - inter + eps)
    hull_w = max(x1 + w1 / 2, x2 + w2 / 2) - min(x1 - w1 / 2, x2 - w2 / 2)
    hull_h = max(y1 + h1 / 2, y2 + h2 / 2) - min(y1 - h1 / 2, y2 - h2 / 2)
    centre_sq, diag_sq = (x2 - x1) ** 2 + (y2 - y1) ** 2, hull_w ** 2 + hull_h ** 2 + eps
    v = 4 / math.pi ** 2 * (math.atan(w2 / h2) - math.atan(w1 / h1)) ** 2
    alpha = v / (v - iou + 1 + eps)
    return iou - (centre_sq / diag_sq + v * alpha)


def test_objectness_target_is_yolov5_v7_clamped_ciou() -> None:
    """One GT, zero raw outputs: every positive decodes to its anchor at offset (0.5, 0.5) of its cell."""
    hyp = load_hyp()
    loss_fn = ComputeLoss(HeadOnly(HeadConfig.from_hyp(hyp, 64)), LossSettings.from_hyp(hyp), imgsz=64)
    targets = targets_px([[0, 0, 21, 27, 14, 9]])  # p3 (stride 8): centre (2.625, 3.375) cells, 1.75 x 1.125
    assigned = assign_level(targets, loss_fn.detect.anchors[0], (8, 8), hyp.anchor_t)
    flat_index = ((assigned.batch * 2 + assigned.anchor) * 8 + assigned.cell_y) * 8 + assigned.cell_x
    obj_target = torch.zeros(1, 2, 8, 8)
    loss_fn._positive_terms(torch.zeros(len(flat_index), loss_fn.detect.no), assigned, flat_index, obj_target)
    anchors_px = TINY_CFG["anchors"][0]
    seen = {"positive": 0, "clamped": 0}
    for anchor, x, y in positives(assigned):
        pred = (x + 0.5, y + 0.5, anchors_px[2 * anchor] / 8, anchors_px[2 * anchor + 1] / 8)  # grid units
        ciou = yolov5_ciou(pred, (21 / 8, 27 / 8, 14 / 8, 9 / 8))
        assert obj_target[0, anchor, y, x].item() == pytest.approx(max(ciou, 0.0), abs=1e-5)
        seen["positive" if ciou > 0 else "clamped"] += 1
    assert seen["positive"] and seen["clamped"], f"the case should cover both sides of the clamp: {seen}"


def test_level_gather_matches_plain_indexing_and_its_gradient() -> None:
    generator = torch.Generator().manual_seed(4)
    pred = torch.randn(2, 3, 4, 5, 9, generator=generator, dtype=torch.float64, requires_grad=True)
    cells = [torch.randint(0, size, (7,), generator=generator) for size in (2, 3, 4, 5)]  # repeats included
    flat_index = ((cells[0] * 3 + cells[1]) * 4 + cells[2]) * 5 + cells[3]
    obj, positive = _LevelGather.apply(pred, flat_index, 4)
    torch.testing.assert_close(positive, pred[cells[0], cells[1], cells[2], cells[3]].float())
    obj_weight, positive_weight = torch.rand(obj.shape, generator=generator), torch.rand(positive.shape)
    (grad,) = torch.autograd.grad((obj * obj_weight).sum() + (positive * positive_weight).sum(), pred)
    plain = (pred[..., 4] * obj_weight).sum() + (pred[cells[0], cells[1], cells[2], cells[3]] * positive_weight).sum()
    (expected,) = torch.autograd.grad(plain, pred)
    torch.testing.assert_close(grad, expected)


def test_focal_bce_and_label_smoothing() -> None:
    logits, target = torch.tensor([4.0, -4.0, 0.5]), torch.tensor([1.0, 0.0, 1.0])
    plain = bce_with_logits(logits, target, torch.tensor(1.0))
    torch.testing.assert_close(plain, F.binary_cross_entropy_with_logits(logits, target))
    assert bce_with_logits(logits, target, torch.tensor(1.0), focal_gamma=1.5) < plain
    preds = [torch.full((1, 2, size, size, 4 + 1 + 3), -10.0) for size in (8, 4)]
    for pred in preds:
        pred[..., 5] = 10.0  # class 0, confidently, everywhere
    targets = targets_px([[0, 0, 20, 28, 10, 12]])
    head = HeadOnly(HeadConfig.from_hyp(load_hyp(), 64))
    settings = {smoothing: LossSettings.from_hyp(load_hyp(label_smoothing=smoothing)) for smoothing in (0.0, 0.2)}
    cls_loss = {smoothing: ComputeLoss(head, settings[smoothing], 64)(preds, targets)[1]["cls"]
                for smoothing in (0.0, 0.2)}
    assert cls_loss[0.0] < 1e-5 < cls_loss[0.2]


def test_offset_labels_beyond_alpha_are_counted() -> None:
    hyp = load_hyp(box_loss="cbbl")
    loss_fn = ComputeLoss(HeadOnly(HeadConfig.from_hyp(hyp, 64)), LossSettings.from_hyp(hyp), imgsz=64)
    # centre x at 2.5005 cells: the right neighbour's dx = -0.4995 -> logit label about -8.3 (clamped at -4)
    loss_fn(random_preds(loss_fn.detect, batch=1), targets_px([[0, 0, 8 * 2.5005, 8 * 3.2, 10, 12]]))
    stats = loss_fn.stats.as_dict()
    assert stats["clamped"] >= 2 and 0 < stats["clamped_frac"] < 1


@pytest.mark.parametrize("mode", MODES)
def test_tiny_model_overfits_one_batch(mode: str, one_thread) -> None:
    torch.manual_seed(0)
    hyp = load_hyp(box_loss=mode)
    model = Model(TINY_CFG, head=HeadConfig.from_hyp(hyp, 64)).train()
    loss_fn = ComputeLoss(model, LossSettings.from_hyp(hyp), imgsz=64)
    # three objects whose positives never share a (cell, anchor): every target is reachable at once
    targets = targets_px([[0, 0, 13, 19, 12, 14], [0, 1, 46, 44, 28, 24], [0, 2, 44, 14, 10, 8]])
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(200):
        total, _ = loss_fn(model(image), targets)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
    assert losses[-1] < 0.1 * losses[0], f"{mode}: loss {losses[0]:.4f} -> {losses[-1]:.4f}"
    with torch.no_grad():
        ious = []
        for level, pred in enumerate(model(image).raw):
            assigned = assign_level(targets, model.detect.anchors[level], tuple(pred.shape[2:4]), hyp.anchor_t)
            cells = torch.stack([assigned.anchor, assigned.cell_y, assigned.cell_x], 1)
            assert len(cells.unique(dim=0)) == len(cells), "test targets must not share a positive"
            raw = pred[assigned.batch, assigned.anchor, assigned.cell_y, assigned.cell_x, :model.detect.box_channels]
            ious.append(aligned_iou(loss_fn.box_term(raw, assigned)[0], assigned.box))
    ious = torch.cat(ious)
    assert len(ious) > 0 and ious.mean() > 0.9, f"{mode}: mean IoU {ious.mean():.3f}, min {ious.min():.3f}"
