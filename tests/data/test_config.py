"""Tests for utils/data/config.py: path resolution, names/nc checks, generation, missing-data help."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_yolo_dataset, tree_bytes
from utils.data.config import REPO_ROOT, find_data_file, load_data_config


def write_yaml(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content))
    return path


def test_splits_resolve_against_path(tmp_path):
    make_yolo_dataset(tmp_path / "set" / "a", num_images=1)
    make_yolo_dataset(tmp_path / "set" / "b", num_images=1)
    (tmp_path / "set" / "list.txt").write_text("a/images/im0.png\n")
    config = load_data_config(write_yaml(tmp_path / "d.yaml", {
        "path": str(tmp_path / "set"), "train": ["a/images", "b/images"], "val": "list.txt",
        "names": {0: "car", 1: "bus", 2: "van"}}))
    assert config["train"] == [str(tmp_path / "set" / "a" / "images"), str(tmp_path / "set" / "b" / "images")]
    assert config["val"] == str(tmp_path / "set" / "list.txt") and config["test"] is None
    assert config["names"] == ["car", "bus", "van"] and config["nc"] == 3


def test_without_path_the_yaml_folder_is_the_root(tmp_path):
    make_yolo_dataset(tmp_path, num_images=1)
    config = load_data_config(write_yaml(tmp_path / "d.yaml", {"train": "images", "val": "images", "nc": 2}))
    assert config["path"] == str(tmp_path) and config["names"] == ["class0", "class1"]


@pytest.mark.parametrize("content,message", [
    ({"train": "x", "val": "x", "nc": 3, "names": ["a", "b"]}, "nc=3 but 2 names"),
    ({"train": "x", "val": "x"}, "needs 'names' or 'nc'"),
    ({"train": "x", "val": "x", "names": {0: "a", 2: "b"}}, "ids must be 0..1"),
    ({"train": "x", "val": "x", "names": ["a"], "generate": {"imgs": 3}}, "'generate' must be"),
    (["train", "val"], "expected a mapping"),
])
def test_malformed_yaml_is_a_value_error(tmp_path, content, message):
    with pytest.raises(ValueError, match=message):
        load_data_config(write_yaml(tmp_path / "bad.yaml", content))


def test_missing_data_says_where_and_how(tmp_path):
    path = write_yaml(tmp_path / "d.yaml", {"path": str(tmp_path), "train": "tr", "val": "va", "names": ["a"],
                                            "download": "unzip the archive here"})
    with pytest.raises(FileNotFoundError, match="tr', .*va'.*never downloads.*unzip the archive here"):
        load_data_config(path)
    with pytest.raises(ValueError, match="split 'test' is required"):
        load_data_config(path, splits=("test",))


def test_visdrone_yaml_names_the_official_zips_and_converter():
    with pytest.raises(FileNotFoundError) as error:
        load_data_config("VisDrone.yaml")  # looked up in <repo>/data/
    message = str(error.value)
    for name in ("VisDrone2019-DET-train.zip", "VisDrone2019-DET-val.zip", "VisDrone2019-DET-test-dev.zip",
                 "visdrone2yolo.py", str(REPO_ROOT / "datasets" / "VisDrone")):
        assert name in message


def test_visdrone_yaml_content():
    config = yaml.safe_load(find_data_file("VisDrone.yaml").read_text())
    assert config["nc"] == 10 and config["names"][0] == "pedestrian" and config["names"][-1] == "motor"
    assert config["val"].startswith("VisDrone2019-DET-val") and "test-dev" in config["test"]


def test_generate_makes_the_set_once(tmp_path):
    content = {"path": str(tmp_path / "syn"), "train": "images/train", "val": "images/val", "names": ["a"] * 5,
               "generate": {"images": 2, "val_images": 1, "size": 64, "seed": 0}}
    config = load_data_config(write_yaml(tmp_path / "s.yaml", content))
    assert len(list(Path(config["train"]).glob("*.jpg"))) == 2 and len(list(Path(config["val"]).glob("*.jpg"))) == 1
    mtime = (Path(config["train"]) / "train_00000.jpg").stat().st_mtime_ns
    load_data_config(tmp_path / "s.yaml")
    assert (Path(config["train"]) / "train_00000.jpg").stat().st_mtime_ns == mtime


def test_default_synthetic_yaml_loads():
    config = load_data_config("data/synthetic.yaml")
    assert config["path"] == str(REPO_ROOT / "datasets" / "synthetic")
    assert config["nc"] == 5 and Path(config["train"]).is_dir() and Path(config["val"]).is_dir()


def test_generate_key_on_a_users_dataset_refuses_and_touches_nothing(tmp_path):
    images = make_yolo_dataset(tmp_path / "mine", num_images=2)
    before = tree_bytes(tmp_path / "mine")
    content = {"path": str(tmp_path / "mine"), "train": "images", "val": "images", "names": ["a", "b", "c"],
               "generate": {"images": 2, "val_images": 1, "size": 64, "seed": 0}}
    with pytest.raises(ValueError, match="holds files it did not make"):
        load_data_config(write_yaml(tmp_path / "copied.yaml", content))
    assert tree_bytes(tmp_path / "mine") == before and images.is_dir()


def peak_rss_growth_mb(function) -> float:
    """How far the process's peak resident memory rose while ``function()`` ran (MB; getrusage gives KiB)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    function()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


