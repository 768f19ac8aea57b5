"""Tests for utils/checkpoint.py: atomic writes, safe loading, clear errors."""

import errno
import os
import pickle

import pytest
import torch

from tests.conftest import small_filesystem
from utils.checkpoint import load_checkpoint, save_checkpoint
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
