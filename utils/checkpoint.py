"""Checkpoints: plain data only, written atomically, read with ``weights_only=True``.

A checkpoint is a dict of tensors and builtins:
    model        state_dict (float32) of the trained model
    ema          state_dict of the EMA model or None (what val/detect use when present)
    model_yaml   dict that rebuilds the architecture exactly (nc, resolved anchors, head settings)
    names        list of class names
    hyp, opt     dicts of the run's hyperparameters and options
    epoch, best_fitness, optimizer, scaler, ema_updates, scheduler   (what --resume needs)
    rng          every random state the next epoch draws from (global, multi-scale, loader): exact resume
    save_dir     the run folder that wrote it: --resume continues there only if the file still lies in it
Nothing here unpickles code, so a checkpoint from anywhere is safe to open.

At the end of training both best.pt and last.pt are stripped like YOLOv5's ``strip_optimizer``: the
EMA weights become ``model`` in float16 and the resume state is dropped (about a seventh of the size);
loading casts back to float32 (models/yolo.model_from_checkpoint).

Ultralytics YOLOv5 (v5.0 to v7.0) and TPH-YOLOv5 files pickle their model object instead; torch refuses
them with ``weights_only=True``. They are read by :class:`InertUnpickler` (no pickled
code ever runs; numpy values such as an unstripped ``best_fitness`` are rebuilt from their bytes) and
translated into the dict above (``foreign`` names where the file came from).

Every file is checked before torch reads it. A refusal is one line naming the file and saying which kind:
"not a complete checkpoint: ..." (empty, truncated, not a zip, a failed CRC, sizes that disagree),
"contains code we do not run: <callable>", or "refused: ..." for a limit: the entries together may not
unpack to more bytes than the file holds (torch stores them uncompressed), no weight may claim more
elements than its storage holds (such views are recorded, never materialised), and a pickled module tree
is walked at most MAX_MODULE_DEPTH deep and MAX_MODULE_VISITS modules in all.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import logging
import pickle
import zipfile
from pathlib import Path
from typing import IO, Any, Optional, Union

import numpy as np
import torch

from utils.cbbl.calibration import CHECKPOINT_KEY as CALIBRATION_KEY
from utils.files import atomic_write_bytes, remove_stale_temps
from utils.head import HeadConfig

logger = logging.getLogger(__name__)

# What a stripped checkpoint keeps: enough to rebuild, run, fine-tune from and describe the model.
STRIPPED_KEYS = ("model", "model_yaml", "names", "hyp", "opt", "epoch", "best_fitness", CALIBRATION_KEY)

# The box head of YOLOv5/TPH-YOLOv5 files: 4 regressed offsets per anchor.
FOREIGN_HEAD = HeadConfig().to_dict()  # YOLOv5's regression head (CIoU)
# Bounds on walking a pickled module tree (YOLOv5/TPH trees: 7 levels, 300 to 600 modules in the fixtures).
MAX_MODULE_DEPTH = 64
MAX_MODULE_VISITS = 20_000
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

def save_checkpoint(checkpoint: dict[str, Any], *paths: Union[str, Path]) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a kill never leaves a broken file.

    Temporary files that a killed save of the same file left behind are removed first. The checkpoint is
    serialised in memory once and written in one go to each path in order, so a full disk raises
    OutputWriteError with the system's reason rather than torch's serializer error.
    """
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    for path in paths:
        remove_stale_temps(path)
        atomic_write_bytes(path, buffer.getbuffer())


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu",
                    weights_only_transfer: bool = False) -> dict[str, Any]:
    """Read a checkpoint safely; one clear line for a missing, damaged, unsafe or foreign file.

    Our own files load with ``weights_only=True``; a YOLOv5/TPH-YOLOv5 file (pickled model object) is
    read without running code and translated (:func:`from_yolov5`). ``weights_only_transfer`` also
    accepts a plain ``{'model': state_dict}`` (no ``model_yaml``): enough to transfer pretrained weights
    by name and shape into a model built from ``--cfg``.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, not a weights file (name the .pt file, e.g. {path / 'best.pt'})")
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found (train one with train.py or see weights/README.md)")
    checkpoint = read_checkpoint(path, map_location)
    required = ("model",) if weights_only_transfer else ("model", "model_yaml")
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in required):
        raise ValueError(f"{path}: not a checkpoint of this project (expected a dict with {' and '.join(required)})")
    return checkpoint


def read_checkpoint(path: Path, map_location: Union[str, torch.device] = "cpu") -> Any:
    """The object a torch file holds: plain data as is, a YOLOv5/TPH pickle translated; ValueError otherwise.

    The zip archive is checked first (:func:`verify_archive`), so torch never reads a damaged or bomb file
    and its own messages (which suggest ``weights_only=False``) never reach the user.
    """
    if not zipfile.is_zipfile(path):
        checkpoint = read_bare_pickle(path, map_location)
    else:
        verify_archive(path)
        try:
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        except Exception:  # anything but plain data (a YOLOv5 model object, or code): read it ourselves
            raw = read_inert_pickle(path)
            try:
                return from_yolov5(raw, path)
            except (KeyError, TypeError, AttributeError, RuntimeError, RecursionError) as err:
                raise ValueError(f"{path}: not a YOLOv5/TPH-YOLOv5 checkpoint we can read ({type(err).__name__}: "
                                 f"{err})") from err
    check_tensor_claims(checkpoint, path)
    return checkpoint


def refusal(path: Path, err: BaseException) -> ValueError:
    """One line saying why a file is refused: code we do not run, a limit, or damage."""
    if isinstance(err, ForbiddenCode):
        return ValueError(f"{path}: contains code we do not run: {err} (a checkpoint is read as data only)")
    if isinstance(err, OverLimit):
        return ValueError(f"{path}: refused: {err}")
    detail = str(err).splitlines()[0] if str(err) else ""
    return ValueError(f"{path}: not a complete checkpoint: {type(err).__name__}: {detail}"[:300])


def verify_archive(path: Path) -> None:
    """Refuse a zip whose entries unpack to more than the file holds, or whose CRC check fails.

    PyTorch stores every entry uncompressed, so all of them together can never unpack to more bytes than
    the file has: that is the total limit (a few deflated entries cannot inflate to gigabytes). Every
    entry's CRC is checked, so a flipped byte in a storage is refused instead of loading changed weights.
    """
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            inflated = sum(info.file_size for info in archive.infolist())
            if inflated > size:
                raise OverLimit(f"its entries unpack to {inflated:,} bytes, more than the file's {size:,} "
                                f"(PyTorch stores them uncompressed)")
            damaged = archive.testzip()
            if damaged:
                raise zipfile.BadZipFile(f"entry {damaged} fails its CRC check (changed or damaged after saving)")
    except Exception as err:
        raise refusal(path, err) from err


def read_bare_pickle(path: Path, map_location: Union[str, torch.device]) -> Any:
    """A file that is not a zip: torch's legacy format when it holds plain data, else a one-line refusal."""
    with open(path, "rb") as file:
        start = file.read(1)
    if not start:
        raise ValueError(f"{path}: not a complete checkpoint: the file is empty (0 bytes)")
    if start != pickle.PROTO:
        raise ValueError(f"{path}: not a complete checkpoint: no zip directory at its end (a truncated download "
                         f"or copy, or not a PyTorch file)")
    try:  # a bare pickle, or torch's format before 1.6
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # say which code it would run, or where it is damaged
        try:
            with open(path, "rb") as file:
                InertUnpickler(file).load()
        except Exception as err:
            raise refusal(path, err) from err
    raise ValueError(f"{path}: not a checkpoint we can read: a pickle outside a zip archive that holds more than "
                     f"plain data (PyTorch before 1.6 wrote these: re-save it with a current torch.save)")


