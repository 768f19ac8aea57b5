"""Tests for utils/assign.py: hand-worked YOLOv5 assignment cases, batching and level names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import positives
from utils.assign import assign_level, level_name


def test_assignment_own_cell_and_two_nearest_neighbours() -> None:
    anchors = torch.tensor([[1.0, 1.0], [2.0, 2.0], [8.0, 8.0]])  # grid units
    targets = torch.tensor([[0, 1, 2.3 / 8, 5.7 / 8, 1.5 / 8, 1.5 / 8]])  # centre (2.3, 5.7), size 1.5 cells
    assigned = assign_level(targets, anchors, (8, 8), anchor_t=4.0)
    # anchors 0 (ratio 1.5) and 1 (1.33) match, 2 (5.3) does not; x frac .3 -> left cell, y frac .7 -> lower cell
    assert positives(assigned) == {(a, x, y) for a in (0, 1) for x, y in ((2, 5), (1, 5), (2, 6))}
    expected_dxy = {(2, 5): (0.3, 0.7), (1, 5): (1.3, 0.7), (2, 6): (0.3, -0.3)}
    for x, y, box in zip(assigned.cell_x.tolist(), assigned.cell_y.tolist(), assigned.box):
        torch.testing.assert_close(box, torch.tensor([*expected_dxy[(x, y)], 1.5, 1.5]), rtol=0, atol=1e-5)
    assert assigned.cls.tolist() == [1] * 6 and assigned.gt.tolist() == [0] * 6


def test_assignment_at_the_border_and_on_a_cell_middle_line() -> None:
    anchors = torch.tensor([[1.0, 1.0]])
    corner = assign_level(torch.tensor([[0, 0, 0.3 / 8, 7.8 / 8, 1 / 8, 1 / 8]]), anchors, (8, 8), 4.0)
    assert positives(corner) == {(0, 0, 7)}  # both neighbours fall outside the grid
    middle = assign_level(torch.tensor([[0, 0, 3.5 / 8, 4.2 / 8, 1 / 8, 1 / 8]]), anchors, (8, 8), 4.0)
    assert positives(middle) == {(0, 3, 4), (0, 3, 3)}  # no x neighbour: dx would sit on -0.5 or 1.5


@settings(deadline=None, max_examples=25)
@given(seed=st.integers(0, 10_000), num_first=st.integers(0, 6), num_second=st.integers(0, 6))
def test_batched_assignment_equals_per_image(seed: int, num_first: int, num_second: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    boxes = torch.rand(num_first + num_second, 4, generator=generator) * torch.tensor([1, 1, 0.3, 0.3]) + 0.01
    image_idx = torch.tensor([0.0] * num_first + [1.0] * num_second)
    targets = torch.cat([image_idx[:, None], torch.zeros(len(boxes), 1), boxes], 1)
    anchors = torch.tensor([[1.0, 1.5], [3.0, 2.0]])
    batched = assign_level(targets, anchors, (8, 8), 4.0)
    rows = lambda a, offset=0: {(b, an, y, x, g + offset) for b, an, y, x, g in  # noqa: E731
                                zip(*(v.tolist() for v in (a.batch, a.anchor, a.cell_y, a.cell_x, a.gt)))}
    first = assign_level(targets[:num_first], anchors, (8, 8), 4.0)
    second = assign_level(targets[num_first:], anchors, (8, 8), 4.0)
    assert rows(batched) == rows(first) | rows(second, offset=num_first)
    assert torch.all((batched.box[:, :2] > -0.5) & (batched.box[:, :2] < 1.5))
    ratio = batched.box[:, 2:] / batched.anchor_wh
    assert torch.all(torch.max(ratio, 1 / ratio) < 4.0)


def test_level_names_follow_the_stride() -> None:
    assert [level_name(s, i) for i, s in enumerate([4.0, 8.0, 16.0, 32.0])] == ["p2", "p3", "p4", "p5"]
    assert level_name(12.0, 1) == "l1"


ASSIGN_REFERENCE = Path(__file__).resolve().parent / "fixtures" / "assign_targets.npz"


def test_assignment_equals_yolov5_v7_build_targets() -> None:
    """Positives, their order, boxes, anchors and classes equal v7.0's ComputeLoss.build_targets on targets
    with centres on grid lines, middle lines and the borders of every level (tests/fixtures/make_assign_targets.py)."""
    reference = np.load(ASSIGN_REFERENCE, allow_pickle=False)
    targets = torch.from_numpy(reference["targets"])
    anchor_t = json.loads(str(reference["about"]))["anchor_t"]
    for level in range(3):
        expected = {key: reference[f"{level}/{key}"] for key in
                    ("image", "anchor", "cell_y", "cell_x", "box", "anchor_wh", "cls")}
        assigned = assign_level(targets, torch.from_numpy(reference[f"{level}/anchors"]),
                                tuple(int(v) for v in reference[f"{level}/grid_hw"]), anchor_t)
        got = {"image": assigned.batch, "anchor": assigned.anchor, "cell_y": assigned.cell_y,
               "cell_x": assigned.cell_x, "box": assigned.box, "anchor_wh": assigned.anchor_wh, "cls": assigned.cls}
        for key, value in got.items():
            np.testing.assert_array_equal(value.numpy(), expected[key], err_msg=f"level {level} {key}")


def test_centre_on_a_grid_line_takes_both_neighbours_as_yolov5() -> None:
    anchors = torch.tensor([[1.0, 1.0]])
    assigned = assign_level(torch.tensor([[0, 0, 3 / 8, 4.2 / 8, 1 / 8, 1 / 8]]), anchors, (8, 8), 4.0)
    cells = list(zip(assigned.cell_x.tolist(), assigned.cell_y.tolist()))
    assert cells == [(3, 4), (2, 4), (3, 3), (3, 4)]  # own, left, upper (y frac .2), own again (v7.0's right)
    assert assigned.box[:, 0].tolist() == [0.0, 1.0, 0.0, 0.0]
