"""Tests for utils/checkpoint.py: atomic writes, safe loading, clear errors."""

import errno
import io
import os
import pickle
import random
import re
import resource
import shutil
import stat
import struct
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch

from tests.conftest import (
    FOREIGN_FILES,
    HOSTILE_KINDS,
    REPO_ROOT,
    YOLOV5_FIXTURES,
    foreign_checkpoint,
    make_hostile_checkpoint,
    small_filesystem,
)
from utils.checkpoint import (
    ArrayFromBytes,
    ForbiddenCode,
    InertUnpickler,
    OverlappingView,
    checkpoint_weights,
    is_stripped,
    load_checkpoint,
    save_checkpoint,
    strip_checkpoint_file,
)
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
    with pytest.raises(ValueError, match=r"evil\.pt: contains code we do not run: builtins\.print "):
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
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb/data.pkl", b"\x80\x02" + b"(" * 2_000_000)
    with pytest.raises(ValueError, match=r"bomb\.pt: refused: its entries unpack to [\d,]+ bytes, more than the file"):
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


# --- damaged, bomb and unreadable files (issue 26 A6, B1-B4, C7): each refused in one line, before allocating ---

def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _yolov5_shaped(tree: torch.nn.Module) -> dict:
    """A dict shaped like a YOLOv5 file: a pickled model object with a ``yaml`` graph whose layers are ``tree``."""
    model = torch.nn.Module()
    model.yaml = {"nc": 1, "backbone": [], "head": []}
    model.model = tree
    return {"epoch": 0, "model": model}


def _storage_byte_offset(path) -> int:
    """Offset of a byte in the middle of the file's largest storage entry (after its zip local header)."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "rb") as file:
        file.seek(info.header_offset)
        name_length, extra_length = struct.unpack("<HH", file.read(30)[26:30])
    return info.header_offset + 30 + name_length + extra_length + info.file_size // 2


@pytest.mark.parametrize("source", ["this project", "YOLOv5 v7.0"])
def test_a_flipped_byte_in_a_storage_fails_the_crc_check(tmp_path, source):
    path = tmp_path / "damaged.pt"
    if source == "this project":
        save_checkpoint({**_checkpoint(), "model": {"w": torch.arange(1000.0)}}, path)
    else:
        shutil.copyfile(YOLOV5_FIXTURES / "yolov5-v7.0-last.pt", path)
    data = bytearray(path.read_bytes())
    data[_storage_byte_offset(path)] ^= 0x01
    path.write_bytes(data)
    with pytest.raises(ValueError, match=r"damaged\.pt: not a complete checkpoint: BadZipFile: entry \S+/data/\d+ "
                                         r"fails its CRC check"):
        load_checkpoint(path)


def test_a_module_tree_of_shared_children_is_refused_quickly(tmp_path):
    """60 levels, each holding the next twice: 2**60 paths in a few kB (B1)."""
    levels = [torch.nn.Module() for _ in range(60)]
    for parent, child in zip(levels, levels[1:]):
        parent.left, parent.right = child, child
    levels[-1].weight = torch.nn.Parameter(torch.zeros(1))
    path = tmp_path / "dag.pt"
    torch.save(_yolov5_shaped(levels[0]), path)
    assert path.stat().st_size < 50_000
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"dag\.pt: refused: its module tree needs more than 20,000 visits"):
        load_checkpoint(path)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(("shape", "message"), [("loop", r"contains itself \(at model\.a\.again\)"),
                                                 ("chain", r"is deeper than 64 levels")])
def test_self_containing_or_endless_module_trees_are_refused(tmp_path, shape, message):
    """B2: a tree holding itself (RecursionError before) and an 80-level chain: one line each."""
    if shape == "loop":
        tree = torch.nn.Module()
        tree.a = torch.nn.Module()
        tree.a.again = tree
    else:
        tree = link = torch.nn.Module()
        for _ in range(80):
            link.next = torch.nn.Module()
            link = link.next
    path = tmp_path / "tree.pt"
    torch.save(_yolov5_shaped(tree), path)
    with pytest.raises(ValueError, match=rf"tree\.pt: refused: its module tree {message}"):
        load_checkpoint(path)


@pytest.mark.parametrize("layout", ["this project", "YOLOv5"])
def test_a_zero_stride_shape_bomb_is_refused_unallocated(tmp_path, layout):
    """B3: a 1-element storage viewed as (1e6, 1e6): 4 TB if anything materialised it."""
    bomb = torch.zeros(1).expand(1_000_000, 1_000_000)
    path = tmp_path / "bomb.pt"
    if layout == "this project":
        torch.save({"model": {"w": bomb}, "model_yaml": {}}, path)
        message = r"refused: a tensor of shape \(1000000, 1000000\) claims 1,000,000,000,000 elements"
    else:
        tree = torch.nn.Module()
        tree.register_buffer("grid", bomb)
        torch.save(_yolov5_shaped(tree), path)
        message = r"refused: model\.grid is a tensor of shape \(1000000, 1000000\) that claims 1,000,000,000,000"
    assert path.stat().st_size < 4000
    before = _peak_rss_mb()
    with pytest.raises(ValueError, match=rf"bomb\.pt: {message}"):
        load_checkpoint(path)
    assert _peak_rss_mb() - before < 100


def test_the_total_unpacked_size_is_capped_not_only_each_entry(tmp_path):
    """B4: 500 deflated entries of 50 kB, each smaller than the file, 25 MB together: refused unread."""
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb/data.pkl", pickle.dumps({"model": {}, "model_yaml": {}}, protocol=2))
        for index in range(500):
            archive.writestr(f"bomb/data/{index}", bytes(50_000))
    size = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        assert max(info.file_size for info in archive.infolist()) < size  # a cap per entry would let it through
    before, started = _peak_rss_mb(), time.perf_counter()
    with pytest.raises(ValueError, match=rf"bomb\.pt: refused: its entries unpack to 25,000,\d+ bytes, more than "
                                         rf"the file's {size:,} \(PyTorch stores them uncompressed\)"):
        load_checkpoint(path)
    assert _peak_rss_mb() - before < 50 and time.perf_counter() - started < 1.0


UNREADABLE = {"folder": r"is a folder, not a weights file \(name the \.pt file",
              "empty": r"not a complete checkpoint: the file is empty \(0 bytes\)",
              "truncated": r"not a complete checkpoint: no zip directory at its end \(a truncated download",
              "random": r"not a complete checkpoint: no zip directory at its end",
              "random pickle-like": r"not a complete checkpoint: UnpicklingError: "}


def _unreadable(path, kind):
    if kind == "folder":
        path.mkdir()
    elif kind == "truncated":
        save_checkpoint(_checkpoint(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        noise = random.Random(0).randbytes(4096)
        path.write_bytes({"empty": b"", "random": b"\x00" + noise, "random pickle-like": b"\x80\x02" + noise}[kind])
    return path


@pytest.mark.parametrize("kind", UNREADABLE)
def test_unreadable_weights_are_one_clear_line(tmp_path, kind):
    """C7: never torch's advice to retry with weights_only=False."""
    with pytest.raises(ValueError) as refused:
        load_checkpoint(_unreadable(tmp_path / "w.pt", kind))
    message = str(refused.value)
    assert re.match(rf"{re.escape(str(tmp_path / 'w.pt'))}: {UNREADABLE[kind]}", message), message
    assert "\n" not in message and "weights_only" not in message


def test_the_cli_prints_one_line_and_exits_2_for_random_bytes(tmp_path):
    path = _unreadable(tmp_path / "w.pt", "random pickle-like")
    done = subprocess.run([sys.executable, "val.py", "--weights", str(path), "--project", str(tmp_path)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr[-2000:]
    assert f"{path}: not a complete checkpoint" in done.stderr


def test_numpy_functions_in_a_yolov5_shaped_file_are_code_we_do_not_run(tmp_path):
    class Payload:
        def __reduce__(self):
            return np.load, (str(tmp_path / "x.npy"),)

    path = tmp_path / "numpy.pt"
    torch.save({"epoch": 3, "best_fitness": Payload(), "model": torch.nn.Module()}, path)
    with pytest.raises(ValueError, match=r"numpy\.pt: contains code we do not run: numpy\.load "):
        load_checkpoint(path)


# --- the inert unpickler: numpy values read as data, everything else that calls code refused ---

def _inert_load(obj, protocol=2):
    return InertUnpickler(io.BytesIO(pickle.dumps(obj, protocol=protocol))).load()


@pytest.mark.parametrize("value", [np.float64(0.133), np.float32(-2.5), np.int64(7), np.bool_(True)])
def test_numpy_scalars_are_rebuilt_from_their_bytes(value):
    loaded = _inert_load({"best_fitness": value})["best_fitness"]
    assert type(loaded) is type(value) and loaded == value


@pytest.mark.parametrize("array", [np.array([0.133]), np.arange(6, dtype=">i4").reshape(2, 3),
                                   np.asfortranarray(np.arange(6.0).reshape(2, 3)), np.zeros((0, 4), np.float16)])
def test_numpy_arrays_are_rebuilt_from_their_bytes(array):
    loaded = _inert_load([array])[0]
    assert isinstance(loaded, ArrayFromBytes) and loaded.shape == array.shape
    assert loaded.dtype.str[1:] == array.dtype.str[1:]  # the same type (numpy stores big-endian values natively)
    np.testing.assert_array_equal(loaded, array)


def test_protocol_2_bytes_are_read_through_codecs_only_as_latin1():
    assert _inert_load({"raw": b"\x00\xff\x80", "empty": b""}) == {"raw": b"\x00\xff\x80", "empty": b""}
    with pytest.raises(ForbiddenCode, match=r"builtins.bytes\(1000000000000\)"):  # would allocate a terabyte
        terabyte = pickle.dumps(10**12, protocol=2)[2:-1]
        InertUnpickler(io.BytesIO(b"\x80\x02c__builtin__\nbytes\n" + terabyte + b"\x85R.")).load()
    with pytest.raises(ForbiddenCode, match="_codecs.encode"):
        InertUnpickler(io.BytesIO(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R.")).load()


@pytest.mark.parametrize("array", [np.array([None, 1], dtype=object), np.zeros(2, dtype=[("a", "f4"), ("b", "i4")])])
def test_object_and_structured_numpy_values_are_refused(array):
    with pytest.raises(pickle.UnpicklingError, match="numpy dtype"):
        _inert_load(array)


class _ArrayRecord:
    """Pickles as numpy does an array, with a shape of its own choosing (4) over three values' bytes."""

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return _reconstruct, (np.ndarray, (0,), b"b"), (1, (4,), np.dtype("f8"), False, np.arange(3.0).tobytes())


def test_numpy_records_whose_bytes_disagree_with_their_shape_are_refused():
    with pytest.raises(pickle.UnpicklingError, match=r"numpy array of shape \(4,\) with 24 bytes"):
        _inert_load(_ArrayRecord())


@pytest.mark.parametrize("callable_", [np.load, np.frombuffer, np.save, eval])
def test_numpy_and_builtin_functions_are_code_we_do_not_run(callable_):
    class Payload:
        def __reduce__(self):
            return callable_, ("x",)

    with pytest.raises(ForbiddenCode, match=rf"\.{callable_.__name__}$"):
        _inert_load(Payload())


def test_a_view_claiming_more_than_its_storage_is_recorded_not_materialised():
    archive = io.BytesIO()
    torch.save({"grid": torch.zeros(2).expand(1_000_000, 1_000_000, 2), "w": torch.arange(3.0)}, archive)
    with zipfile.ZipFile(archive) as zipped:
        name = next(n for n in zipped.namelist() if n.endswith("data.pkl"))
        loaded = InertUnpickler(zipped.open(name), zipped, name[: -len("data.pkl")]).load()
    assert isinstance(loaded["grid"], OverlappingView) and loaded["grid"].shape == (1_000_000, 1_000_000, 2)
    assert "claims 2,000,000,000,000 elements, its storage holds 2" in str(loaded["grid"])
    torch.testing.assert_close(loaded["w"], torch.arange(3.0))
