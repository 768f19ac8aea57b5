"""Tests for utils/infer/export.py and export.py: files beside the weights as YOLOv5 writes them (or in a run
folder when asked; never over a file we did not write), ONNX Runtime and TorchScript outputs equal PyTorch's,
the C-BBL decode inside the graph, dynamic and fixed shapes, and detect.py on the exported files."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import export
from detect import run as detect_run
from export import run as run_export
from utils.data.tiles import TileSettings
from utils.head import FITTED_GRIDS, GRID_MODES
from utils.infer.backend import METADATA_KEY, DetectBackend
from utils.infer.export import ExportOptions, onnx_max_error

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")


def export_run(weights, **options):
    """The library's export into a run folder beside the test's weights, not the repository's runs/."""
    return run_export(weights=weights, project=str(Path(weights).parent / "export"), **options)


@pytest.mark.parametrize("box", ["regress", "cbbl"])
def test_export_matches_pytorch(tiny_checkpoint, box, caplog):
    weights = tiny_checkpoint(box, name="best.pt")
    written = export.main(["--weights", str(weights), "--include", "onnx", "torchscript", "--imgsz", "64",
                           "--dynamic", "--side-variance", "--project", str(weights.parent / "export")])
    assert written == [weights.parent / "export" / "exp" / name for name in ("best.onnx", "best.torchscript")]
    reference = DetectBackend(weights)
    images = torch.rand(2, 3, 96, 64, generator=torch.Generator().manual_seed(3))
    expected = reference(images)
    for path in written:
        with caplog.at_level(logging.WARNING):
            backend = DetectBackend(path)
        assert ("a TorchScript file is code" in caplog.text) == (path.suffix == ".torchscript")
        assert (backend.nc, backend.names, backend.stride, backend.num_extra) == (3, reference.names, 16,
                                                                                   reference.num_extra)
        got = backend(images)
        assert got.shape == expected.shape
        assert ((got - expected).abs() / expected.abs().clamp(min=1)).max() < 1e-4
        if box == "cbbl":  # --cbbl-fusion reads the export's side variances as it reads the checkpoint's
            assert backend.decode_side_variance(True) and reference.decode_side_variance(True)
            got, want = backend(images), reference(images)
            assert got.shape[-1] == 5 + 3 + 1 + 4 and ((got - want).abs() / want.abs().clamp(min=1)).max() < 1e-4
            reference.decode_side_variance(False)
    graph = onnx.load(str(written[0]))
    assert any(prop.key == METADATA_KEY for prop in graph.metadata_props)
    ops = {node.op_type for node in graph.graph.node}
    if box == "cbbl":
        assert {"Mul", "ReduceSum"} <= ops and ops & {"Softmax", "LogSoftmax", "Exp"}, "C-BBL softmax + grid projection"
    outputs = [output.name for output in graph.graph.output]
    assert outputs == (["output0", "uncertainty", "side_variance"] if box == "cbbl" else ["output0"])


