"""Tests for utils/checkpoint.py: atomic writes, safe loading, clear errors."""

import pickle

import pytest
import torch

from tests.conftest import FOREIGN_FILES, HOSTILE_KINDS, foreign_checkpoint, make_hostile_checkpoint
from utils.checkpoint import load_checkpoint, save_checkpoint


def _checkpoint():
    return {"model": {"w": torch.arange(4.0)}, "ema": None, "model_yaml": {"nc": 2}, "names": ["a", "b"],
            "epoch": 3, "best_fitness": 0.5}


def test_round_trip_and_no_temporary_left(tmp_path):
    path = tmp_path / "weights" / "last.pt"
    save_checkpoint(_checkpoint(), path)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and loaded["names"] == ["a", "b"]
    torch.testing.assert_close(loaded["model"]["w"], torch.arange(4.0))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(_checkpoint(), path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({**_checkpoint(), "epoch": 4}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": _Payload(), "model_yaml": {}}, f)
    with pytest.raises(ValueError, match="evil.pt"):
        load_checkpoint(path)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"state": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="model_yaml"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a zip")
    with pytest.raises(ValueError, match="garbage.pt"):
        load_checkpoint(tmp_path / "garbage.pt")


def test_plain_state_dict_is_accepted_only_for_transfer(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"model": {"w": torch.ones(2)}}, path)
    with pytest.raises(ValueError, match="model_yaml"):
        load_checkpoint(path)
    assert load_checkpoint(path, weights_only_transfer=True)["model"]["w"].sum() == 2


# The global each payload's pickle names (os.system lives in posix on Linux).
CALLED = {"os.system": "posix.system", "eval": "builtins.eval", "builtins.exec": "builtins.exec",
          "subprocess.Popen": "subprocess.Popen", "nested": "torch.storage._load_from_bytes"}


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
def test_hostile_torch_files_are_refused_without_running(tmp_path, kind):
    marker = tmp_path / "payload-ran"
    path = make_hostile_checkpoint(tmp_path / "hostile.pt", kind, marker)
    with pytest.raises(ValueError, match=rf"hostile\.pt: refused to load .*{CALLED[kind]}, which would run code"):
        load_checkpoint(path)
    assert not marker.exists()


def test_unknown_classes_stay_inert_records(tmp_path):
    """A class of a model namespace is recorded, never imported or called; its state is kept as data."""
    path = tmp_path / "odd.pt"
    torch.save({"model": torch.nn.Identity()}, path)  # torch.nn classes: inert records, yet not a YOLOv5 file
    with pytest.raises(ValueError, match="odd.pt: not a checkpoint of this project, nor a YOLOv5"):
        load_checkpoint(path)


@pytest.mark.parametrize("name", FOREIGN_FILES)
def test_foreign_files_translate_to_our_format(name):
    path, expected = foreign_checkpoint(name)
    checkpoint = load_checkpoint(path)
    assert checkpoint["foreign"].startswith("models.yolo.") and checkpoint["ema"] is None
    assert checkpoint["names"] == [f"class{i}" for i in range(expected["nc"])]  # a dict in v7.0, a list in TPH
    graph = checkpoint["model_yaml"]
    assert graph["backbone"] == expected["yaml"]["backbone"] and graph["head"] == expected["yaml"]["head"]
    assert all(value.dtype != torch.float16 for value in checkpoint["model"].values())
    last = len(graph["backbone"]) + len(graph["head"]) - 1
    stride = checkpoint["model"][f"model.{last}.stride"]
    assert stride.tolist() == expected["strides"]
    pixels = torch.tensor(graph["anchors"]).view_as(checkpoint["model"][f"model.{last}.anchors"])
    torch.testing.assert_close(pixels, checkpoint["model"][f"model.{last}.anchors"] * stride.view(-1, 1, 1))


def test_compressed_pickle_larger_than_its_file_is_refused(tmp_path):
    """torch stores entries uncompressed; a small file that would inflate into a huge pickle is refused unread."""
    import zipfile

    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb/data.pkl", b"\x80\x02" + b"(" * 2_000_000)
    with pytest.raises(ValueError, match=r"bomb\.pt: refused to load .*unpacks to more than the file's size"):
        load_checkpoint(path)
