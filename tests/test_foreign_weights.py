"""YOLOv5 / TPH-YOLOv5 files and hostile files through every entry point: train, resume, val, detect, export,
torch.hub and the conversion CLI: foreign checkpoints load as ours do, hostile files are refused in one line."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import detect
import hubconf
import val
from export import run as export_run
from models.convert import convert
from models.yolo import model_from_checkpoint
from tests.conftest import (
    FOREIGN_FILES,
    HOSTILE_KINDS,
    REPO_ROOT,
    YOLOV5_FIXTURES,
    assert_parity,
    foreign_checkpoint,
    make_hostile_checkpoint,
    make_yolo_dataset,
)
from utils.checkpoint import load_checkpoint, read_inert_pickle
from utils.engine.options import parse_options
from utils.engine.run import run as train_run


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A data YAML of 10 classes over 4 tiny images (train = val), and one of its images."""
    root = tmp_path_factory.mktemp("foreign_data")
    images = make_yolo_dataset(root / "data", num_images=4, size=(64, 96))
    path = root / "data.yaml"
    path.write_text(yaml.safe_dump({"path": str(root / "data"), "train": "images", "val": "images", "nc": 10,
                                    "names": [f"class{i}" for i in range(10)]}))
    return path, next(images.iterdir())


ENTRY_POINTS = {
    "train": lambda weights, data, image, out: train_run(parse_options(
        ["--img", "64", "--batch", "2", "--epochs", "1", "--workers", "0", "--data", str(data), "--weights",
         str(weights), "--project", str(out)])),
    "train --cfg": lambda weights, data, image, out: train_run(parse_options(
        ["--img", "64", "--batch", "2", "--epochs", "1", "--workers", "0", "--data", str(data), "--weights",
         str(weights), "--cfg", "models/yolov5n.yaml", "--project", str(out)])),
    "resume": lambda weights, data, image, out: train_run(parse_options(["--resume", str(weights)])),
    "val": lambda weights, data, image, out: val.run(weights=str(weights), data=str(data), project=str(out)),
    "detect": lambda weights, data, image, out: detect.main(
        ["--weights", str(weights), "--source", str(image), "--project", str(out)]),
    "export": lambda weights, data, image, out: export_run(weights=weights, include=("torchscript",), project=str(out)),
    "hub": lambda weights, data, image, out: hubconf.custom(weights),
    "convert": lambda weights, data, image, out: convert(weights, out / "converted.pt"),
}


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_entry_point_refuses_hostile_files(tmp_path, tiny_data, entry, kind):
    data, image = tiny_data
    marker = tmp_path / "payload-ran"
    weights = make_hostile_checkpoint(tmp_path / "hostile.pt", kind, marker)
    with pytest.raises(ValueError, match=r"hostile\.pt: contains code we do not run: "):
        ENTRY_POINTS[entry](weights, data, image, tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("name", FOREIGN_FILES)
def test_hub_custom_gives_the_authors_output(name):
    path, expected = foreign_checkpoint(name)
    model = torch.hub.load(str(REPO_ROOT), "custom", path=str(path), source="local", autoshape=False)
    with torch.no_grad():
        pred = model(expected["input"])[0]
    assert_parity(pred, expected["output"])


def test_hub_autoshape_on_a_yolov5_file(tmp_path):
    path, expected = foreign_checkpoint("yolov5s-v7.0-tiny.pt")
    shaped = torch.hub.load(str(REPO_ROOT), "custom", path=str(path), source="local")
    shaped.conf = 0.0
    rgb = (expected["input"][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (256, 320, 3)
    image_file = tmp_path / "frame.png"
    cv2.imwrite(str(image_file), rgb[:, :, ::-1])
    results = shaped([str(image_file), rgb], size=320)
    assert len(results) == 2 and len(results.xyxy[0]) > 0
    torch.testing.assert_close(results.xyxy[0], results.xyxy[1])  # a file and its RGB array agree
    table = results.pandas().xyxy[0]
    assert list(table.columns) == ["xmin", "ymin", "xmax", "ymax", "confidence", "class", "name"]
    assert len(table) == len(results.xyxy[0]) and table["name"][0] == f"class{int(table['class'][0])}"
    assert results.xywhn[0][:, :4].max() <= 1.5 and results.xywhn[0][:, 2:4].min() >= 0
    saved = results.save(save_dir=tmp_path / "hub")
    assert sorted(p.name for p in saved.iterdir()) == ["frame.png", "image1.jpg"]


def test_hub_yolov5_graphs_untrained_only():
    model = hubconf.yolov5n(pretrained=False, classes=7, autoshape=False).eval()
    with torch.no_grad():
        pred = model(torch.zeros(2, 3, 64, 96))[0]
    assert pred.shape == (2, 3 * (8 * 12 + 4 * 6 + 2 * 3), 5 + 7)
    with pytest.raises(ValueError, match="no pretrained weights are downloaded"):
        hubconf.yolov5s()


def test_convert_writes_a_plain_checkpoint_with_the_same_output(tmp_path):
    path, expected = foreign_checkpoint("tph-yolov5l-tph-plus-s.pt")
    output = convert(path, tmp_path / "plus.pt")
    converted = torch.load(output, weights_only=True)  # plain data now
    assert converted["names"][:2] == ["class0", "class1"] and converted["foreign"] == "models.yolo.Model"
    with torch.no_grad():
        assert_parity(model_from_checkpoint(load_checkpoint(output))(expected["input"])[0], expected["output"])
    with pytest.raises(ValueError, match="plus.pt exists"):
        convert(path, output)


def test_detect_cli_and_val_run_on_foreign_files(tmp_path, tiny_data):
    data, image = tiny_data
    path, _ = foreign_checkpoint("yolov5s-v7.0-tiny.pt")
    done = subprocess.run([sys.executable, "detect.py", "--weights", str(path), "--source", str(image), "--imgsz",
                           "96", "--project", str(tmp_path), "--name", "det"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "det" / image.name).is_file()
    tph, _ = foreign_checkpoint("tph-yolov5l-tph-plus-s.pt")
    results = val.run(weights=str(tph), data=str(data), imgsz=64, batch_size=2, project=str(tmp_path), name="val")
    assert 0.0 <= results.map50 <= 1.0
    with pytest.raises(ValueError, match="predicts 80 classes but .* has 10"):
        val.run(weights=str(path), data=str(data), imgsz=64, project=str(tmp_path), name="val80")


def test_train_starts_from_a_yolov5_file(tmp_path, tiny_data, caplog):
    """train.py --weights yolov5s.pt (its graph, our nc): every layer but the class-sized head transfers."""
    data, _ = tiny_data
    path, _ = foreign_checkpoint("yolov5s-v7.0-tiny.pt")
    with caplog.at_level(logging.INFO):
        outcome = train_run(parse_options(["--img", "64", "--batch", "2", "--epochs", "1", "--workers", "0",
                                           "--data", str(data), "--weights", str(path), "--noplots",
                                           "--project", str(tmp_path)]))
    loaded, total = map(int, re.search(r"transferred (\d+)/(\d+) items", caplog.text).groups())
    # Not taken: the 3 Detect convs' weights and biases (10 classes instead of 80), and the anchors and strides,
    # which belong to the new model's yaml.
    assert total - loaded == 3 * 2 + 2
    assert (outcome.save_dir / "weights" / "last.pt").is_file()


# Training files written by YOLOv5 v7.0 (GitHub and PyPI) and TPH-YOLOv5, with the class their
# pickled model names.
TRAINING_FILES = {"yolov5-v7.0-last.pt": "models.yolo.DetectionModel",
                  "yolov5-pypi-7.0.14-last.pt": "yolov5.models.yolo.DetectionModel",
                  "yolov5-v7.0-best.pt": "models.yolo.DetectionModel", "tph-yolov5-best.pt": "models.yolo.Model"}


def _training_file(name: str) -> tuple:
    path = YOLOV5_FIXTURES / name
    return path, torch.load(path.with_name(path.stem + ".expected.pt"), weights_only=True)


@pytest.mark.parametrize("name", TRAINING_FILES)
def test_training_checkpoints_give_their_makers_output(name):
    """Loaded as train/val/detect/export do and through torch.hub: the eval output of the maker's attempt_load."""
    path, expected = _training_file(name)
    checkpoint = load_checkpoint(path)
    assert checkpoint["foreign"] == TRAINING_FILES[name] and checkpoint["names"] == expected["names"]
    hub = hubconf.custom(str(path), autoshape=False)
    with torch.no_grad():
        assert_parity(model_from_checkpoint(checkpoint)(expected["input"])[0], expected["output"])
        assert_parity(hub(expected["input"])[0], expected["output"])


def test_training_fixtures_hold_what_made_real_files_fail():
    """numpy best_fitness (via _codecs.encode), empty Detect grids, yolov5.* names: each refused before."""
    last = read_inert_pickle(YOLOV5_FIXTURES / "yolov5-v7.0-last.pt")
    assert isinstance(last["best_fitness"], np.ndarray) and last["best_fitness"].shape == (1,)
    assert float(last["best_fitness"][0]) == pytest.approx(0.1 * 0.25 + 0.9 * 0.12)  # v7.0 fitness of P, R, mAPs
    assert last["epoch"] == 0 and last["optimizer"]["state"] and set(last["git"]) == {"remote", "branch", "commit"}
    grids = last["model"].attribute("_modules")["model"].attribute("_modules")["24"].attribute("grid")
    assert [grid.numel() for grid in grids] == [0, 0, 0]  # the training model's Detect never ran in eval mode
    with zipfile.ZipFile(YOLOV5_FIXTURES / "yolov5-v7.0-last.pt") as archive:
        assert any(info.file_size == 0 for info in archive.infolist() if "/data/" in info.filename)
    pypi = read_inert_pickle(YOLOV5_FIXTURES / "yolov5-pypi-7.0.14-last.pt")
    assert pypi["yolov5pip_version"] == "7.0.14" and pypi["ema"].source == "yolov5.models.yolo.DetectionModel"
    assert read_inert_pickle(YOLOV5_FIXTURES / "yolov5-v7.0-best.pt")["best_fitness"] is None  # v7.0 strips it
    tph = read_inert_pickle(YOLOV5_FIXTURES / "tph-yolov5-best.pt")  # TPH's strip_optimizer keeps it
    assert tph["epoch"] == -1 and tph["optimizer"] is None and isinstance(tph["best_fitness"], np.ndarray)


def test_detect_and_export_run_on_a_pypi_training_file(tmp_path):
    path = Path(shutil.copy(_training_file("yolov5-pypi-7.0.14-last.pt")[0], tmp_path))  # nothing lands in tests/
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.full((48, 64, 3), 127, np.uint8))
    detect.main(["--weights", str(path), "--source", str(image), "--imgsz", "64", "--project", str(tmp_path),
                 "--name", "det"])
    assert (tmp_path / "det" / "frame.png").is_file()
    exported = export_run(weights=path, include=("torchscript",), imgsz=(64, 64), project=str(tmp_path))
    assert all(Path(file).is_file() for file in exported)


def test_val_and_train_start_from_a_v7_training_file(tmp_path, caplog):
    """val.py scores a mid-training v7.0 last.pt on its 3 classes; train.py --weights transfers every tensor."""
    path = Path(shutil.copy(_training_file("yolov5-v7.0-last.pt")[0], tmp_path))
    make_yolo_dataset(tmp_path / "data", num_images=2, size=(64, 64))
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(tmp_path / "data"), "train": "images", "val": "images",
                                    "names": ["car", "person", "van"]}))
    results = val.run(weights=str(path), data=str(data), imgsz=64, batch_size=2, project=str(tmp_path), name="val")
    assert 0.0 <= results.map50 <= 1.0
    with caplog.at_level(logging.INFO):
        train_run(parse_options(["--img", "64", "--batch", "2", "--epochs", "1", "--workers", "0", "--data", str(data),
                                 "--weights", str(path), "--noplots", "--noval", "--project", str(tmp_path)]))
    loaded, total = map(int, re.search(r"transferred (\d+)/(\d+) items", caplog.text).groups())
    assert total - loaded == 2  # all but the anchors and strides, which belong to the new model's yaml