@pytest.mark.parametrize("text,message", [
    ("train: x\nval: x\nnc: three\n", r"nc must be a whole number of classes from 1 to \d+, got 'three'"),
    ("train: x\nval: x\nnc: 2.5\nnames: [a, b]\n", "nc must be a whole number .* got 2.5"),
    ("train: x\nval: x\nnc: .nan\n", "nc must be a whole number"),
    ("train: x\nval: x\nnc: 1000000000000\n", "nc must be a whole number"),
    ("train: x\nval: x\nnames: [[a, b], c]\n", "each of 'names' must be one name"),
    ("train: x\nval: x\nnames: {0: a, x: b}\n", "ids must be 0..1"),
    ("train: x\nval: [x\n", r"bad\.yaml:3: not valid YAML"),
])
def test_bad_nc_names_and_syntax_name_the_file(tmp_path, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        load_data_config(tmp_path / "bad.yaml")
    assert str(tmp_path / "bad.yaml") in str(error.value) and "\n" not in str(error.value)


def test_whole_float_nc_is_taken(tmp_path):
    images = make_yolo_dataset(tmp_path / "d", num_images=1)
    (tmp_path / "ok.yaml").write_text(f"path: {images.parent}\ntrain: images\nval: images\nnc: 3.0\n")
    assert load_data_config(tmp_path / "ok.yaml")["nc"] == 3


@pytest.mark.parametrize("content", [bytes(range(256)) * 4, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"nc: 1\x00\x00"])
def test_binary_yaml_is_refused_naming_the_file(tmp_path, content):
    (tmp_path / "binary.yaml").write_bytes(content)
    with pytest.raises(ValueError, match=r"binary\.yaml: not a (UTF-8 )?text file"):
        load_data_config(tmp_path / "binary.yaml")


@pytest.mark.timeout(60)
def test_alias_bomb_in_names_is_refused_with_bounded_memory(tmp_path):
    levels = [f'l0: &l0 [{", ".join(["lol"] * 9)}]']
    levels += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]  # 9**9 items once expanded
    (tmp_path / "bomb.yaml").write_text("\n".join(levels) + "\ntrain: x\nval: x\nnames: *l8\n")

    def load() -> None:
        with pytest.raises(ValueError, match="bomb.yaml: more than .* values once its aliases"):
            load_data_config(tmp_path / "bomb.yaml")

    assert peak_rss_growth_mb(load) < 100


def test_a_self_containing_value_is_refused(tmp_path):
    (tmp_path / "loop.yaml").write_text("train: x\nval: x\nnames: &n [a, *n]\n")
    with pytest.raises(ValueError, match="containing itself"):
        load_data_config(tmp_path / "loop.yaml")


@pytest.mark.parametrize("generate,message", [
    ("{size: 0}", "'generate' needs images and val_images"),
    ("{images: 2, val_images: 1, size: 0}", "size must be a whole number from 32"),
    ("{images: many, val_images: 1}", "images must be a whole number from 1 .* got 'many'"),
    ("{images: 2, val_images: 1, size: 64, seed: -1}", "seed must be"),
    ("{images: 2.5, val_images: 1}", "images must be"),
])
def test_bad_generate_settings_are_one_line_naming_the_file(tmp_path, generate, message):
    (tmp_path / "gen.yaml").write_text(f"path: {tmp_path / 'out'}\ntrain: images/train\nval: images/val\n"
                                       f"names: [a]\ngenerate: {generate}\n")
    with pytest.raises(ValueError, match=message) as error:
        load_data_config(tmp_path / "gen.yaml")
    assert str(error.value).startswith(str(tmp_path / "gen.yaml")) and not (tmp_path / "out").exists()


def test_generate_on_a_user_folder_with_its_own_complete_json_touches_nothing(tmp_path):
    """A user's complete.json (even one that equals the generator's settings) proves nothing."""
    user = tmp_path / "mine"
    images = make_yolo_dataset(user, num_images=2)
    settings = {"images": 2, "val_images": 1, "size": 64, "seed": 0}
    for complete in ({"done": True}, dict(settings, names=["car", "truck", "pedestrian", "bicycle", "bus"])):
        (user / "complete.json").write_text(yaml.safe_dump(complete))
        (user / "GENERATED.txt").write_text("my notes on how I generated these\n")
        before = {name: hashlib.sha256(data).hexdigest() for name, data in tree_bytes(user).items()}
        content = {"path": str(user), "train": "images", "val": "images", "names": ["a", "b", "c"],
                   "generate": settings}
        with pytest.raises(ValueError, match="holds files it did not make"):
            load_data_config(write_yaml(tmp_path / "copied.yaml", content))
        after = {name: hashlib.sha256(data).hexdigest() for name, data in tree_bytes(user).items()}
        assert after == before and images.is_dir()
