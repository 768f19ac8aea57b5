"""Tests for utils/data/scan.py: file listing, every bad-input case reported once, the cache."""

from __future__ import annotations

import logging
import os
import resource
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import make_yolo_dataset, write_image_bomb
from utils.data.scan import image_to_label_path, list_image_files, scan_dataset

GOOD = "0 0.5 0.5 0.2 0.2\n"


def add_bad_cases(images: Path) -> dict[str, str]:
    """Add one file per bad case to a dataset; returns {case: the text its report must contain}."""
    labels = images.parent / "labels"
    good_png = (images / "im0.png").read_bytes()
    (images / "random_bytes.jpg").write_bytes(b"this is not an image" * 10)
    ok, encoded = cv2.imencode(".jpg", np.full((40, 40, 3), 90, np.uint8))
    assert ok
    (images / "truncated.jpg").write_bytes(encoded.tobytes()[: len(encoded) // 2])
    for name in ("bad_utf8", "columns", "nonnumber", "outside", "zerosize", "bigclass", "duplicate", "nolabel",
                 "empty"):
        (images / f"{name}.png").write_bytes(good_png)
    (labels / "bad_utf8.txt").write_bytes(b"\xff\xfe\x00garbage")
    (labels / "columns.txt").write_text(GOOD + "0 0.5 0.5 0.1\n")
    (labels / "nonnumber.txt").write_text(GOOD + "0 0.5 x 0.1 0.1\n")
    (labels / "outside.txt").write_text(GOOD + "0 1.5 0.5 0.1 0.1\n")
    (labels / "zerosize.txt").write_text(GOOD + "0 0.5 0.5 0.0 0.1\n")
    (labels / "bigclass.txt").write_text(GOOD + "7 0.5 0.5 0.1 0.1\n")
    (labels / "duplicate.txt").write_text(GOOD + GOOD)
    (labels / "empty.txt").write_text("")
    return {
        "random_bytes": "random_bytes.jpg: corrupt image skipped", "truncated": "truncated.jpg: corrupt image skipped",
        "bad_utf8": "bad_utf8.txt: unreadable label file", "columns": "columns.txt:2: label line dropped: expected 5",
        "nonnumber": "nonnumber.txt:2: label line dropped: non-number",
        "outside": "outside.txt:2: label line dropped: box", "zerosize": "zerosize.txt:2: label line dropped: non-pos",
        "bigclass": "bigclass.txt:2: label line dropped: class id 7 >= nc=3",
        "duplicate": "duplicate.txt: 1 duplicate", "nolabel": "nolabel.txt: no label file",
    }


def test_every_bad_case_is_reported_once(tmp_path, caplog):
    images = make_yolo_dataset(tmp_path / "data", num_images=3)
    expected = add_bad_cases(images)
    with caplog.at_level(logging.INFO):
        result = scan_dataset(list_image_files(images), nc=3, workers=2)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for case, text in expected.items():
        assert sum(text in message for message in warnings) == 1, f"{case}: {text!r} not reported exactly once"
    # corrupt: random bytes, truncated JPEG, unreadable label file; the rest keep their good line
    assert (result.found, result.missing, result.empty, result.corrupt) == (9, 1, 1, 3)
    assert len(result.im_files) == 11 and len(result.labels) == 11 and result.shapes.shape == (11, 2)
    assert "found 9, missing 1, empty 1, corrupt 3" in caplog.text
    for path, labels in zip(result.im_files, result.labels):
        if Path(path).stem in ("columns", "nonnumber", "outside", "zerosize", "bigclass", "duplicate"):
            np.testing.assert_allclose(labels, [[0, 0.5, 0.5, 0.2, 0.2]])


def test_only_the_cache_is_written_and_it_is_reused(tmp_path, caplog):
    images = make_yolo_dataset(tmp_path / "data", num_images=3)
    add_bad_cases(images)
    before = {p for p in tmp_path.rglob("*")}
    first = scan_dataset(list_image_files(images), nc=3, workers=1)
    assert {p for p in tmp_path.rglob("*")} - before == {tmp_path / "data" / "labels.npz.cache"}
    with caplog.at_level(logging.INFO):
        second = scan_dataset(list_image_files(images), nc=3, workers=1)
    assert "loaded label cache" in caplog.text
    assert "bigclass.txt:2" in caplog.text  # problems are reported again from the cache
    assert second.im_files == first.im_files and second.summary() == first.summary()
    for a, b in zip(first.labels, second.labels):
        np.testing.assert_array_equal(a, b)


def test_editing_a_label_invalidates_the_cache(tmp_path, caplog):
    images = make_yolo_dataset(tmp_path / "data", num_images=2)
    scan_dataset(list_image_files(images), workers=1)
    label = tmp_path / "data" / "labels" / "im0.txt"
    label.write_text("2 0.25 0.25 0.1 0.1\n")
    os.utime(label, ns=(1, 1))  # a different mtime even on coarse clocks
    with caplog.at_level(logging.INFO):
        result = scan_dataset(list_image_files(images), workers=1)
    assert "loaded label cache" not in caplog.text
    np.testing.assert_allclose(result.labels[0], [[2, 0.25, 0.25, 0.1, 0.1]])


def test_unwritable_cache_only_warns(tmp_path, caplog):
    images = make_yolo_dataset(tmp_path / "data", num_images=2)
    (tmp_path / "data" / "labels.npz.cache").mkdir()  # a folder where the file should go: writing fails
    with caplog.at_level(logging.WARNING):
        result = scan_dataset(list_image_files(images), workers=1)
    assert len(result.im_files) == 2
    assert "label cache not saved" in caplog.text


def test_unlabelled_folder_gets_one_message_and_no_cache(tmp_path, caplog):
    images = make_yolo_dataset(tmp_path / "data", num_images=3)
    for label in (tmp_path / "data" / "labels").iterdir():
        label.unlink()
    (tmp_path / "data" / "labels").rmdir()
    with caplog.at_level(logging.WARNING):
        result = scan_dataset(list_image_files(images), workers=1)
    assert result.missing == 3 and len(result.im_files) == 3
    assert [r.getMessage() for r in caplog.records].count("no label files (e.g. " + str(
        tmp_path / "data" / "labels" / "im0.txt") + "): all 3 images used without objects") == 1
    assert not list(tmp_path.rglob("*.cache"))


def test_no_usable_image_is_an_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"nope")
    with pytest.raises(ValueError, match="no usable image"):
        scan_dataset(list_image_files(tmp_path / "images"), workers=1)


def test_list_image_files_sources(tmp_path):
    images = make_yolo_dataset(tmp_path / "d", num_images=3)
    (tmp_path / "d" / "list.txt").write_text("./images/im0.png\nimages/im2.png\n\n")
    (images / "notes.md").write_text("not an image")
    assert len(list_image_files(images)) == 3
    assert [Path(p).name for p in list_image_files(tmp_path / "d" / "list.txt")] == ["im0.png", "im2.png"]
    assert len(list_image_files([images, tmp_path / "d" / "list.txt"])) == 3
    assert len(list_image_files(str(images / "im*.png"))) == 3
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_image_files(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no images"):
        list_image_files(tmp_path / "d" / "labels")


def test_image_to_label_path():
    assert image_to_label_path("/a/images/train/x.jpg") == str(Path("/a/labels/train/x.txt"))
    assert image_to_label_path("/images/b/images/x.png") == str(Path("/images/b/labels/x.txt"))
    assert image_to_label_path("/a/b/x.jpg") == str(Path("/a/b/x.txt"))


def test_yolov5_label_cache_is_left_as_it_was(tmp_path):
    images = make_yolo_dataset(tmp_path / "data", num_images=2)
    theirs = tmp_path / "data" / "labels.cache"  # YOLOv5's name and place: a pickled dict we never read
    theirs.write_bytes(b"\x80\x04 a YOLOv5 label cache")
    scan_dataset(list_image_files(images), workers=1)
    assert theirs.read_bytes() == b"\x80\x04 a YOLOv5 label cache"
    assert (tmp_path / "data" / "labels.npz.cache").is_file()


@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04 cut short", b"not an npz at all"])
def test_damaged_cache_is_named_and_rebuilt(tmp_path, caplog, damage):
    images = make_yolo_dataset(tmp_path / "data", num_images=2)
    scan_dataset(list_image_files(images), workers=1)
    cache = tmp_path / "data" / "labels.npz.cache"
    cache.write_bytes(cache.read_bytes()[:100] if damage == b"PK\x03\x04 cut short" else damage)
    with caplog.at_level(logging.WARNING):
        result = scan_dataset(list_image_files(images), workers=1)
    assert len(result.im_files) == 2
    assert sum(f"ignoring unreadable label cache {cache}" in r.getMessage() for r in caplog.records) == 1
    assert np.load(cache)["key"].size == 1, "rebuilt"


def test_cache_temp_names_are_unique(tmp_path):
    images = make_yolo_dataset(tmp_path / "data", num_images=2)
    (tmp_path / "data" / "labels.npz.cache.tmp").mkdir()  # a fixed temp name, taken (another run's)
    scan_dataset(list_image_files(images), workers=1)
    assert (tmp_path / "data" / "labels.npz.cache").is_file()
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.endswith(".tmp") and p.is_file()]


def test_jpeg_with_bytes_after_the_end_marker_is_kept(tmp_path):
    images = make_yolo_dataset(tmp_path / "data", num_images=1)
    ok, encoded = cv2.imencode(".jpg", np.full((40, 60, 3), 90, np.uint8))
    (images / "trailing.jpg").write_bytes(encoded.tobytes() + b"\x00" * 16)  # e.g. padding added by a camera
    result = scan_dataset(list_image_files(images), workers=1)
    assert result.corrupt == 0 and str(images / "trailing.jpg") in result.im_files


def test_utf8_bom_does_not_drop_the_first_box(tmp_path):
    images = make_yolo_dataset(tmp_path / "data", num_images=1)
    (tmp_path / "data" / "labels" / "im0.txt").write_bytes("\ufeff0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n"
                                                           .encode("utf-8"))
    result = scan_dataset(list_image_files(images), workers=1)
    assert len(result.labels[0]) == 2 and not result.messages


def test_flat_folder_cache_goes_inside_it_and_unlabelled_gets_none(tmp_path):
    flat = tmp_path / "parent" / "flat"
    flat.mkdir(parents=True)
    for index in range(2):
        cv2.imwrite(str(flat / f"im{index}.png"), np.zeros((32, 32, 3), np.uint8))
    scan_dataset(list_image_files(flat), workers=1)
    assert [p.name for p in (tmp_path / "parent").iterdir()] == ["flat"] and not list(flat.glob("*.cache"))
    (flat / "im0.txt").write_text(GOOD)
    scan_dataset(list_image_files(flat), workers=1)
    assert [p.name for p in (tmp_path / "parent").iterdir()] == ["flat"] and (flat / "flat.npz.cache").is_file()


def test_exif_orientation_is_applied_in_scan_training_and_detect(tmp_path):
    from PIL import Image

    from utils.data.dataset import LoadImagesAndLabels
    from utils.infer.sources import iterate_frames

    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 60 wide x 40 high, displayed rotated by 90 degrees: 40 x 60
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(images / "rotated.jpg", exif=exif)
    result = scan_dataset(list_image_files(images), workers=1)
    assert result.shapes.tolist() == [[40, 60]]  # (w, h) as displayed
    dataset = LoadImagesAndLabels(images, img_size=60)
    assert dataset.load_image(0)[0].shape[:2] == (60, 40)
    assert next(iterate_frames(images)).image.shape[:2] == (60, 40)


def test_decompression_bombs_are_skipped_in_training_and_detect(tmp_path, caplog):
    """Training died with DecompressionBombError; detect decoded 900 MP (6 GB RSS)."""
    from utils.data.dataset import LoadImagesAndLabels
    from utils.infer.sources import iterate_frames

    images = make_yolo_dataset(tmp_path / "data", num_images=2)
    for suffix in (".jpg", ".png"):
        write_image_bomb(images / f"bomb{suffix}")
        (images.parent / "labels" / f"bomb{suffix[1:]}.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with caplog.at_level(logging.WARNING):
        dataset = LoadImagesAndLabels(images, img_size=64, augment=True)
        frames = [frame.path for frame in iterate_frames(images)]
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 200  # MB
    assert [Path(f).name for f in dataset.im_files] == ["im0.png", "im1.png"] and dataset[0][0].shape[0] == 3
    assert [Path(f).name for f in frames] == ["im0.png", "im1.png"]
    for name in ("bomb.jpg", "bomb.png"):
        assert f"{images / name}: corrupt image skipped (header claims 900000000 pixels" in caplog.text


@pytest.mark.timeout(30)
def test_a_fifo_named_in_an_image_list_is_skipped_not_waited_for(tmp_path, caplog):
    images = make_yolo_dataset(tmp_path / "data", num_images=2)
    os.mkfifo(images / "pipe.jpg")
    (tmp_path / "data" / "list.txt").write_text("images/im0.png\nimages/pipe.jpg\n")
    with caplog.at_level(logging.WARNING):
        result = scan_dataset(list_image_files(tmp_path / "data" / "list.txt"), workers=1)
    assert [Path(f).name for f in result.im_files] == ["im0.png"] and result.corrupt == 1
    assert "pipe.jpg: corrupt image skipped (not a regular file (a FIFO, device or folder))" in caplog.text
    assert [Path(f).name for f in list_image_files(images)] == ["im0.png", "im1.png"]  # a folder walk skips it
    with pytest.raises(ValueError, match="pipe.jpg is neither a folder nor a regular file"):
        list_image_files(images / "pipe.jpg")


@pytest.mark.timeout(30)
def test_symlinked_sub_folders_are_followed_once_and_loops_end(tmp_path):
    """YOLOv5 follows links to folders; a loop must not make the walk endless."""
    images = make_yolo_dataset(tmp_path / "data", num_images=2)
    outside = make_yolo_dataset(tmp_path / "elsewhere", num_images=3)
    (images / "linked").symlink_to(outside, target_is_directory=True)
    (images / "again").symlink_to(outside, target_is_directory=True)  # the same real folder twice
    (outside / "loop").symlink_to(tmp_path / "data", target_is_directory=True)  # back up: a cycle
    (images / "sub").mkdir()
    (images / "im0.png").rename(images / "sub" / "im0.png")
    (images / "a_link_to_sub").symlink_to(images / "sub", target_is_directory=True)  # listed by its real path
    files = [str(Path(f).relative_to(images)) for f in list_image_files(images)]
    assert files == ["again/im0.png", "again/im1.png", "again/im2.png", "im1.png", "sub/im0.png"]
