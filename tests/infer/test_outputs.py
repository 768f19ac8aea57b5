"""Tests for utils/infer/outputs.py: one output per source whatever the names, checked writes, honest endings,
never over the inputs, and YOLOv5 v7.0's txt rows."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import detect
from tests.conftest import small_filesystem, tree_bytes
from utils.files import OutputWriteError
from utils.infer.options import DetectOptions, ImageResult
from utils.infer.outputs import OutputWriter

V7_TXT_ROWS = Path(__file__).parents[1] / "fixtures" / "detect_txt_v7.json"  # tests/fixtures/make_detect_txt_rows.py

COMMON = ["--imgsz", "64", "--conf-thres", "0.1", "--max-det", "5", "--save-txt"]


def write_images(folder, names, seed=0):
    rng = np.random.default_rng(seed)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        ok, encoded = cv2.imencode(f".{name.rsplit('.', 1)[1]}", rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        (folder / name).write_bytes(encoded.tobytes())


def test_colliding_names_get_distinct_outputs_and_matching_labels(tmp_path, tiny_checkpoint):
    source = tmp_path / "in"
    names = ["a b.jpg", "a_b.jpg", "x.jpg", "x.png", "d1/img.jpg", "d2/img.jpg", "photo[1].jpg"]
    write_images(source, names)
    results = detect.main(["--weights", str(tiny_checkpoint()), "--source", str(source / "**" / "*.*"), *COMMON,
                           "--project", str(tmp_path), "--name", "run"])
    run_dir = tmp_path / "run"
    images = sorted(p.name for p in run_dir.iterdir() if p.is_file())
    labels = sorted(p.name for p in (run_dir / "labels").iterdir())
    assert len(results) == len(names) == len(images) == len(labels)
    assert {"a b.jpg", "a_b.jpg", "x.jpg", "photo[1].jpg"} <= set(images)
    assert sorted(name.rsplit(".", 1)[0] + ".txt" for name in images) == labels, "each label named after its image"


def test_existing_source_with_brackets_is_read_as_a_file(tmp_path, tiny_checkpoint):
    write_images(tmp_path, ["photo[1].jpg"])
    results = detect.main(["--weights", str(tiny_checkpoint()), "--source", str(tmp_path / "photo[1].jpg"), *COMMON,
                           "--project", str(tmp_path), "--name", "run"])
    assert len(results) == 1 and (tmp_path / "run" / "labels" / "photo[1].txt").is_file()


def test_full_disk_stops_detect_without_claiming_success(tmp_path, tiny_checkpoint, caplog):
    write_images(tmp_path / "in", [f"im{i}.png" for i in range(40)])
    weights = str(tiny_checkpoint())
    with small_filesystem(tmp_path / "small", "64k") as small:
        with pytest.raises(OutputWriteError, match=r"could not write .* \(disk full\?\)"):
            detect.main(["--weights", weights, "--source", str(tmp_path / "in"), *COMMON, "--project", str(small),
                         "--name", "run"])
        assert "Results saved" not in caplog.text
        for label in (small / "run" / "labels").iterdir():  # every file that exists is complete
            assert label.read_text().endswith("\n") or not label.read_text()


def test_a_failed_run_leaves_no_empty_folder(tmp_path, tiny_checkpoint, monkeypatch, caplog):
    write_images(tmp_path / "in", ["one.png"])

    def failing(*args, **kwargs):
        raise OutputWriteError(tmp_path / "run" / "one.png", "No space left on device")

    monkeypatch.setattr("utils.infer.outputs.checked_imwrite", failing)
    with pytest.raises(OutputWriteError):
        detect.main(["--weights", str(tiny_checkpoint()), "--source", str(tmp_path / "in"), "--imgsz", "64",
                     "--project", str(tmp_path), "--name", "run"])
    assert not (tmp_path / "run").exists() and "Results saved" not in caplog.text


@pytest.mark.parametrize("save_conf", [False, True])
def test_txt_rows_equal_yolov5_v7s(tmp_path, save_conf):
    """Boxes rounded to whole pixels (half to even) before normalising, as v7.0's detect.py writes them."""
    writer = OutputWriter(DetectOptions(project=str(tmp_path), save_conf=save_conf, nosave=True), ["x"] * 10, False)
    for index, case in enumerate(json.loads(V7_TXT_ROWS.read_text())["cases"]):
        det = torch.tensor(case["det"])
        result = ImageResult.from_detections(det, "x.jpg", 0, case["shape"], has_uncertainty=False)
        writer.write_txt(tmp_path / f"{index}.txt", result)
        assert (tmp_path / f"{index}.txt").read_text().splitlines() == case["rows_conf" if save_conf else "rows"]


@pytest.mark.parametrize("layout", ["same folder", "inside the output"])
def test_detect_never_writes_over_its_input_images(tmp_path, tiny_checkpoint, layout):
    """`--source photos --project . --name photos --exist-ok` would replace the photos with annotated copies."""
    project = tmp_path if layout == "same folder" else tmp_path / "out"
    source = tmp_path / "photos" if layout == "same folder" else project / "photos" / "raw"
    write_images(source, ["a.jpg", "b.png"])
    before = tree_bytes(tmp_path)
    name = "photos" if layout == "same folder" else "."
    with pytest.raises(ValueError, match=f"holds the source images \\({source}\\); results would be written over"):
        detect.main(["--weights", str(tiny_checkpoint()), "--source", str(source), *COMMON, "--project", str(project),
                     "--name", name, "--exist-ok"])
    after = tree_bytes(tmp_path)
    assert {k: v for k, v in after.items() if not k.endswith(".pt")} == before
