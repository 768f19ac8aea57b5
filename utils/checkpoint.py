"""Checkpoints: plain data only, written atomically, read with ``weights_only=True``.

A checkpoint is a dict of tensors and builtins (DESIGN.md section 6):
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
them with ``weights_only=True``. They are read by :class:`InertUnpickler` (no pickled code ever runs)
and translated into the dict above (``foreign`` names where the file came from).
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Union

import torch

from utils.files import atomic_write_bytes, remove_stale_temps
from utils.head import HeadConfig

logger = logging.getLogger(__name__)

# What a stripped checkpoint keeps: enough to rebuild, run, fine-tune from and describe the model.
STRIPPED_KEYS = ("model", "model_yaml", "names", "hyp", "opt", "epoch", "best_fitness")

# The box head of YOLOv5/TPH-YOLOv5 files: 4 regressed offsets per anchor.
FOREIGN_HEAD = HeadConfig().to_dict()  # YOLOv5's regression head (CIoU)
# Modules whose classes a YOLOv5 pickle names for its model objects: they become inert records, never imported.
INERT_NAMESPACES = ("models.", "utils.", "torch.nn.", "numpy", "pathlib.", "argparse.", "__main__.")
# Element types a pickle may name as torch.<name> (looked up in this list only: no other attribute of torch is read).
DTYPE_NAMES = ("float16", "float32", "float64", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
               "half", "float", "double", "long", "int", "short")
# Terminal colour codes that torch puts in its messages.
ANSI_CODE = r"\x1b\[[0-9;]*m"
# Storage classes torch pickles for tensors, by the element type they hold.
STORAGE_DTYPES = {"HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
                  "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                  "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                  "BoolStorage": torch.bool, "UntypedStorage": torch.uint8}


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
    """Read a checkpoint safely; clear errors for a missing, unsafe or foreign file.

    Our own files load with ``weights_only=True``; a YOLOv5/TPH-YOLOv5 file (pickled model object) is
    read without running code and translated (:func:`from_yolov5`). ``weights_only_transfer`` also
    accepts a plain ``{'model': state_dict}`` (no ``model_yaml``): enough to transfer pretrained weights
    by name and shape into a model built from ``--cfg``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found (train one with train.py or see weights/README.md)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for corrupt/unsafe files; name the file
        reason = f"{type(err).__name__}: {re.sub(ANSI_CODE, '', str(err)).splitlines()[0] if str(err) else ''}"
        checkpoint = from_yolov5(read_inert_pickle(path, reason), path)
    required = ("model",) if weights_only_transfer else ("model", "model_yaml")
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in required):
        raise ValueError(f"{path}: not a checkpoint of this project (expected a dict with {' and '.join(required)})")
    return checkpoint


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
    model = raw.get("ema") or raw.get("model") if isinstance(raw, dict) else None
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


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Inert:
    """copyreg._reconstructor (protocol 0/1 objects), allowed for inert classes only."""
    if not (isinstance(cls, type) and issubclass(cls, Inert) and base is object and state is None):
        raise pickle.UnpicklingError(f"refusing copyreg._reconstructor({cls!r}, {base!r}, ...)")
    return cls.__new__(cls)


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *unused: Any) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v2 on our storages: a bounds-checked view, backward hooks dropped."""
    if not isinstance(storage, torch.Tensor) or not all(isinstance(v, int) for v in (offset, *size, *stride)):
        raise pickle.UnpicklingError("malformed tensor record")
    return storage.as_strided(tuple(size), tuple(stride), offset)  # raises when out of the storage's bounds


def _rebuild_parameter(data: Any, *unused: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("malformed parameter record")
    return data


SAFE_CALLABLES = {("collections", "OrderedDict"): collections.OrderedDict, ("builtins", "set"): set,
                  ("builtins", "frozenset"): frozenset, ("copyreg", "_reconstructor"): _safe_reconstructor,
                  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
                  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
                  ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
                  ("torch", "Size"): torch.Size}


class InertUnpickler(pickle.Unpickler):
    """Unpickles a torch zip checkpoint without running code.

    Allowed: the tensor/storage rebuilders and containers of :data:`SAFE_CALLABLES` (our own pure versions),
    torch dtypes and storage types. Classes of :data:`INERT_NAMESPACES` become :class:`Inert` subclasses.
    Every other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ``torch.storage._load_from_bytes``
    ...) is refused with ``pickle.UnpicklingError``.
    """

    def __init__(self, archive: zipfile.ZipFile, prefix: str, limit: int):
        self.archive, self.prefix, self.limit = archive, prefix, limit
        self.storages: dict[str, torch.Tensor] = {}
        self.inert_classes: dict[str, type] = {}
        super().__init__(archive.open(f"{prefix}data.pkl"))

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
            raise pickle.UnpicklingError(f"refusing to call {qualified}, which would run code")
        if qualified not in self.inert_classes:
            self.inert_classes[qualified] = type(name, (Inert,), {"source": qualified})
        return self.inert_classes[qualified]

    def persistent_load(self, pid: Any) -> torch.Tensor:
        """('storage', dtype, key, location, numel) -> a flat tensor over that storage's bytes (read once)."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)
                and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise pickle.UnpicklingError(f"malformed storage record {pid!r:.80}")
        _, dtype, key, _, numel = pid
        if key not in self.storages:
            info = self.archive.getinfo(f"{self.prefix}data/{key}")
            itemsize = torch.empty(0, dtype=dtype).element_size()
            if info.file_size > self.limit or info.file_size != numel * itemsize:
                raise pickle.UnpicklingError(f"storage {key} holds {info.file_size} bytes, not {numel} x {itemsize}")
            self.storages[key] = torch.frombuffer(bytearray(self.archive.read(info)), dtype=torch.uint8)
        return self.storages[key].view(dtype) if dtype != torch.uint8 else self.storages[key]


def read_inert_pickle(path: Path, torch_reason: str) -> Any:
    """The object tree of a torch zip file via :class:`InertUnpickler`; ValueError naming the file otherwise."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{path}: not a readable checkpoint of this project ({torch_reason})") from err
    with archive:
        pickles = [name for name in archive.namelist() if name.endswith("data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path}: not a readable checkpoint of this project ({torch_reason})")
        limit = path.stat().st_size  # no entry may unpack to more than the file holds (torch stores them as is)
        try:
            if archive.getinfo(pickles[0]).file_size > limit:
                raise pickle.UnpicklingError(f"{pickles[0]} unpacks to more than the file's size")
            return InertUnpickler(archive, pickles[0][: -len("data.pkl")], limit).load()
        except Exception as err:  # any malformed or hostile pickle: refuse it, naming the file
            raise ValueError(f"{path}: refused to load ({type(err).__name__}: {err}); only load checkpoints "
                             f"from sources you trust") from err


def inert_state_dict(module: Inert, path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict of a pickled nn.Module tree: parameters and persistent buffers, keyed as torch does."""
    state: dict[str, torch.Tensor] = {}
    skipped = module.attribute("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, value in (module.attribute(group) or {}).items():
            if isinstance(value, torch.Tensor) and name not in skipped:
                state[prefix + name] = value
            elif value is not None and name not in skipped:
                raise ValueError(f"{path}: {prefix}{name} is not a tensor")
    for name, child in (module.attribute("_modules") or {}).items():
        if isinstance(child, Inert):
            state.update(inert_state_dict(child, path, f"{prefix}{name}."))
    return state
