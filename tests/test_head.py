"""Tests for utils/head.py: HeadConfig validation and round trips, beta by the training size, the paper's grid,
older checkpoints' keys, and the grid fits (equal mass, a known beta recovered), stored in the checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from utils.cbbl.fit import interval_mass
from utils.head import (
    FITTED_GRIDS,
    HeadConfig,
    fit_head_grid,
    paper_beta,
)
from utils.hyp import load_hyp


def paper_points(alpha: float, bins: int, beta: float) -> list[float]:
    """The paper's Eq. (IN) written out independently: uniform on [-alpha, alpha], then the normalised warp."""
    points = []
    for k in range(bins):
        y = -alpha + 2 * alpha * k / (bins - 1)
        points.append(math.copysign(alpha * math.expm1(beta * abs(y) / alpha) / math.expm1(beta), y) if beta else y)
    return points


def test_paper_beta_by_training_size():
    assert paper_beta(640) == 5.0 and paper_beta(1023) == 5.0
    assert paper_beta(1024) == 3.0 and paper_beta(1536) == 3.0


def test_img_1000_rounded_to_the_stride_gives_the_beta_of_1024():
    hyp = load_hyp(box_loss="cbbl", cbbl_grid="in")
    stride = 32
    trained_size = math.ceil(1000 / stride) * stride  # what training uses for --img 1000
    assert trained_size == 1024 and HeadConfig.from_hyp(hyp, trained_size).beta == 3.0
    assert HeadConfig.from_hyp(hyp, 992).beta == 5.0
    assert HeadConfig.from_hyp(hyp.replace(cbbl_beta=5.0), trained_size).beta == 5.0  # an explicit beta wins


@pytest.mark.parametrize("beta", [5.0, 3.0, 0.0])
def test_grid_in_reproduces_the_paper_points_for_both_groups(beta):
    head = HeadConfig(box_loss="cbbl", grid="in", beta=beta)
    expected = torch.tensor(paper_points(4.0, 11, beta))
    for points in (head.centre_points, head.size_points):
        torch.testing.assert_close(torch.tensor(points), expected, rtol=0, atol=1e-6)


def test_paper_flags_give_the_paper_grid_at_any_size():
    hyp = load_hyp(box_loss="cbbl", cbbl_grid="in", cbbl_beta=5.0)
    assert HeadConfig.from_hyp(hyp, 1536).centre_points == HeadConfig(box_loss="cbbl", grid="in", beta=5.0).size_points


def test_size_range_of_the_data_grids_starts_at_the_anchor_t_bound():
    for anchor_t in (4.0, 3.0):
        head = HeadConfig(box_loss="cbbl", grid="uniform", anchor_t=anchor_t)
        low = math.log(1 / (2 * math.sqrt(anchor_t)) / (1 - 1 / (2 * math.sqrt(anchor_t))))  # logit(1 / (2 sqrt t))
        high = min(4.0, math.log(math.sqrt(anchor_t) / 2 / (1 - math.sqrt(anchor_t) / 2)) if anchor_t < 4 else 4.0)
        assert head.size_points[0] == pytest.approx(low, abs=1e-5) and head.size_points[-1] == pytest.approx(high)
        assert head.centre_points[0] == -4.0
    linear = HeadConfig(box_loss="cbbl", grid="uniform", space="linear", anchor_t=4.0)
    assert linear.grid_ranges.size == pytest.approx((-math.log(4.0), math.log(4.0)))


def test_dict_round_trip_and_older_checkpoint_keys():
    head = HeadConfig(box_loss="cbbl", bins=7, alpha=3.0, beta=2.0, space="linear", restore="top2", um=0.5)
    assert HeadConfig.from_dict(head.to_dict()) == head
    old = {"box": "cbbl", "bins": 11, "alpha": 4.0, "beta": 0.0, "space": "logit", "restore": "expectation"}
    assert HeadConfig.from_dict(old).centre_points == pytest.approx(torch.linspace(-4, 4, 11).tolist(), abs=1e-6)
    assert HeadConfig.from_dict({"box": "regress"}).box_mode == "regress"