def test_cbbl_export_keeps_yolov5_layout_first(tmp_path, tiny_checkpoint):
    """YOLOv5-style post-processors read output0 as (1, N, 5 + nc); the uncertainty is a second output, and with
    --side-variance the side variances a third."""
    weights = tiny_checkpoint("cbbl", name="best.pt")
    onnx_path, script_path = export_run(weights, include=["onnx", "torchscript"], imgsz=64)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    predictions, uncertainty = session.run(None, {"images": np.zeros((1, 3, 64, 64), np.float32)})
    num_boxes = predictions.shape[1]
    assert predictions.shape == (1, num_boxes, 5 + 3) and uncertainty.shape == (1, num_boxes, 1)
    traced = torch.jit.load(str(script_path))(torch.zeros(1, 3, 64, 64))
    assert [tuple(t.shape) for t in traced] == [(1, num_boxes, 8), (1, num_boxes, 1)]
    with_variance = export_run(weights, include=["onnx"], imgsz=64, side_variance=True)[0]
    session = onnxruntime.InferenceSession(str(with_variance), providers=["CPUExecutionProvider"])
    *_, variance = session.run(None, {"images": np.zeros((1, 3, 64, 64), np.float32)})
    assert variance.shape == (1, num_boxes, 4) and (variance >= 0).all() and (variance > 0).any()
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    cv2.imwrite(str(image_dir / "x.png"), np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    detect_run(weights=str(onnx_path), source=str(image_dir), imgsz=64, conf_thres=0.1, save_txt=True,
               save_conf=True, nosave=True, project=str(tmp_path), name="onnx")
    from_pt = detect_run(weights=str(weights), source=str(image_dir), imgsz=64, conf_thres=0.1, nosave=True,
                         project=str(tmp_path))[0]
    rows = np.loadtxt(tmp_path / "onnx" / "labels" / "x.txt", ndmin=2)
    assert rows.shape == (len(from_pt.conf), 7), "class, box, conf and the uncertainty column"
    np.testing.assert_allclose(np.sort(rows[:, 6]), np.sort(from_pt.uncertainty), atol=1e-3)


def test_yolov5_format_names_and_options(tmp_path, tiny_checkpoint, monkeypatch):
    weights = tiny_checkpoint("regress", name="best.pt")
    with pytest.raises(ValueError, match="tflite: YOLOv5 exports this but this project does not"):
        ExportOptions(weights=str(weights), include=("onnx", "tflite"))
    with pytest.raises(ValueError, match="unknown or empty"):
        ExportOptions(weights=str(weights), include=("tensorflow",))
    assert ExportOptions(weights=str(weights), include=("ONNX",)).include == ("onnx",)
    with pytest.raises(ValueError, match="--weights: give the .pt checkpoint"):
        ExportOptions()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--half exports float16 and needs a CUDA --device"):
            export_run(weights, include=["onnx"], imgsz=64, half=True)
    with pytest.raises(ValueError, match="--half and --dynamic"):
        ExportOptions(weights=str(weights), half=True, dynamic=True)
    monkeypatch.setitem(sys.modules, "onnxsim", None)  # as if not installed
    with pytest.raises(ValueError, match="pip install onnxsim"):
        export_run(weights, include=["onnx"], imgsz=64, simplify=True)
    assert not (weights.parent / "export").exists(), "nothing written before the missing dependency is named"


def test_simplify_with_onnxsim(tiny_checkpoint):
    pytest.importorskip("onnxsim")
    weights = tiny_checkpoint("cbbl", name="best.pt")
    plain = export_run(weights, include=["onnx"], imgsz=64)[0]
    plain_nodes = len(onnx.load(str(plain)).graph.node)
    simplified = export_run(weights, include=["onnx"], imgsz=64, simplify=True)[0]  # checked against PyTorch
    graph = onnx.load(str(simplified))
    assert len(graph.graph.node) <= plain_nodes and any(p.key == METADATA_KEY for p in graph.metadata_props)



@pytest.mark.parametrize("grid", GRID_MODES)
def test_every_grid_mode_exports_to_onnx_and_matches(tiny_checkpoint, grid):
    fitted = {"size_points": tuple(torch.linspace(-0.9, 2.0, 11).tolist())} if grid in FITTED_GRIDS else {}
    weights = tiny_checkpoint("cbbl", name="best.pt", head={"grid": grid, **fitted})
    onnx_path = export_run(weights, include=["onnx"], imgsz=64)[0]
    model = DetectBackend(weights).models[0]
    assert model.detect.head.grid == grid and model.detect.grid_points[2].tolist() == pytest.approx(
        list(model.detect.head.size_points))
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    assert onnx_max_error(onnx_path, model, images) < 1e-4


def test_fixed_shape_onnx_and_detect_on_it(tmp_path, tiny_checkpoint):
    weights = tiny_checkpoint("cbbl", name="best.pt")
    onnx_path = export_run(weights, include=["onnx"], imgsz=64, batch_size=2, side_variance=True)[0]
    backend = DetectBackend(onnx_path)
    assert backend.is_onnx and backend.fixed_imgsz == (64, 64) and backend.fixed_batch == 2
    assert backend(torch.rand(3, 3, 64, 64)).shape[0] == 3, "batches are chunked and padded to the fixed batch"
    with pytest.raises(ValueError, match="takes \\(64, 64\\)"):
        backend(torch.rand(1, 3, 32, 64))
    model = DetectBackend(weights).models[0]
    model.detect.side_variance = True  # as the export ran it
    assert onnx_max_error(onnx_path, model, torch.rand(2, 3, 64, 64)) < 1e-4
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    square = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)  # same letterbox for both
    cv2.imwrite(str(image_dir / "x.png"), square)
    options = {"source": str(image_dir), "imgsz": 64, "conf_thres": 0.1, "nosave": True, "project": str(tmp_path)}
    from_onnx = detect_run(weights=str(onnx_path), **options)[0]
    from_pt = detect_run(weights=str(weights), **options)[0]
    assert len(from_onnx.conf) == len(from_pt.conf) > 0
    np.testing.assert_allclose(from_onnx.xyxy, from_pt.xyxy, atol=1e-2)
    np.testing.assert_allclose(from_onnx.uncertainty, from_pt.uncertainty, atol=1e-4)
    voted_onnx = detect_run(weights=str(onnx_path), cbbl_fusion=True, **options)[0]
    voted_pt = detect_run(weights=str(weights), cbbl_fusion=True, **options)[0]
    np.testing.assert_allclose(voted_onnx.xyxy, voted_pt.xyxy, atol=1e-2)


