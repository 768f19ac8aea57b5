"""Reading a pickled YOLOv5/TPH-YOLOv5 checkpoint as data: no pickled callable ever runs.

A torch zip file is an uncompressed zip of ``<name>/data.pkl`` (the object tree) and ``<name>/data/<key>``
(one entry per storage). :class:`InertUnpickler` resolves every global the pickle names itself:

* tensors and storages: our own bounds-checked rebuilders (:data:`SAFE_CALLABLES`, :meth:`persistent_load`);
* numpy scalars and arrays (an unstripped ``best_fitness``): rebuilt from their bytes by numpy's
  ``frombuffer`` for plain numeric dtypes only (:class:`DtypeRecord`, :class:`ArrayFromBytes`);
* classes of :data:`INERT_NAMESPACES` (YOLOv5's ``models.*``/``yolov5.models.*``, ``torch.nn.*``):
  :class:`Inert` records of their constructor arguments and state, never imported;
* anything else (``os.system``, ``builtins.eval``, ``torch.storage._load_from_bytes`` ...): :class:`ForbiddenCode`.

Errors say which kind of refusal it is: :class:`ForbiddenCode` (content we will not run), :class:`OverLimit`
(a size or shape past a documented limit) or anything else (a damaged or inconsistent file).
"""

from __future__ import annotations

import _compat_pickle
import collections
import pickle
import zipfile
from typing import IO, Any, Optional

import numpy as np
import torch

# Modules whose classes a YOLOv5 pickle names for its model objects: they become inert records, never imported.
# ``yolov5.*`` is the PyPI package's name for the same modules.
INERT_NAMESPACES = ("models.", "utils.", "yolov5.models.", "yolov5.utils.", "torch.nn.", "pathlib.", "argparse.",
                    "__main__.")
# Element types a pickle may name as torch.<name> (looked up in this list only: no other attribute of torch is read).
DTYPE_NAMES = ("float16", "float32", "float64", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
               "half", "float", "double", "long", "int", "short")
# Storage classes torch pickles for tensors, by the element type they hold.
STORAGE_DTYPES = {"HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
                  "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                  "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                  "BoolStorage": torch.bool, "UntypedStorage": torch.uint8}
# numpy element kinds read from bytes: bool, signed and unsigned integers, floats, complex (never objects).
NUMPY_KINDS = "biufc"


class ForbiddenCode(pickle.UnpicklingError):
    """The pickle names a callable outside the allow-list; ``str()`` is its qualified name."""


class OverLimit(pickle.UnpicklingError):
    """A claimed size past what the file can hold (a decompression or shape bomb)."""


class Inert:
    """An object of a pickled class we never import: it records its constructor args and state, runs nothing."""

    source = "object"  # "module.Class" named by the pickle

    def __new__(cls, *args: Any, **kwargs: Any) -> Inert:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.state = args, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def attribute(self, name: str) -> Any:
        """An attribute of the pickled object (its ``__dict__`` entry), None when absent."""
        state = self.state[0] if isinstance(self.state, tuple) and self.state else self.state
        return state.get(name) if isinstance(state, dict) else None


class DtypeRecord:
    """``numpy.dtype(name, align, copy)`` plus its pickled state, checked to be a plain numeric type first."""

    def __init__(self, name: Any, align: Any = False, copy: Any = False):
        if not isinstance(name, str) or len(name) > 8:
            raise pickle.UnpicklingError(f"malformed numpy dtype {name!r:.40}")
        self.name, self.dtype = name, None

    def __setstate__(self, state: Any) -> None:
        """(version, byte order, subarray, names, fields, elsize, alignment, flags): plain types only."""
        if not (isinstance(state, tuple) and len(state) >= 5 and state[1] in ("<", ">", "|", "=")
                and state[2:5] == (None, None, None)):
            raise pickle.UnpicklingError(f"numpy dtype {self.name!r} with a structured or malformed state")
        dtype = np.dtype(self.name)
        if dtype.kind not in NUMPY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise pickle.UnpicklingError(f"numpy dtype {self.name!r} is not a plain number type")
        self.dtype = dtype.newbyteorder(state[1]) if state[1] in "<>" else dtype


def _checked_dtype(record: Any) -> np.dtype:
    if not isinstance(record, DtypeRecord) or record.dtype is None:
        raise pickle.UnpicklingError("numpy value without a checked dtype")
    return record.dtype


def _numpy_scalar(record: Any, data: Any) -> np.generic:
    """numpy.core.multiarray.scalar(dtype, bytes): the one value those bytes hold."""
    dtype = _checked_dtype(record)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError(f"numpy scalar of {dtype} with {len(data) if isinstance(data, bytes) else 'no'} "
                                     f"bytes")
    return np.frombuffer(data, dtype)[0]


class ArrayFromBytes(np.ndarray):
    """numpy.core.multiarray._reconstruct(ndarray, ...) + BUILD: an ndarray filled from its pickled bytes only."""

    def __setstate__(self, state: Any) -> None:
        """(version, shape, dtype, fortran order, raw bytes); the bytes must be exactly the shape's size."""
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[1], tuple)
                and all(isinstance(n, int) and n >= 0 for n in state[1]) and isinstance(state[4], bytes)):
            raise pickle.UnpicklingError("malformed numpy array record")
        _, shape, record, fortran, data = state
        dtype = _checked_dtype(record)
        if int(np.prod(shape, dtype=object)) * dtype.itemsize != len(data):
            raise pickle.UnpicklingError(f"numpy array of shape {shape} with {len(data)} bytes of {dtype}")
        super().__setstate__((1, shape, dtype, bool(fortran), data))


