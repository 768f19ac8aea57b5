"""Tests for utils/foreign_pickle.py: numpy values read as data, everything else that calls code refused."""

import io
import pickle

import numpy as np
import pytest
import torch

from utils.foreign_pickle import ArrayFromBytes, ForbiddenCode, InertUnpickler, OverlappingView


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
    import zipfile

    with zipfile.ZipFile(archive) as zipped:
        name = next(n for n in zipped.namelist() if n.endswith("data.pkl"))
        loaded = InertUnpickler(zipped.open(name), zipped, name[: -len("data.pkl")]).load()
    assert isinstance(loaded["grid"], OverlappingView) and loaded["grid"].shape == (1_000_000, 1_000_000, 2)
    assert "claims 2,000,000,000,000 elements, its storage holds 2" in str(loaded["grid"])
    torch.testing.assert_close(loaded["w"], torch.arange(3.0))