def test_an_export_without_side_variances_keeps_plain_nms(tiny_checkpoint, caplog):
    """A C-BBL export without --side-variance (the default; and every export made before the option, whose
    metadata lacks the key) runs as it did: --cbbl-fusion says it cannot and NMS stays plain."""
    weights = tiny_checkpoint("cbbl", name="best.pt")
    onnx_path = export_run(weights, include=["onnx"], imgsz=64)[0]
    graph = onnx.load(str(onnx_path))
    assert [output.name for output in graph.graph.output] == ["output0", "uncertainty"]
    entry = next(prop for prop in graph.metadata_props if prop.key == METADATA_KEY)
    assert json.loads(entry.value)["side_variance"] is False
    backend = DetectBackend(onnx_path)
    with caplog.at_level(logging.WARNING):
        assert not backend.decode_side_variance(True)
    assert "no C-BBL box distributions" in caplog.text
    assert backend(torch.rand(1, 3, 64, 64)).shape[-1] == 5 + 3 + 1


def test_export_bad_inputs(tmp_path, tiny_checkpoint):
    weights = tiny_checkpoint("regress")
    with pytest.raises(ValueError, match="unknown or empty"):
        export_run(weights, include=[])
    with pytest.raises(ValueError, match="multiples of the model stride 16"):
        export_run(weights, include=["onnx"], imgsz=60)
    with pytest.raises(ValueError, match="takes a .pt"):
        export_run(tmp_path / "model.onnx")
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        export_run(tmp_path / "absent.pt")
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 3, 1), (torch.rand(1, 3, 8, 8),), str(plain), dynamo=False)
    with pytest.raises(ValueError, match=f"no '{METADATA_KEY}' metadata"):
        DetectBackend(plain)


def test_export_writes_beside_the_weights_like_yolov5(tiny_checkpoint, caplog):
    """best.pt -> best.onnx and best.torchscript in the same folder; a later export replaces its own files."""
    weights = tiny_checkpoint("regress", name="best.pt")
    written = export.main(["--weights", str(weights), "--include", "onnx", "torchscript", "--imgsz", "64"])
    assert written == [weights.with_suffix(".onnx"), weights.with_suffix(".torchscript")]
    before = weights.with_suffix(".onnx").read_bytes()
    again = run_export(weights=weights, include=["onnx"], imgsz=64, dynamic=True)
    assert again == [weights.with_suffix(".onnx")] and weights.with_suffix(".onnx").read_bytes() != before
    assert DetectBackend(again[0]).fixed_imgsz is None, "the dynamic export replaced the fixed one"
    assert sorted(p.name for p in weights.parent.iterdir()) == ["best.onnx", "best.pt", "best.torchscript"], \
        "no temporary files left"


