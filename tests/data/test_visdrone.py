"""Tests for utils/data/visdrone.py and data/scripts/visdrone2yolo.py on the shared VisDrone sample (copied)."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import REPO_ROOT
from utils.data.visdrone import (
    LABELS_MARKER,
    annotation_path,
    convert_split,
    ignored_fraction,
    read_annotation,
    split_dirs,
    to_yolo_labels,
)

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


def make_split(root: Path, num_images: int = 3) -> Path:
    """A tiny VisDrone split: 64x48 JPEGs with two-line annotation files."""
    import cv2

    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for index in range(num_images):
        cv2.imwrite(str(root / "images" / f"im{index}.jpg"), np.zeros((48, 64, 3), np.uint8))
        (root / "annotations" / f"im{index}.txt").write_text(f"{index},2,10,8,1,4,0,0,\n0,0,5,5,0,0,0,0,\n")
    return root


def sha256_tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_converter(src: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "data" / "scripts" / "visdrone2yolo.py"), "--src",
                           str(src)], capture_output=True, text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, *parts: str) -> None:
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("visdrone2yolo.py: error: ") and all(part in line for part in parts), result.stderr


def test_labels_linked_to_annotations_is_refused_and_annotations_kept(tmp_path):
    """With labels -> annotations the converter overwrote the official annotation files."""
    split = make_split(tmp_path / "VisDrone2019-DET-val")
    (split / "labels").symlink_to(split / "annotations", target_is_directory=True)
    before = sha256_tree(split / "annotations")
    assert_one_line_error(run_converter(tmp_path), str(split / "labels"), "link to the annotations folder")
    assert sha256_tree(split / "annotations") == before and (split / "labels").is_symlink()
    assert not list(split.glob(".labels*"))


def test_a_labels_folder_with_files_not_ours_is_refused_byte_for_byte(tmp_path):
    """Existing labels were overwritten without a word."""
    split = make_split(tmp_path / "val")
    (split / "labels").mkdir()
    (split / "labels" / "im0.txt").write_text("3 0.5 0.5 0.1 0.1\n")  # the user's own, hand-made label
    before = sha256_tree(split)
    with pytest.raises(ValueError, match=r"holds 1 file\(s\) the converter did not write .* im0.txt"):
        convert_split(split)
    assert sha256_tree(split) == before


def test_our_own_output_is_replaced_but_an_edited_file_is_not(tmp_path):
    split = make_split(tmp_path / "val")
    convert_split(split)
    first = sha256_tree(split / "labels")
    assert len(first) == 4 and (split / "labels" / LABELS_MARKER).is_file()
    (split / "annotations" / "im1.txt").write_text("1,1,20,20,1,1,0,0\n")
    assert convert_split(split)["objects"] == 3  # a rerun over our own output replaces it
    assert (split / "labels" / "im1.txt").read_text().startswith("0 ") and not list(split.glob(".labels*"))
    (split / "labels" / "im2.txt").write_text("edited by hand\n")
    before = sha256_tree(split)
    with pytest.raises(ValueError, match="did not write .*changed since.* im2.txt"):
        convert_split(split)
    assert sha256_tree(split) == before


@pytest.mark.parametrize("earlier_output", [False, True])
def test_a_bad_line_converts_nothing(tmp_path, earlier_output):
    """A bad line was a traceback and left the earlier images' labels written."""
    split = make_split(tmp_path / "val", num_images=4)
    if earlier_output:
        convert_split(split)
    before = sha256_tree(split)
    (split / "annotations" / "im2.txt").write_text("1,1,20,20,1,1,0,0\n1,1,20\n")
    message = f"{split / 'annotations' / 'im2.txt'}:2: expected 8"
    if earlier_output:
        with pytest.raises(ValueError, match=re.escape(message)):
            convert_split(split)
    else:
        assert_one_line_error(run_converter(split), message)
    assert {k: v for k, v in sha256_tree(split).items() if not k.startswith("annotations")} == \
        {k: v for k, v in before.items() if not k.startswith("annotations")}
    assert not list(split.glob(".labels*"))


def test_an_unreadable_image_or_annotation_is_one_line_naming_it(tmp_path):
    split = make_split(tmp_path / "val")
    (split / "images" / "im1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=re.escape(f"{split / 'images' / 'im1.jpg'}: unreadable image")):
        convert_split(split)
    (split / "images" / "im1.jpg").unlink()
    (split / "annotations" / "im2.txt").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match=re.escape(f"{split / 'annotations' / 'im2.txt'}: not a UTF-8")):
        convert_split(split)
    assert not (split / "labels").exists()


def test_ignored_fraction_follows_the_toolkit_pixel_map():
    region = np.array([[1, 1, 10, 10]], float)  # MATLAB paints rows/cols 1..11 (inclusive)
    boxes = np.array([[1, 1, 4, 4], [10, 10, 4, 4], [30, 30, 5, 5]], float)
    fraction = ignored_fraction(boxes, region, 40, 40)
    assert fraction.tolist() == pytest.approx([1.0, 1 / 16, 0.0])


def _toolkit_fraction(boxes_xywh: np.ndarray, regions_xywh: np.ndarray, height: int, width: int) -> np.ndarray:
    """dropObjectsInIgr.m transcribed literally: a pixel map, its integral image, four corner lookups."""
    igr_map = np.zeros((height + 1, width + 1))  # index 0 unused: 1-based like MATLAB
    for x, y, w, h in np.maximum(1, regions_xywh).astype(int):
        igr_map[y : min(height, y + h) + 1, x : min(width, x + w) + 1] = 1
    integral = igr_map.cumsum(0).cumsum(1)
    out = []
    for box in boxes_xywh:
        x, y, w, h = np.maximum(1, np.floor(box + 0.5)).astype(int)
        x, y = max(1, min(width, x)), max(1, min(height, y))
        y2, x2 = max(1, min(height, y + h)), min(width, x + w)
        out.append((integral[y, x] + integral[y2, x2] - integral[y, x2] - integral[y2, x]) / (w * h))
    return np.array(out)


@settings(deadline=None, max_examples=20)
@given(st.integers(0, 10_000))
def test_ignored_fraction_equals_the_literal_pixel_map(seed: int):
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(20, 60)), int(rng.integers(20, 60))
    regions = np.c_[rng.integers(0, 50, (3, 2)), rng.integers(1, 25, (3, 2))].astype(float)
    boxes = np.c_[rng.uniform(-3, 55, (30, 2)), rng.uniform(0.6, 20, (30, 2))]
    assert ignored_fraction(boxes, regions, height, width) == pytest.approx(
        _toolkit_fraction(boxes, regions, height, width))


def test_ignored_fraction_counts_pixels_inside_the_union_of_regions():
    regions = np.array([[0, 0, 50, 100], [40, 0, 20, 100]], float)  # overlapping: union x in [0, 60)
    boxes = np.array([[10, 10, 10, 10], [50, 10, 20, 10], [70, 0, 20, 10], [55, 0, 10, 10]], float)
    np.testing.assert_allclose(ignored_fraction(boxes, regions, 100, 100), [1.0, 0.5, 0.0, 0.5])