@pytest.mark.parametrize("settings, message", [({"box": "ciou"}, "box"), ({"colour": 1}, "unknown"),
                                               ({"box_loss": "ciou", "space": "linear"}, "logit"),
                                               ({"restore": "max"}, "restore"), ({"grid": "fancy"}, "grid"),
                                               ({"box_loss": "cbbl", "size_points": [0.0, 1.0]}, "bins=11"),
                                               ({"box_loss": "cbbl", "bins": 3, "centre_points": [0, 0, 1]},
                                                "increasing")])
def test_bad_head_settings_raise(settings, message):
    with pytest.raises(ValueError, match=message):
        HeadConfig.from_dict(settings)


def synthetic_offsets(beta: float, count: int = 40000, seed: int = 0) -> torch.Tensor:
    """(count, 4) offsets whose centre columns fill the IN(beta) grid's intervals equally, size columns skewed."""
    generator = torch.Generator().manual_seed(seed)
    unit = torch.rand(count, 2, generator=generator, dtype=torch.float64) * 2 - 1
    centre = torch.sign(unit) * 4.0 * torch.expm1(beta * unit.abs()) / math.expm1(beta)
    size = torch.randn(count, 2, generator=generator, dtype=torch.float64).mul(0.4).clamp(-1.0, 3.5)
    return torch.cat([centre, size], 1).float()


def test_quantile_grid_gives_equal_mass_per_interval():
    offsets = synthetic_offsets(beta=2.0)
    head = fit_head_grid(HeadConfig(box_loss="cbbl", grid="quantile"), offsets)
    for points, columns in ((head.centre_points, offsets[:, :2]), (head.size_points, offsets[:, 2:])):
        mass = interval_mass(columns.reshape(-1), torch.tensor(points))
        assert (mass - 0.1).abs().max() < 0.02  # within 2 points of 10% per interval
    assert head.size_points[0] == pytest.approx(head.grid_ranges.size[0])


@pytest.mark.parametrize("beta", [1.5, 2.5, 4.0])
def test_auto_fit_recovers_a_known_beta(beta):
    head = fit_head_grid(HeadConfig(box_loss="cbbl", grid="auto"), synthetic_offsets(beta))
    assert head.beta == pytest.approx(beta, abs=0.1) and head.size_beta is not None
    assert head.centre_points[0] == -4.0 and head.size_points[0] == pytest.approx(head.grid_ranges.size[0])


@pytest.mark.parametrize("grid", FITTED_GRIDS)
def test_fitted_grids_are_stored_in_and_restored_from_the_checkpoint(tmp_path, grid):
    from models.yolo import Model, model_from_checkpoint
    from tests.conftest import TINY_MODEL_YAML
    from utils.checkpoint import load_checkpoint, save_checkpoint

    model = Model(TINY_MODEL_YAML, head={"box_loss": "cbbl", "grid": grid}).eval()
    fitted = fit_head_grid(model.detect.head, synthetic_offsets(2.0))
    model.set_head(fitted)
    save_checkpoint({"model": model.state_dict(), "ema": None, "model_yaml": model.yaml, "names": ["a", "b", "c"],
                     "epoch": 0}, tmp_path / "fitted.pt")
    restored = model_from_checkpoint(load_checkpoint(tmp_path / "fitted.pt"))
    assert restored.detect.head == fitted and restored.detect.head != HeadConfig(box_loss="cbbl", grid=grid)
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(images)[0], restored(images)[0])


