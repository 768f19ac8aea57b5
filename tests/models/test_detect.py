"""models/detect.py, the Detect head: output layout, hand-worked decode in both modes, bias priors, sparse decode.

(Not tests/test_detect.py: that name belongs to the detect.py CLI.)
"""

from __future__ import annotations

import math

import pytest
import torch

from models.detect import Detect
from tests.cbbl.reference import paper_grid
from utils.head import HeadConfig
from utils.nms import non_max_suppression

NC, STRIDE = 2, 8.0
ANCHORS_PX = [[16.0, 24.0, 40.0, 32.0]]  # one level, two anchors (pixels)


def make_detect(**head) -> Detect:
    detect = Detect(NC, ANCHORS_PX, ch=[4], head=head)
    detect.set_stride(torch.tensor([STRIDE]))
    detect.initialize_biases()
    return detect.eval()


def sigmoid(value: float) -> float:
    return 1 / (1 + math.exp(-value))


def test_training_output_layout_both_modes():
    for head, box_channels in (({"box_loss": "ciou"}, 4), ({"box_loss": "cbbl", "bins": 7}, 28)):
        detect = make_detect(**head).train()
        pred, raw = detect([torch.randn(2, 4, 5, 3)])
        assert pred is None and len(raw) == 1 and raw[0].shape == (2, 2, 5, 3, box_channels + 1 + NC)
        assert detect.box_channels == box_channels and detect.no == box_channels + 1 + NC
    assert torch.allclose(detect.anchors, torch.tensor(ANCHORS_PX).view(1, 2, 2) / STRIDE)


def test_regression_decode_of_hand_set_raw_values():
    detect = make_detect(box_loss="ciou")
    raw = torch.zeros(1, 2, 2, 3, 4 + 1 + NC)  # (B, A, H, W, no)
    raw[0, 1, 1, 2] = torch.tensor([0.3, -0.2, 0.5, -1.0, 1.5, -2.0, 0.7])
    pred = detect.decode_level(raw, 0).view(1, 2, 2, 3, -1)[0, 1, 1, 2]
    expected = [(2 * sigmoid(0.3) - 0.5 + 2) * STRIDE, (2 * sigmoid(-0.2) - 0.5 + 1) * STRIDE,
                (2 * sigmoid(0.5)) ** 2 * 40.0, (2 * sigmoid(-1.0)) ** 2 * 32.0,
                sigmoid(1.5), sigmoid(-2.0), sigmoid(0.7)]
    assert pred.shape == (5 + NC,)
    assert torch.allclose(pred, torch.tensor(expected), atol=1e-5)


def test_cbbl_decode_of_hand_set_logits():
    bins = 3
    detect = make_detect(box_loss="cbbl", bins=bins, alpha=4.0, beta=0.0, grid="in")  # grid points -4, 0, 4
    raw = torch.zeros(1, 2, 1, 2, 4 * bins + 1 + NC)
    logits = [[0.0, 0.0, math.log(3.0)], [2.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 0.0]]  # x, y, w, h
    raw[0, 0, 0, 1, :4 * bins] = torch.tensor(logits).flatten()  # coordinate-major: K logits of x, then y, ...
    raw[0, 0, 0, 1, 4 * bins:] = torch.tensor([0.0, 1.0, -1.0])
    pred = detect.decode_level(raw, 0)[0, 1]  # anchor 0, cell (0, 1)
    offsets, entropies = [], []
    for row in logits:
        weights = [math.exp(v) for v in row]
        probs = [w / sum(weights) for w in weights]
        offsets.append(sum(p * point for p, point in zip(probs, (-4.0, 0.0, 4.0))))
        entropies.append(-sum(p * math.log(p) for p in probs))
    expected = [(2 * sigmoid(offsets[0]) - 0.5 + 1) * STRIDE, (2 * sigmoid(offsets[1]) - 0.5 + 0) * STRIDE,
                (2 * sigmoid(offsets[2])) ** 2 * 16.0, (2 * sigmoid(offsets[3])) ** 2 * 24.0,
                0.5, sigmoid(1.0), sigmoid(-1.0), sum(entropies) / 4]
    assert pred.shape == (5 + NC + 1,)
    assert torch.allclose(pred, torch.tensor(expected), atol=1e-5)