def _numpy_reconstruct(cls: Any, shape: Any, typecode: Any) -> ArrayFromBytes:
    if cls is not ArrayFromBytes:
        raise pickle.UnpicklingError(f"numpy _reconstruct of {cls!r:.40}")
    return ArrayFromBytes((0,), np.uint8)


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """How protocol-2 pickles store bytes: ``_codecs.encode(str, 'latin1')``; any other use is refused."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ForbiddenCode(f"_codecs.encode({type(text).__name__}, {encoding!r:.20})")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """How protocol-2 pickles store ``b''``: ``bytes()``; ``bytes(n)`` would allocate n bytes, so it is refused."""
    if args:
        raise ForbiddenCode(f"builtins.bytes({args[0]!r:.20})")
    return b""


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Inert:
    """copyreg._reconstructor (protocol 0/1 objects), allowed for inert classes only."""
    if not (isinstance(cls, type) and issubclass(cls, Inert) and base is object and state is None):
        raise ForbiddenCode(f"copyreg._reconstructor({cls!r:.40}, {base!r:.40}, ...)")
    return cls.__new__(cls)


class OverlappingView:
    """A pickled tensor that claims more elements than its storage holds (zero or overlapping strides).

    YOLOv5/TPH keep such views only as caches they rebuild anyway (TPH's ``anchor_grid`` is an ``expand()``),
    so it is recorded, never materialised: a 2 KB file could otherwise describe terabytes that a later
    ``.float()`` allocates. Where a weight is needed, finding one of these is a refusal.
    """

    def __init__(self, shape: tuple, storage_numel: int):
        self.shape, self.storage_numel = shape, storage_numel

    def __str__(self) -> str:
        return (f"a tensor of shape {self.shape} that claims {int(np.prod(self.shape, dtype=object)):,} elements, "
                f"its storage holds {self.storage_numel:,}")


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *unused: Any) -> Any:
    """torch._utils._rebuild_tensor_v2 on our storages: a bounds-checked view, backward hooks dropped."""
    if not (isinstance(storage, torch.Tensor) and isinstance(size, tuple) and isinstance(stride, tuple)
            and all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride)) and len(size) == len(stride)):
        raise pickle.UnpicklingError("malformed tensor record")
    if int(np.prod(size, dtype=object)) > storage.numel():
        return OverlappingView(size, storage.numel())
    return storage.as_strided(size, stride, offset)  # raises when out of the storage's bounds


def _rebuild_parameter(data: Any, *unused: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("malformed parameter record")
    return data


SAFE_CALLABLES = {("collections", "OrderedDict"): collections.OrderedDict, ("builtins", "set"): set,
                  ("builtins", "frozenset"): frozenset, ("copyreg", "_reconstructor"): _safe_reconstructor,
                  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
                  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
                  ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
                  ("torch", "Size"): torch.Size, ("_codecs", "encode"): _codecs_encode,
                  ("builtins", "bytes"): _empty_bytes,
                  ("numpy", "dtype"): DtypeRecord, ("numpy", "ndarray"): ArrayFromBytes}
# numpy moved its pickle helpers from numpy.core to numpy._core in 2.0: files name either.
for _package in ("numpy.core.multiarray", "numpy._core.multiarray"):
    SAFE_CALLABLES.update({(_package, "scalar"): _numpy_scalar, (_package, "_reconstruct"): _numpy_reconstruct})


class InertUnpickler(pickle.Unpickler):
    """Unpickles a torch zip checkpoint (or, with no archive, a bare pickle) without running code.

    Storages are read from ``archive`` once each (the caller has capped the archive's total unpacked size).
    """

    def __init__(self, stream: IO[bytes], archive: Optional[zipfile.ZipFile] = None, prefix: str = ""):
        self.archive, self.prefix = archive, prefix
        self.storages: dict[str, torch.Tensor] = {}
        self.inert_classes: dict[str, type] = {}
        super().__init__(stream)

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles (torch.save's) name Python 2 modules (__builtin__, commands): read them as Python 3's.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in SAFE_CALLABLES:
            return SAFE_CALLABLES[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        if module == "torch" and name in DTYPE_NAMES:
            return getattr(torch, name)
        qualified = f"{module}.{name}"
        if not qualified.startswith(INERT_NAMESPACES):
            raise ForbiddenCode(qualified)
        if qualified not in self.inert_classes:
            self.inert_classes[qualified] = type(name, (Inert,), {"source": qualified})
        return self.inert_classes[qualified]

    def persistent_load(self, pid: Any) -> torch.Tensor:
        """('storage', dtype, key, location, numel) -> a flat tensor over that storage's bytes (read once)."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)
                and isinstance(pid[2], str) and isinstance(pid[4], int) and self.archive is not None):
            raise pickle.UnpicklingError(f"malformed storage record {pid!r:.80}")
        _, dtype, key, _, numel = pid
        if key not in self.storages:
            info = self.archive.getinfo(f"{self.prefix}data/{key}")  # KeyError: the entry is missing
            itemsize = torch.empty(0, dtype=dtype).element_size()
            if info.file_size != numel * itemsize:
                raise pickle.UnpicklingError(f"storage {key} holds {info.file_size} bytes, not {numel} x {itemsize}")
            data = bytearray(self.archive.read(info))  # zipfile checks the entry's CRC
            # torch.frombuffer refuses an empty buffer: YOLOv5 v7.0 saves Detect's unused grids with 0 elements.
            empty = torch.empty(0, dtype=torch.uint8)
            self.storages[key] = torch.frombuffer(data, dtype=torch.uint8) if data else empty
        return self.storages[key].view(dtype) if dtype != torch.uint8 else self.storages[key]