@pytest.mark.parametrize("suffix", [".onnx", ".torchscript"])
def test_export_never_replaces_a_file_it_did_not_write(tiny_checkpoint, suffix):
    weights = tiny_checkpoint("regress", name="best.pt")
    theirs = weights.with_suffix(suffix)  # e.g. YOLOv5's own export of the same run
    plain = torch.nn.Conv2d(3, 3, 1)
    if suffix == ".onnx":
        torch.onnx.export(plain, (torch.rand(1, 3, 8, 8),), str(theirs), dynamo=False)
    else:
        torch.jit.save(torch.jit.trace(plain, torch.rand(1, 3, 8, 8)), str(theirs))
    original = theirs.read_bytes()
    with pytest.raises(ValueError, match=f"best{suffix} already exists and was not written by this project.*"
                                         "--project/--name"):
        run_export(weights=weights, include=[suffix[1:]], imgsz=64)
    assert theirs.read_bytes() == original
    first = export_run(weights, include=[suffix[1:]], imgsz=64)[0]
    second = export_run(weights, include=[suffix[1:]], imgsz=64)[0]
    assert theirs.read_bytes() == original
    assert (first.parent.name, second.parent.name) == ("exp", "exp2") and first.name == second.name == theirs.name


def test_export_into_a_named_run_folder(tiny_checkpoint, tmp_path, monkeypatch):
    weights = tiny_checkpoint("regress", name="best.pt")
    (path,) = run_export(weights=weights, include=["onnx"], imgsz=64, project=str(tmp_path / "p"), name="v1")
    assert path == tmp_path / "p" / "v1" / "best.onnx"
    monkeypatch.setattr("utils.infer.export.DEFAULT_PROJECT", tmp_path / "default")
    (default_path,) = run_export(weights=weights, include=["onnx"], imgsz=64, name="v2")
    assert default_path == tmp_path / "default" / "v2" / "best.onnx"
    assert not weights.with_suffix(".onnx").exists()


def test_an_export_of_a_tile_trained_checkpoint_remembers_its_tiles(tiny_checkpoint):
    """--slice auto slices the .onnx as it slices the .pt it came from."""
    weights = tiny_checkpoint(name="tiled.pt", opt={"tile": 96, "tile_overlap": 0.3, "tile_scale": 0.5})
    (onnx_file,) = export.main(["--weights", str(weights), "--include", "onnx", "--imgsz", "64", "--dynamic",
                                "--project", str(weights.parent / "export")])
    assert DetectBackend(onnx_file).trained_tile == DetectBackend(weights).trained_tile == TileSettings(96, 0.3, 0.5)
    (plain,) = export.main(["--weights", str(tiny_checkpoint(name="whole.pt")), "--include", "onnx", "--imgsz", "64",
                            "--dynamic", "--project", str(weights.parent / "export")])
    assert DetectBackend(plain).trained_tile is None


def test_an_export_keeps_the_checkpoints_uncertainty_calibration(tiny_checkpoint):
    from utils.cbbl.calibration import CHECKPOINT_KEY, UncertaintyCalibration
    from utils.checkpoint import load_checkpoint, save_checkpoint

    weights = tiny_checkpoint("cbbl", name="best.pt")
    calibration = UncertaintyCalibration((0.5, 2.5), (0.9, 0.3), 100)
    save_checkpoint({**load_checkpoint(weights), CHECKPOINT_KEY: calibration.to_dict()}, weights)
    (onnx_file,) = export.main(["--weights", str(weights), "--include", "onnx", "--imgsz", "64", "--dynamic",
                                "--project", str(weights.parent / "export")])
    assert DetectBackend(onnx_file).calibration == DetectBackend(weights).calibration == calibration


def test_a_quality_scored_cbbl_model_exports_with_its_branch(tiny_checkpoint):
    """--cbbl-score quality: the ONNX graph scores as PyTorch does (objectness x the branch's IoU estimate)."""
    weights = tiny_checkpoint("cbbl", name="quality.pt", head={"score": "quality"})
    (onnx_file,) = export.main(["--weights", str(weights), "--include", "onnx", "--imgsz", "64", "--dynamic",
                                "--project", str(weights.parent / "export")])
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    expected, got = DetectBackend(weights)(images), DetectBackend(onnx_file)(images)
    assert ((got - expected).abs() / expected.abs().clamp(min=1)).max() < 1e-4
    assert DetectBackend(weights).models[0].detect.quality is not None