def test_every_way_of_building_the_head_gives_the_same_head_config(tmp_path, monkeypatch):
    """train options, a hyp file (head: section or older flat keys), models/yolo.py, hubconf and a checkpoint all
    build the head from HeadConfig's one set of defaults."""
    import hubconf
    from models.yolo import Model, main
    from tests.conftest import TINY_MODEL_YAML
    from utils.checkpoint import save_checkpoint
    from utils.engine.options import parse_options

    expected = HeadConfig(box_loss="cbbl")
    monkeypatch.chdir(tmp_path)  # bare names must resolve from any folder
    opts = parse_options(["--hyp", "hyp.scratch-low.yaml", "--box-loss", "cbbl", "--img", "320"])
    section, flat = tmp_path / "hyp.section.yaml", tmp_path / "hyp.flat.yaml"
    section.write_text("head:\n  box_loss: cbbl\n")
    flat.write_text("box_loss: cbbl\n")
    heads = {"train options": HeadConfig.from_hyp(opts.hyp, opts.imgsz),
             "hyp head: section": HeadConfig.from_hyp(load_hyp(section), 320),
             "hyp flat keys": HeadConfig.from_hyp(load_hyp(flat), 320),
             "models/yolo.py": main(["--cfg", "yolov5n.yaml", "--box-loss", "cbbl", "--img", "64"]).detect.head,
             "Model(head=dict)": Model(TINY_MODEL_YAML, head={"box_loss": "cbbl"}).detect.head}
    model = Model(TINY_MODEL_YAML, head=heads["train options"])
    save_checkpoint({"model": model.state_dict(), "ema": None, "model_yaml": model.yaml, "names": ["a", "b", "c"],
                     "epoch": 0}, tmp_path / "cbbl.pt")
    heads["checkpoint via hubconf"] = hubconf.custom(str(tmp_path / "cbbl.pt"), autoshape=False).detect.head
    assert heads == dict.fromkeys(heads, expected) and expected.grid == "auto"
    regression = HeadConfig.from_hyp(parse_options(["--hyp", "hyp.scratch-low.yaml"]).hyp, 320)
    untrained = hubconf.yolov5n(pretrained=False, classes=3, autoshape=False).detect.head
    assert regression == untrained == main(["--cfg", "yolov5n.yaml", "--img", "64"]).detect.head == HeadConfig()


CHECKPOINTS_11207D4 = Path(__file__).resolve().parent / "fixtures" / "cbbl_checkpoint_11207d4"


@pytest.mark.parametrize("name", ["fitted", "legacy"])
def test_checkpoints_written_before_the_head_declaration_decode_identically(name):
    """tests/fixtures/make_cbbl_checkpoint_11207d4.py: written and decoded by commit 11207d4's code."""
    from models.yolo import model_from_checkpoint
    from utils.checkpoint import load_checkpoint

    reference = torch.load(CHECKPOINTS_11207D4 / "decoded.pt", weights_only=True)
    model = model_from_checkpoint(load_checkpoint(CHECKPOINTS_11207D4 / f"{name}.pt"))
    with torch.no_grad():
        decoded = model(reference["image"].float() / 255)[0]
    torch.testing.assert_close(decoded, reference[name], rtol=0, atol=1e-6)
    head = model.detect.head
    if name == "fitted":
        assert head == HeadConfig.from_dict(reference["fitted_head"]) and head.grid == "auto" and head.size_beta
    else:  # box: cbbl without a grid mode: the paper's grid
        assert (head.grid, head.beta, head.bins) == ("in", 3.0, 9)


def test_training_options_stored_before_the_head_declaration_give_the_stored_head(tmp_path):
    """A checkpoint's "opt" from 11207d4 (flat cbbl_* hyp keys) rebuilds the head its model was trained with."""
    from utils.checkpoint import load_checkpoint
    from utils.engine.options import TrainOptions

    checkpoint = load_checkpoint(CHECKPOINTS_11207D4 / "fitted.pt")
    assert "cbbl_bins" in checkpoint["opt"]["hyp"] and "head" not in checkpoint["opt"]["hyp"]
    opts = TrainOptions.from_dict(checkpoint["opt"], cfg="yolov5n.yaml", project=str(tmp_path))
    stored = HeadConfig.from_dict(checkpoint["model_yaml"]["detect"])
    rebuilt = HeadConfig.from_hyp(opts.hyp, opts.imgsz)
    unfitted = {key: value for key, value in stored.settings().items() if key != "beta"}  # beta: fitted
    assert {key: value for key, value in rebuilt.settings().items() if key != "beta"} == unfitted
    assert (rebuilt.bins, rebuilt.space, rebuilt.restore, rebuilt.anchor_t) == (9, "linear", "top2", stored.anchor_t)