def test_linear_space_and_top2_restore_go_through_the_grid():
    detect = make_detect(box_loss="cbbl", bins=5, space="linear", restore="top2")
    logits = torch.randn(3, 4, 5)
    raw = torch.zeros(1, 2, 1, 3, 20 + 1 + NC)
    raw[0, 0, 0, :, :20] = logits.flatten(1)
    pred = detect.decode_level(raw, 0)[0, :3]  # anchor 0, cells 0..2
    offsets = paper_grid(alpha=4.0, bins=5, beta=5.0).decode(logits, "top2")  # (3, 4)
    expected_x = (offsets[:, 0] + 0.5 + torch.arange(3.0)) * STRIDE
    expected_w = offsets[:, 2].exp() * 16.0
    assert torch.allclose(pred[:, 0], expected_x, atol=1e-5) and torch.allclose(pred[:, 2], expected_w, atol=1e-5)


def test_cbbl_bias_init_puts_the_expectation_at_the_anchor_prior():
    detect = make_detect(box_loss="cbbl", bins=11)
    pred, raw = detect([torch.zeros(1, 4, 2, 2)])  # zero features: the outputs are the biases
    boxes = pred[0].view(2, 2, 2, -1)  # (A, H, W, 5 + nc + 1)
    cell_centres = (torch.arange(2.0) + 0.5) * STRIDE
    assert torch.allclose(boxes[0, 0, :, 0], cell_centres, atol=1e-5)
    assert torch.allclose(boxes[:, 0, 0, 2:4], torch.tensor(ANCHORS_PX).view(2, 2), atol=1e-4)
    assert torch.allclose(boxes[..., -1], torch.full((2, 2, 2), math.log(11)), atol=1e-5)  # uniform: max entropy
    objectness = sigmoid(math.log(8 / (640 / STRIDE) ** 2))
    assert torch.allclose(boxes[..., 4], torch.full((2, 2, 2), objectness), atol=1e-6)
    assert torch.allclose(boxes[..., 5], torch.full((2, 2, 2), 0.6 / (NC - 0.99) / (1 + 0.6 / (NC - 0.99))))


def test_export_friendly_expectation_matches_grid_decode():
    detect = make_detect(box_loss="cbbl", bins=11, beta=3.0)
    logits = torch.randn(6, 4, 11) * 3
    offsets, uncertainty = detect.box_offsets(logits.flatten(1))
    assert torch.allclose(offsets, detect.grid.decode(logits, "expectation"), atol=1e-6)
    assert uncertainty.shape == (6, 1)


def test_per_group_grids_decode_each_coordinate_on_its_own_points():
    centre, size = (-4.0, 0.0, 4.0), (-1.0, 0.5, 3.0)
    detect = make_detect(box_loss="cbbl", bins=3, grid="quantile", centre_points=centre, size_points=size)
    logits = torch.tensor([[0.0, 0.0, 9.0], [9.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 9.0]])  # x, y, w, h
    offsets, _ = detect.box_offsets(logits.flatten())
    expected = [sum(p * v for p, v in zip(row.softmax(0).tolist(), points))
                for row, points in zip(logits, (centre, centre, size, size))]
    assert torch.allclose(offsets, torch.tensor(expected), atol=1e-6)