def check_tensor_claims(obj: Any, path: Path) -> None:
    """Refuse a tensor that claims more elements than its storage holds (a zero-stride shape bomb)."""
    pending, seen = [obj], set()
    while pending:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor) and item.numel() * item.element_size() > item.untyped_storage().nbytes():
            raise refusal(path, OverLimit(f"a tensor of shape {tuple(item.shape)} claims {item.numel():,} "
                                          f"elements, more than its storage holds"))
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)


def is_stripped(checkpoint: dict[str, Any]) -> bool:
    """True for a finished run's checkpoint (no optimizer state): nothing to resume from it."""
    return checkpoint.get("optimizer") is None


def checkpoint_weights(checkpoint: dict[str, Any], use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The state dict a checkpoint is used with: its EMA weights when present (and ``use_ema``), else ``model``."""
    ema = checkpoint.get("ema") if use_ema else None
    return ema if ema else checkpoint["model"]


def strip_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint as training ships it: EMA (else model) weights in float16 as ``model``, no resume state."""
    state = checkpoint_weights(checkpoint)
    stripped = {key: checkpoint[key] for key in STRIPPED_KEYS if key in checkpoint}
    stripped["model"] = {key: value.half() if value.is_floating_point() else value for key, value in state.items()}
    return stripped


def strip_checkpoint_file(path: Union[str, Path]) -> float:
    """Strip a checkpoint in place (atomically); returns its new size in MB."""
    path = Path(path)
    save_checkpoint(strip_checkpoint(load_checkpoint(path)), path)
    size_mb = path.stat().st_size / 1e6
    logger.info("optimizer stripped from %s, %.1f MB", path, size_mb)
    return size_mb

def from_yolov5(raw: Any, path: Path) -> dict[str, Any]:
    """A YOLOv5/TPH-YOLOv5 checkpoint dict (inert model objects) -> our checkpoint dict.

    Takes ``ema`` when present, else ``model``; the graph is the file's own ``yaml`` with the stored
    anchors (pixels, from the Detect buffer and stride) and the regression head; weights float32.
    """
    models = [raw.get("ema"), raw.get("model")] if isinstance(raw, dict) else []
    model = next((model for model in models if isinstance(model, Inert)), None)  # the EMA when there is one
    if not isinstance(model, Inert) or not isinstance(model.attribute("yaml"), dict):
        raise ValueError(f"{path}: not a checkpoint of this project, nor a YOLOv5/TPH-YOLOv5 one (no pickled "
                         f"model with a 'yaml' graph); train one with train.py or see weights/README.md")
    state = {name: value.float() if value.is_floating_point() else value
             for name, value in inert_state_dict(model, path).items()}
    layers = (model.attribute("_modules") or {}).get("model")
    children = layers.attribute("_modules") if isinstance(layers, Inert) else None
    if not children:
        raise ValueError(f"{path}: its pickled model has no 'model' layer list; not a YOLOv5/TPH-YOLOv5 file")
    last = len(children) - 1
    detect = children[str(last)]
    stride = detect.attribute("stride") if isinstance(detect, Inert) else None
    anchors = state.get(f"model.{last}.anchors")
    if not isinstance(stride, torch.Tensor) or anchors is None or anchors.ndim != 3 or len(stride) != len(anchors):
        raise ValueError(f"{path}: its last layer has no anchors/stride of a YOLOv5 Detect head")
    stride = stride.float()
    state[f"model.{last}.stride"] = stride
    graph = dict(model.attribute("yaml"))
    graph.update(anchors=[level.flatten().tolist() for level in anchors * stride.view(-1, 1, 1)],
                 detect=dict(FOREIGN_HEAD))
    names = model.attribute("names")  # a {id: name} dict in v7.0, a list in TPH and v5/v6
    if names is None and isinstance(graph.get("nc"), int):
        names = [str(i) for i in range(graph["nc"])]
    if isinstance(names, dict) and all(isinstance(key, int) for key in names):
        names = [names[key] for key in sorted(names)]
    if not isinstance(names, (list, tuple)) or (isinstance(graph.get("nc"), int) and len(names) != graph["nc"]):
        raise ValueError(f"{path}: its class names {names!r:.60} do not fit its nc={graph.get('nc')!r}")
    logger.info("%s: a %s checkpoint, read without running its pickled code", path, model.source)
    return {"model": state, "ema": None, "model_yaml": graph, "names": [str(n) for n in names], "foreign": model.source,
            "epoch": raw.get("epoch", -1) if isinstance(raw.get("epoch"), int) else -1}


def read_inert_pickle(path: Path) -> Any:
    """The object tree of a verified torch zip file via :class:`InertUnpickler`; ValueError naming the file."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") and name.count("/") == 1]
            if len(pickles) != 1:
                raise zipfile.BadZipFile(f"{len(pickles)} data.pkl entries, expected 1")
            with archive.open(pickles[0]) as stream:
                return InertUnpickler(stream, archive, pickles[0][: -len("data.pkl")]).load()
    except Exception as err:  # any malformed or hostile pickle: refuse it, naming the file
        raise refusal(path, err) from err


def inert_state_dict(model: Inert, path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a pickled nn.Module tree: parameters and persistent buffers, keyed as torch does.

    Walked without recursion and bounded: a tree that holds itself, is deeper than MAX_MODULE_DEPTH or
    needs more than MAX_MODULE_VISITS visits (a small file of shared children can describe 2**60 paths)
    is refused in one line.
    """
    state: dict[str, torch.Tensor] = {}
    pending = [(model, "", ())]  # (module, key prefix, ids of its ancestors), visited in torch's order
    for _ in range(MAX_MODULE_VISITS + 1):
        if not pending:
            return state
        module, prefix, ancestors = pending.pop()
        if id(module) in ancestors:
            raise ValueError(f"{path}: refused: its module tree contains itself (at {prefix.rstrip('.')})")
        if len(ancestors) > MAX_MODULE_DEPTH:
            raise ValueError(f"{path}: refused: its module tree is deeper than {MAX_MODULE_DEPTH} levels")
        skipped = module.attribute("_non_persistent_buffers_set") or set()
        for group in ("_parameters", "_buffers"):
            for name, value in _dict_attribute(module, group).items():
                if isinstance(value, OverlappingView):
                    raise ValueError(f"{path}: refused: {prefix}{name} is {value}")
                if isinstance(value, torch.Tensor) and name not in skipped:
                    state[prefix + name] = value
                elif value is not None and name not in skipped:
                    raise ValueError(f"{path}: {prefix}{name} is not a tensor")
        children = [(name, child) for name, child in _dict_attribute(module, "_modules").items()
                    if isinstance(child, Inert)]
        pending.extend((child, f"{prefix}{name}.", (*ancestors, id(module))) for name, child in reversed(children))
    raise ValueError(f"{path}: refused: its module tree needs more than {MAX_MODULE_VISITS:,} visits (shared "
                     f"children; no YOLOv5/TPH model comes close)")


def _dict_attribute(module: Inert, name: str) -> dict:
    value = module.attribute(name)
    return value if isinstance(value, dict) else {}


# --- Reading a pickled YOLOv5/TPH-YOLOv5 file as data: no pickled callable ever runs ---
# A torch file is an uncompressed zip of ``<name>/data.pkl`` (the object tree) and one ``<name>/data/<key>``
# entry per storage. InertUnpickler resolves every global the pickle names itself: tensors and storages
# through our bounds-checked rebuilders; numpy scalars and arrays (an unstripped ``best_fitness``) from their
# bytes, plain numeric dtypes only; classes of INERT_NAMESPACES as Inert records, never imported; anything
# else is ForbiddenCode.


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
