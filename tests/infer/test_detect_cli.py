"""End-to-end tests of detect.py (tiny random model, CPU): folder, generated video, sliced large image,
txt files vs the returned arrays, and the bad-input paths."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

import detect
from tests.conftest import REPO_ROOT


def random_image(path, height, width, seed=0):
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))
    return path


def test_cli_on_a_folder(tmp_path, tiny_checkpoint):
    source = tmp_path / "images"
    source.mkdir()
    random_image(source / "one.jpg", 80, 100)
    (source / "readme.txt.bak").write_text("skip me")
    results = detect.main(["--weights", str(tiny_checkpoint("cbbl")), "--source", str(source), "--imgsz", "64",
                           "--conf-thres", "0.1", "--max-det", "20", "--save-txt", "--project", str(tmp_path),
                           "--name", "run", "--hide-conf", "--line-thickness", "1", "--classes", "0", "1"])
    assert len(results) == 1 and set(results[0].cls.tolist()) <= {0, 1}
    rows = np.loadtxt(tmp_path / "run" / "labels" / "one.txt", ndmin=2)
    assert rows.shape == (len(results[0].cls), 5), "no --save-conf: class and box only"
    rounded = np.round(results[0].xyxy)  # whole pixels in the txt files, as YOLOv5 v7.0 writes them
    np.testing.assert_allclose(rows[:, 3] * 100, rounded[:, 2] - rounded[:, 0], rtol=1e-4)
    assert (tmp_path / "run" / "one.jpg").is_file()


def test_cli_on_a_generated_video(tmp_path, tiny_checkpoint):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 64))
    rng = np.random.default_rng(1)
    for _ in range(6):
        writer.write(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    writer.release()
    results = detect.main(["--weights", str(tiny_checkpoint("regress")), "--source", str(video), "--imgsz", "64",
                           "--conf-thres", "0.1", "--vid-stride", "2", "--save-txt", "--save-conf",
                           "--project", str(tmp_path), "--name", "vid"])
    assert [r.frame for r in results] == [0, 2, 4]
    assert sorted(p.name for p in (tmp_path / "vid" / "labels").iterdir()) == ["clip_1.txt", "clip_3.txt", "clip_5.txt"]
    saved = cv2.VideoCapture(str(tmp_path / "vid" / "clip.mp4"))
    frames = 0
    while saved.read()[0]:
        frames += 1
    saved.release()
    assert frames == 3
    for result in results:
        rows = np.loadtxt(tmp_path / "vid" / "labels" / f"clip_{result.frame + 1}.txt", ndmin=2)  # YOLOv5: from 1
        np.testing.assert_allclose(rows[:, 5], result.conf, rtol=1e-5)


def test_cli_slices_a_large_image(tmp_path, tiny_checkpoint):
    image = random_image(tmp_path / "big.jpg", 300, 520)
    common = ["--weights", str(tiny_checkpoint("cbbl")), "--source", str(image), "--imgsz", "64",
              "--conf-thres", "0.12", "--project", str(tmp_path), "--exist-ok", "--nosave"]
    sliced = detect.main(common + ["--slice", "128", "128", "--overlap", "0.25", "--slice-full-pass",
                                   "--name", "sliced", "--save-txt", "--save-conf"])[0]
    single = detect.main(common + ["--name", "single"])[0]
    assert len(sliced.conf) > len(single.conf), "tiles at full resolution see more than one 64 px pass"
    assert (sliced.xyxy >= 0).all() and (sliced.xyxy[:, [0, 2]] <= 520).all()
    assert (sliced.xyxy[:, [1, 3]] <= 300).all() and sliced.xyxy[:, 0].max() > 300, "mapped back across the frame"
    rows = np.loadtxt(tmp_path / "sliced" / "labels" / "big.txt", ndmin=2)
    np.testing.assert_allclose(rows[:, 6], sliced.uncertainty, rtol=1e-5)
    assert not (tmp_path / "sliced" / "big.jpg").exists(), "--nosave writes no image"


def test_bad_inputs(tmp_path, tiny_checkpoint):
    weights = str(tiny_checkpoint("regress"))
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        detect.main(["--weights", weights, "--source", str(tmp_path / "missing_dir"), "--project", str(tmp_path)])
    with pytest.raises(ValueError, match="iou_thres"):
        detect.main(["--weights", weights, "--source", str(tmp_path), "--iou-thres", "2"])
    with pytest.raises(ValueError, match="unsupported weights format"):
        detect.main(["--weights", str(tmp_path / "w.bin"), "--source", str(tmp_path)])
    process = subprocess.run([sys.executable, "detect.py", "--weights", weights, "--source", str(tmp_path / "nope.jpg"),
                              "--project", str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert process.returncode != 0 and "nope.jpg" in process.stderr
