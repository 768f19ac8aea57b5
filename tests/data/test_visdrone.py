"""Tests for utils/data/visdrone.py and data/scripts/visdrone2yolo.py on the shared VisDrone sample (copied)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from utils.data.visdrone import annotation_path, convert_split, read_annotation, split_dirs, to_yolo_labels

# SOURCE.md of the sample: 6267 object boxes (categories 1-10), 182 ignored regions, 24 "others".
SAMPLE_OBJECTS, SAMPLE_IGNORED_REGIONS, SAMPLE_OTHERS = 6267, 182, 24
VAL_IMAGE = "0000001_02999_d_0000005"  # 1920x1080, 128 annotation lines, one ignored region (line 51)


@pytest.fixture
def sample_copy(visdrone_sample, tmp_path):
    target = tmp_path / "visdrone"
    shutil.copytree(visdrone_sample / "images", target / "images")
    shutil.copytree(visdrone_sample / "annotations", target / "annotations")
    return target


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def test_read_annotation_fields(visdrone_sample):
    annotation = read_annotation(visdrone_sample / "annotations" / f"{VAL_IMAGE}.txt")
    assert len(annotation.boxes) == 128
    np.testing.assert_array_equal(annotation.boxes[0], [871, 572, 871 + 54, 572 + 92])
    first = (annotation.score[0], annotation.category[0], annotation.truncation[0], annotation.occlusion[0])
    assert first == (1, 4, 0, 0)
    assert annotation.category[50] == 0 and annotation.score[50] == 0 and annotation.ignore_mask[50]
    assert annotation.object_mask.sum() == 127


def test_trailing_commas_and_malformed_lines(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("10,20,30,40,1,4,0,1,\n\n5,5,2,2,0,0,0,0\n")
    annotation = read_annotation(path)
    assert annotation.category.tolist() == [4, 0] and annotation.ignore_mask.tolist() == [False, True]
    path.write_text("10,20,30,40,1,4,0,1\n1,2,3\n")
    with pytest.raises(ValueError, match=r"a.txt:2: expected 8"):
        read_annotation(path)
    path.write_text("10,20,30,x,1,4,0,1\n")
    with pytest.raises(ValueError, match=r"a.txt:1: non-integer"):
        read_annotation(path)


def test_to_yolo_labels_drops_ignored_and_others_and_clips(tmp_path):
    path = tmp_path / "b.txt"
    path.write_text("0,0,10,10,1,1,0,0\n0,0,10,10,0,4,0,0\n0,0,10,10,1,0,0,0\n0,0,10,10,1,11,0,0\n90,0,20,10,1,10,0,0\n")
    labels = to_yolo_labels(read_annotation(path), width=100, height=50)
    np.testing.assert_allclose(labels, [[0, 0.05, 0.1, 0.1, 0.2], [9, 0.95, 0.1, 0.1, 0.2]])


def test_converter_counts_exact_lines_and_untouched_annotations(sample_copy):
    before = tree_digest(sample_copy / "annotations")
    counts = convert_split(sample_copy)
    assert tree_digest(sample_copy / "annotations") == before
    assert counts == {"images": 76, "objects": SAMPLE_OBJECTS, "ignored": SAMPLE_IGNORED_REGIONS + SAMPLE_OTHERS,
                      "no_annotation": 0}
    lines = (sample_copy / "labels" / f"{VAL_IMAGE}.txt").read_text().splitlines()
    assert len(lines) == 127
    # worked by hand: (x + w/2) / 1920, (y + h/2) / 1080, w / 1920, h / 1080; class = category - 1
    assert lines[0] == "3 0.467708 0.572222 0.028125 0.085185"  # 871,572,54,92 car
    assert lines[3] == "9 0.512760 0.757407 0.014063 0.050000"  # 971,791,27,54 motor
    assert lines[4] == "1 0.513281 0.752778 0.009896 0.035185"  # 976,794,19,38 people


def test_split_dirs_and_annotation_path(sample_copy, tmp_path):
    assert split_dirs(sample_copy) == [sample_copy]
    assert split_dirs(sample_copy.parent) == [sample_copy]
    assert annotation_path(sample_copy / "images" / "x.jpg") == sample_copy / "annotations" / "x.txt"
    with pytest.raises(FileNotFoundError, match="no VisDrone split"):
        split_dirs(tmp_path / "nothing")


def test_cli(sample_copy):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "data" / "scripts" / "visdrone2yolo.py"),
                             "--src", str(sample_copy.parent)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"objects {SAMPLE_OBJECTS}" in result.stdout
    assert len(list((sample_copy / "labels").glob("*.txt"))) == 76