@pytest.mark.parametrize("grid, score", [("in", "cls"), ("uniform", "cls"), ("quantile", "cls"), ("in", "quality")])
def test_sparse_decode_keeps_the_dense_boxes(grid, score):
    torch.manual_seed(0)
    detect = make_detect(box_loss="cbbl", bins=11, grid=grid, score=score)
    with torch.no_grad():
        detect.m[0].bias.normal_()  # objectness around 0.5: the threshold keeps some anchors and drops others
        if detect.quality is not None:
            detect.quality.mlp[-1].bias.fill_(2.0)  # estimates around 0.9: they lower some scores below it
    features = [torch.randn(2, 4, 12, 10)]
    dense, _ = detect(features)
    conf = 0.3 if score == "cls" else 0.2  # quality lowers every score
    detect.decode_conf = conf
    sparse, raw = detect(features)
    dense_kept = non_max_suppression(dense, conf_thres=conf, iou_thres=0.6, nc=NC)
    sparse_kept = non_max_suppression(sparse, conf_thres=conf, iou_thres=0.6, nc=NC)
    assert raw is None and sum(len(kept) for kept in dense_kept) > 5
    assert (sparse != dense).any()  # the rows NMS cannot keep were not decoded
    for dense_image, sparse_image in zip(dense_kept, sparse_kept):  # the same boxes, up to float rounding
        torch.testing.assert_close(sparse_image, dense_image, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("space", ["logit", "linear"])
def test_side_variance_columns_come_from_the_candidate_rows_softmax(space, monkeypatch):
    torch.manual_seed(0)
    detect = make_detect(box_loss="cbbl", bins=11, space=space)
    with torch.no_grad():
        detect.m[0].bias.normal_()
    features = [torch.randn(2, 4, 12, 10)]
    _, raw = detect(features)  # the dense forward's raw maps: a sparse one has none
    detect.decode_conf = 0.3
    plain, _ = detect(features)
    statistics_rows = []
    box_statistics = detect.box_statistics
    monkeypatch.setattr(detect, "box_statistics",
                        lambda rows: statistics_rows.append(len(rows)) or box_statistics(rows))
    detect.side_variance = True
    with_variance, _ = detect(features)
    width = 5 + NC + 1
    assert with_variance.shape == (*plain.shape[:2], width + 4)
    assert torch.equal(with_variance[..., :width], plain)  # boxes, scores, uncertainty: bit for bit
    # the statistics ran once, on the rows that can pass NMS only (the sparse decode's cost profile)
    scores = raw[0][..., detect.box_channels:].sigmoid().reshape(-1, 1 + NC)
    candidates = (scores[:, 0] > 0.3) & ((scores[:, 1:] * scores[:, :1]).amax(-1) > 0.3)
    assert statistics_rows == [int(candidates.sum())] and 0 < statistics_rows[0] < len(candidates)
    variances = with_variance[..., width:].reshape(-1, 4)
    assert (variances[~candidates] == 0).all() and (variances[candidates] > 0).all()
    # one candidate row against a direct computation from the softmax
    row = int(candidates.nonzero()[0])
    anchor = row % (detect.na * 12 * 10) // (12 * 10)  # rows run batch, anchor, y, x
    logits = raw[0].reshape(-1, detect.no)[row, :detect.box_channels].view(4, 11).double()
    probs = logits.softmax(-1)
    points = detect.grid_points.double()
    centre = (points[:2].sigmoid() * 2 - 0.5) if space == "logit" else points[:2] + 0.5
    size = (points[2:].sigmoid() * 2) ** 2 if space == "logit" else points[2:].exp()
    values = torch.cat((centre, size))  # (4, K): cells, size ratios
    value_variance = (probs * values ** 2).sum(-1) - (probs * values).sum(-1) ** 2
    anchor_px = torch.tensor(ANCHORS_PX[0], dtype=torch.float64).view(2, 2)[anchor]
    side = value_variance[:2] * STRIDE ** 2 + value_variance[2:] * anchor_px ** 2 / 4  # var(c) + var(w) / 4
    box_wh = with_variance.reshape(-1, width + 4)[row, 2:4].double()
    expected = (side / box_wh ** 2).repeat(2)
    torch.testing.assert_close(variances[row].double(), expected, rtol=1e-4, atol=1e-9)


def test_side_variance_leaves_a_regression_head_untouched():
    torch.manual_seed(0)
    detect = make_detect(box_loss="ciou")
    features = [torch.randn(1, 4, 6, 5)]
    plain, _ = detect(features)
    detect.side_variance, detect.decode_conf = True, 0.3
    assert torch.equal(detect(features)[0], plain)


def test_set_head_swaps_the_grid_but_keeps_the_layout():
    detect = make_detect(box_loss="cbbl", bins=5, grid="auto")
    fitted = detect.head.replace(size_points=(-1.0, -0.5, 0.0, 1.0, 2.0))
    detect.set_head(fitted)
    assert detect.head == fitted and torch.equal(detect.grid_points[2], torch.tensor(fitted.size_points))
    with pytest.raises(ValueError, match="keeps box_loss, bins and score"):
        detect.set_head(fitted.replace(bins=7, centre_points=(), size_points=()))


@pytest.mark.parametrize("box_loss", ["ciou", "cbbl"])
def test_under_cpu_bf16_autocast_the_head_convs_and_decode_stay_float32(box_loss):
    """The backbone runs bf16; the prediction convs see and give float32, and the decode is float32 math: the same
    as decoding the (float32) raw maps outside autocast, bit for bit."""
    from models.yolo import Model
    from tests.conftest import TINY_MODEL_YAML

    torch.manual_seed(0)
    model = Model(TINY_MODEL_YAML, head={"box_loss": box_loss}).eval()
    seen = []
    hooks = [conv.register_forward_hook(lambda m, args, out: seen.append((args[0].dtype, out.dtype, m.weight.dtype)))
             for conv in model.detect.m]
    backbone_out = []
    first = next(module for module in model.modules() if isinstance(module, torch.nn.Conv2d))
    hooks.append(first.register_forward_hook(lambda m, args, out: backbone_out.append(out.dtype)))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        pred, raw = model(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    for hook in hooks:
        hook.remove()
    assert backbone_out == [torch.bfloat16]
    assert seen == [(torch.float32, torch.float32, torch.float32)] * len(model.detect.m)
    assert pred.dtype == torch.float32 and all(level.dtype == torch.float32 for level in raw)
    with torch.no_grad():
        decoded = torch.cat([model.detect.decode_level(level, index) for index, level in enumerate(raw)], 1)
    assert torch.equal(pred, decoded)


def test_sparse_decode_under_bf16_autocast_on_channels_last_features_skips_the_full_head_convs():
    """detect.py's CPU path: the backbone bf16 and channels-last, the head float32; with ``decode_conf`` the box
    channels come from two matrix products on the cells (the prediction convs never run over every anchor), and
    the kept boxes are the dense decode's."""
    from models.yolo import Model
    from tests.conftest import TINY_MODEL_YAML

    torch.manual_seed(0)
    model = Model(TINY_MODEL_YAML, head={"box_loss": "cbbl"}).eval().to(memory_format=torch.channels_last)
    with torch.no_grad():
        for conv in model.detect.m:
            conv.bias.view(model.detect.na, model.detect.no)[:, model.detect.box_channels:].normal_()  # scores ~0.5
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)).contiguous(
        memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        dense, _ = model(images)
        calls = []
        hooks = [conv.register_forward_hook(lambda *_: calls.append(1)) for conv in model.detect.m]
        model.detect.decode_conf = 0.3
        sparse, raw = model(images)
    for hook in hooks:
        hook.remove()
    assert calls == [] and raw is None and sparse.dtype == torch.float32
    dense_kept = non_max_suppression(dense, conf_thres=0.3, iou_thres=0.6, nc=model.nc)
    sparse_kept = non_max_suppression(sparse, conf_thres=0.3, iou_thres=0.6, nc=model.nc)
    assert sum(map(len, dense_kept)) > 0
    for dense_image, sparse_image in zip(dense_kept, sparse_kept):
        torch.testing.assert_close(sparse_image, dense_image, rtol=1e-6, atol=1e-5)


def test_the_quality_score_multiplies_objectness_by_the_branchs_iou_estimate():
    """--cbbl-score quality: objectness x class x quality, the estimate read from each box's four distributions."""
    torch.manual_seed(0)
    detect = make_detect(box_loss="cbbl", bins=11, score="quality")
    plain = make_detect(box_loss="cbbl", bins=11)
    plain.load_state_dict({k: v for k, v in detect.state_dict().items() if not k.startswith("quality.")})
    features = [torch.randn(2, 4, 12, 10)]
    scored, raw = detect(features)
    unscored, _ = plain(features)
    logits = raw[0][..., :detect.box_channels].unflatten(-1, (4, 11)).reshape(-1, 4, 11)
    quality = detect.quality(logits).sigmoid().squeeze(-1)  # (N,)
    assert torch.equal(scored[0, :, :4], unscored[0, :, :4]) and torch.equal(scored[..., 5:], unscored[..., 5:])
    torch.testing.assert_close(scored[0, :, 4], unscored[0, :, 4] * quality[: scored.shape[1]])
    assert make_detect(box_loss="cbbl", bins=11).quality is None
    with pytest.raises(ValueError, match="score='quality' reads the C-BBL distributions"):
        HeadConfig(box_loss="ciou", score="quality")
