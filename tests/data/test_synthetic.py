"""Tests for utils/data/synthetic.py and data/scripts/synthetic.py: deterministic, small objects, exact boxes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, tree_bytes
from utils.data.synthetic import CLASS_NAMES, MARKER, OWNER_MARKER, draw_object, generate_dataset, make_image


def read_folder(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    first = read_folder(generate_dataset(tmp_path / "a", 3, 1, size=96, seed=7))
    second = read_folder(generate_dataset(tmp_path / "b", 3, 1, size=96, seed=7))
    third = read_folder(generate_dataset(tmp_path / "c", 3, 1, size=96, seed=8))
    assert first == second
    assert first["images/train/train_00000.jpg"] != third["images/train/train_00000.jpg"]
    assert len([name for name in first if name.endswith(".jpg")]) == 4


def test_objects_are_mostly_small_and_of_every_class():
    labels = np.concatenate([make_image(384, np.random.default_rng([0, 0, i]))[1] for i in range(12)])
    sizes = labels[:, 3:5] - labels[:, 1:3]
    assert (sizes.max(1) < 32).mean() > 0.7
    assert (sizes.max(1) >= 32).any()
    assert set(labels[:, 0].astype(int)) == set(range(len(CLASS_NAMES)))


def test_drawn_box_is_the_exact_pixel_extent():
    for class_id in range(len(CLASS_NAMES)):
        image = np.zeros((80, 80, 3), np.uint8)
        box = draw_object(image, class_id, (40.0, 40.0), 1.0, np.random.default_rng(class_id))
        ys, xs = np.nonzero(image.any(-1))
        np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def test_interrupted_or_changed_generation_is_redone(tmp_path):
    out = generate_dataset(tmp_path / "s", 3, 1, size=64, seed=0)
    (out / MARKER).unlink()  # as if killed before the marker was written
    (out / "images" / "train" / "train_00000.jpg").write_bytes(b"half")
    generate_dataset(out, 3, 1, size=64, seed=0)
    assert (out / "images" / "train" / "train_00000.jpg").read_bytes()[:2] == b"\xff\xd8"
    generate_dataset(out, 2, 1, size=64, seed=0)  # fewer images: no stale image survives
    assert len(list((out / "images" / "train").glob("*.jpg"))) == 2
    assert len(list((out / "labels" / "train").glob("*.txt"))) == 2


def test_cli(tmp_path):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "data" / "scripts" / "synthetic.py"), "--out",
                             str(tmp_path / "cli"), "--images", "2", "--seed", "1", "--size", "64"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "cli" / "images" / "train").glob("*.jpg"))) == 2
    assert (tmp_path / "cli" / MARKER).is_file()


def test_a_folder_with_other_files_is_refused_byte_for_byte(tmp_path):
    """A user's dataset with a copied `generate:` block: nothing deleted, overwritten or added."""
    user = tmp_path / "real"
    for split in ("train", "val"):
        (user / "images" / split).mkdir(parents=True)
        (user / "labels" / split).mkdir(parents=True)
    (user / "images" / "train" / "train_00002.jpg").write_bytes(b"the user's own photo")
    (user / "labels" / "train" / "train_00002.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (user / "images" / "val" / "val_00000.jpg").write_bytes(b"another photo")
    before = tree_bytes(user)
    with pytest.raises(ValueError, match=f"into {user}, which already holds files it did not make"):
        generate_dataset(user, 3, 1, size=64, seed=0)
    assert tree_bytes(user) == before


def test_an_owned_folder_is_regenerated_but_foreign_names_are_kept(tmp_path):
    out = generate_dataset(tmp_path / "s", 2, 1, size=64, seed=0)
    assert (out / OWNER_MARKER).is_file()
    extra = out / "images" / "train" / "train_mine.jpg"
    extra.write_bytes(b"added by hand")
    generate_dataset(out, 2, 1, size=64, seed=1)  # other settings: regenerated in place
    assert extra.read_bytes() == b"added by hand"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(list((generate_dataset(empty, 1, 1, size=64) / "images" / "train").iterdir())) == 1
