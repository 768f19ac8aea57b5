"""The path users run, on real data: real VisDrone frames and the real COCO yolov5n release.

Converts 8 real frames with the project's converter, fine-tunes the COCO yolov5n for 1 epoch at --img 320 with
each head, validates best.pt under each protocol and runs detect.py on 2 full-size frames. Skips where the
shared data (not shipped with the project) is absent.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

import detect
import train
import val
from tests.conftest import REPO_ROOT

SHARED = REPO_ROOT.parent / "shared"
FRAMES = SHARED / "data" / "visdrone-real"
COCO_WEIGHTS = SHARED / "weights" / "yolov5n-coco-v6.1.pt"
NAMES = ["pedestrian", "people", "bicycle", "car", "van", "truck", "tricycle", "awning-tricycle", "bus", "motor"]


@pytest.fixture(scope="module")
def real_data(tmp_path_factory) -> Path:
    """6 train and 2 val real frames (images linked, annotations copied) with YOLO labels from the converter."""
    if not FRAMES.is_dir() or not COCO_WEIGHTS.is_file():
        pytest.skip(f"real VisDrone frames and COCO weights not found under {SHARED}")
    from data.scripts.visdrone2yolo import main as convert

    root = tmp_path_factory.mktemp("visdrone-real")
    for split, count in (("VisDrone2019-DET-train", 6), ("VisDrone2019-DET-val", 2)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "annotations").mkdir()
        for image in sorted((FRAMES / split / "images").iterdir())[:count]:
            os.symlink(image, root / split / "images" / image.name)
            shutil.copy(FRAMES / split / "annotations" / f"{image.stem}.txt", root / split / "annotations")
    convert(["--src", str(root)])
    data = root / "visdrone.yaml"
    data.write_text(f"path: {root}\ntrain: VisDrone2019-DET-train/images\nval: VisDrone2019-DET-val/images\n"
                    f"names: {NAMES}\n")
    return data


@pytest.mark.slow
@pytest.mark.parametrize("box_loss", ["ciou", "cbbl"])
def test_fine_tune_coco_yolov5n_validate_and_detect(real_data: Path, tmp_path: Path, box_loss: str, caplog):
    caplog.set_level(logging.INFO)
    outcome = train.run(weights=str(COCO_WEIGHTS), data=str(real_data), imgsz=320, epochs=1, batch_size=4,
                        workers=0, box_loss=box_loss, project=str(tmp_path / "train"), name="run", noplots=True)
    transferred = [m for m in caplog.messages if m.startswith("transferred ")]
    assert len(transferred) == 1  # one line: what came over and what did not
    not_transferred = transferred[0].split("not transferred")[1]
    head = "model.24."
    final_convs = {f"{head}m.{level}.{kind}" for level in range(3) for kind in ("weight", "bias")}
    assert all(name in not_transferred for name in final_convs)  # 85 -> 15 (or C-BBL's) outputs per anchor
    assert not_transferred.count("model.") == len(final_convs) + 2  # and only the YAML's anchors and strides
    assert opts_recipe(outcome.save_dir) == ("SGD", 64)  # a user's dataset trains YOLOv5's recipe
    best = outcome.save_dir / "weights" / "best.pt"
    for protocol in ("yolov5", "coco", "visdrone"):
        results = val.run(weights=str(best), data=str(real_data), imgsz=320, workers=0, protocol=protocol,
                          project=str(tmp_path / "val"), name=protocol, noplots=True)
        assert results.protocol == protocol and 0.0 <= results.map50 <= 1.0
    frames = sorted((real_data.parent / "VisDrone2019-DET-val" / "images").iterdir())
    found = detect.run(weights=str(best), source=str(frames[0].parent), imgsz=320, project=str(tmp_path / "detect"),
                       name="run", save_txt=True, save_conf=True)
    assert len(found) == 2 and all(result.shape[0] >= 540 for result in found)  # full-size frames


def opts_recipe(save_dir: Path) -> tuple[str, int]:
    import yaml

    opts = yaml.safe_load((save_dir / "opt.yaml").read_text())
    return yaml.safe_load((save_dir / "hyp.yaml").read_text())["optimizer"], opts["nbs"]
