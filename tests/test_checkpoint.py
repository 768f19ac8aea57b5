"""Tests for utils/checkpoint.py: atomic writes, safe loading, clear errors."""

import errno
import os
import pickle
import stat

import pytest
import torch

from tests.conftest import FOREIGN_FILES, HOSTILE_KINDS, foreign_checkpoint, make_hostile_checkpoint, small_filesystem
from utils.checkpoint import checkpoint_weights, is_stripped, load_checkpoint, save_checkpoint, strip_checkpoint_file
from utils.files import OutputWriteError


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


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_files_honour_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        save_checkpoint(_checkpoint(), tmp_path / "last.pt")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "last.pt").stat().st_mode) == mode


def test_strip_keeps_ema_weights_in_half_precision(tmp_path):
    checkpoint = {**_checkpoint(), "ema": {"w": torch.arange(4.0) + 0.5, "steps": torch.tensor(7)},
                  "optimizer": {"state": {}}, "scaler": {}, "hooks": {"lr": {}}, "opt": {"epochs": 4}}
    path = tmp_path / "best.pt"
    save_checkpoint(checkpoint, path)
    full_size = path.stat().st_size
    assert not is_stripped(load_checkpoint(path))
    strip_checkpoint_file(path)
    stripped = load_checkpoint(path)
    assert is_stripped(stripped) and "ema" not in stripped and "hooks" not in stripped
    assert stripped["model"]["w"].dtype == torch.float16 and stripped["model"]["steps"].dtype == torch.int64
    torch.testing.assert_close(stripped["model"]["w"].float(), torch.arange(4.0) + 0.5)
    assert (stripped["epoch"], stripped["opt"], stripped["names"]) == (3, {"epochs": 4}, ["a", "b"])
    assert path.stat().st_size < full_size


def test_full_disk_names_the_file_and_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(_checkpoint(), path)
    before = path.read_bytes()
    (tmp_path / ".last.pt.killed.tmp").write_bytes(b"a save killed earlier")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OutputWriteError, match=r"could not write .*last\.pt: .*No space left on device \(disk full"):
        save_checkpoint({**_checkpoint(), "epoch": 4}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "stale and new temporary files are removed"


def test_full_disk_on_a_small_filesystem(tmp_path):
    with small_filesystem(tmp_path / "small", "256k") as small:
        with pytest.raises(OutputWriteError, match="No space left on device"):
            save_checkpoint({"model": {"w": torch.zeros(200_000)}, "model_yaml": {}}, small / "last.pt")
        assert list(small.iterdir()) == []


# The global each payload's pickle names (os.system lives in posix on Linux).
CALLED = {"os.system": "posix.system", "eval": "builtins.eval", "builtins.exec": "builtins.exec",
          "subprocess.Popen": "subprocess.Popen", "nested": "torch.storage._load_from_bytes"}


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
def test_hostile_torch_files_are_refused_without_running(tmp_path, kind):
    marker = tmp_path / "payload-ran"
    path = make_hostile_checkpoint(tmp_path / "hostile.pt", kind, marker)
    with pytest.raises(ValueError, match=rf"hostile\.pt: contains code we do not run: {CALLED[kind]} "):
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
    with pytest.raises(ValueError, match=r"bomb\.pt: refused: its entries unpack to [\d,]+ bytes, more than the file's"):
        load_checkpoint(path)


def test_checkpoint_weights_prefer_the_ema_when_present():
    model, ema = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
    assert checkpoint_weights({"model": model, "ema": ema}) is ema
    assert checkpoint_weights({"model": model, "ema": ema}, use_ema=False) is model
    assert checkpoint_weights({"model": model, "ema": None}) is model and checkpoint_weights({"model": model}) is model


def test_one_save_writes_the_same_bytes_to_every_path(tmp_path):
    save_checkpoint(_checkpoint(), tmp_path / "best.pt", tmp_path / "last.pt")
    assert (tmp_path / "best.pt").read_bytes() == (tmp_path / "last.pt").read_bytes()
    assert load_checkpoint(tmp_path / "last.pt")["names"] == _checkpoint()["names"]
