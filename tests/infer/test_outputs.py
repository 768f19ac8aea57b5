"""Tests for utils/infer/outputs.py: one output per source whatever the names, checked writes, honest endings."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import detect
from tests.conftest import small_filesystem
from utils.files import OutputWriteError

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
