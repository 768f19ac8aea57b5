"""Export a trained checkpoint to ONNX and TorchScript, written beside the weights as YOLOv5 writes them
(best.pt -> best.onnx), or into ``--project/--name`` when asked. A file of that name beside the weights is replaced
only when it is an earlier export of this project (it carries our metadata): anything else is the user's.

The exported graph returns YOLOv5's eval-mode layout as its first output ``output0`` (B, N, 5 + nc): ``cx, cy, w,
h`` pixels, objectness, class scores, so YOLOv5-style post-processors read it unchanged. A C-BBL model adds
``uncertainty`` (B, N, 1), the per-box localization uncertainty, and with ``--side-variance`` ``side_variance`` (B,
N, 4), each side's variance over the squared box size, which variance voting (``--cbbl-fusion``) reads (opt-in: ONNX
Runtime computes every output on every call, and this one adds about 11% to a C-BBL yolov5n forward at 640 and 1536
px: benchmarks/speed_vs_yolov5.py's onnxruntime-variance rows); a model scored by its quality branch has it
multiplied into the objectness of ``output0``. The expectation decode (softmax, then a fixed projection on the grid
values) is in the graph, so every runtime gets ordinary boxes. The model's facts travel as JSON metadata
(utils/infer/backend.py reads them). ONNX uses PyTorch's TorchScript-based exporter (``dynamo=False``).
``--include`` takes YOLOv5's format names; those this project does not export are refused by name.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn as nn

from models.yolo import model_from_checkpoint
from utils.checkpoint import load_checkpoint
from utils.files import REPO_ROOT, atomic_write_bytes, increment_path
from utils.infer.backend import METADATA_KEY, SIDE_VARIANCE_OUTPUT, UNCERTAINTY_OUTPUT, model_metadata
from utils.infer.options import exist_ok_option
from utils.options import option
from utils.torch_utils import max_stride, select_device

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")  # what this project exports
# YOLOv5's --include names (its export_formats()); the others are known but not exported here.
YOLOV5_FORMATS = ("torchscript", "onnx", "openvino", "engine", "coreml", "saved_model", "pb", "tflite", "edgetpu",
                  "tfjs", "paddle")
OUTPUT_NAME = "output0"  # YOLOv5's name of the detection output
# Largest allowed |onnxruntime - torch| difference, relative to max(1, |torch value|) (box pixels reach ~1e3).
ONNX_TOLERANCE = 1e-4
# Where --project/--name put the files when only one of them is given.
DEFAULT_PROJECT, DEFAULT_NAME = REPO_ROOT / "runs" / "export", "exp"


@dataclass(frozen=True)
class ExportOptions:
    """What one export run is asked to do (YOLOv5's export.py names; export.py's parser is generated from it)."""

    weights: str = option("", "a .pt checkpoint of this project")
    include: tuple[str, ...] = option(("torchscript", "onnx"), "formats to write (YOLOv5's names; this project "
                                                               "writes torchscript and onnx)")
    imgsz: tuple[int, ...] = option((640, 640), "example input h w (one value: square)", flags=("--img", "--img-size"))
    batch_size: int = option(1, "batch of the example input (fixed unless --dynamic)", flags=("--batch",))
    device: str = option("cpu", "cpu or a CUDA device, e.g. 0")
    half: bool = option(False, "float16 export (CUDA --device only, not with --dynamic)")
    dynamic: bool = option(False, "ONNX: dynamic batch, height and width")
    simplify: bool = option(False, "ONNX: simplify with onnxsim (pip install onnxsim)")
    opset: int = option(17, "ONNX opset version")
    check: bool = option(True, "compare ONNX Runtime with PyTorch on a random batch (--no-check skips it)")
    side_variance: bool = option(False, "C-BBL: add the side_variance output (B, N, 4) that --cbbl-fusion reads "
                                        "(about 11% more ONNX Runtime time per image)")
    project: str = option("", f"write into project/name (incremented) instead of beside the weights (default "
                              f"project with --name: {DEFAULT_PROJECT})")
    name: str = option("", f"write into project/name instead of beside the weights (default name with --project: "
                           f"{DEFAULT_NAME})")
    exist_ok: bool = exist_ok_option()

    def __post_init__(self) -> None:
        fix = object.__setattr__  # normalise CLI/list inputs once; the object stays frozen afterwards
        fix(self, "weights", str(self.weights))
        fix(self, "project", str(self.project))
        fix(self, "include", tuple(str(name).lower() for name in
                                   ([self.include] if isinstance(self.include, str) else self.include)))
        sizes = [int(s) for s in ([self.imgsz] if isinstance(self.imgsz, int) else self.imgsz)]
        fix(self, "imgsz", tuple(sizes * 2 if len(sizes) == 1 else sizes))
        self._validate()

    def _validate(self) -> None:
        unknown = [name for name in self.include if name not in YOLOV5_FORMATS]
        if unknown or not self.include:
            raise ValueError(f"--include {list(self.include)}: unknown or empty; formats are {YOLOV5_FORMATS}")
        unsupported = [name for name in self.include if name not in FORMATS]
        if unsupported:
            raise ValueError(f"--include {' '.join(unsupported)}: YOLOv5 exports this but this project does not; "
                             f"export {' or '.join(FORMATS)} and convert from ONNX with that format's own tools")
        if len(self.imgsz) != 2 or min(self.imgsz) <= 0 or self.batch_size < 1:
            raise ValueError(f"--imgsz {list(self.imgsz)} must be one or two positive sizes and --batch-size >= 1")
        if self.half and self.dynamic:
            raise ValueError("--half and --dynamic do not go together (as in YOLOv5); drop one of them")
        if not self.weights:
            raise ValueError("--weights: give the .pt checkpoint to export, e.g. --weights best.pt")
        if not self.weights.endswith(".pt"):
            raise ValueError(f"--weights {self.weights!r}: export takes a .pt checkpoint of this project")


class PredictionOnly(nn.Module):
    """Wraps a model so that its forward returns the decoded predictions alone (no raw level list):
    YOLOv5's (B, N, 5 + nc) tensor, and for a C-BBL head also the (B, N, 1) uncertainty and, when the head's
    ``side_variance`` is on, the (B, N, 4) side variances."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.width = model, 5 + int(model.nc)
        self.num_extra = int(model.detect.num_extra)
        self.with_variance = bool(self.num_extra and model.detect.side_variance)
        self.train(model.training)  # exporters restore the wrapper's mode afterwards: keep it the model's

    def forward(self, images: torch.Tensor) -> Union[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(B, 3, H, W) float [0, 1] -> (B, N, 5 + nc) [, (B, N, 1) [, (B, N, 4)]]."""
        pred = self.model(images)[0]
        if not self.num_extra:
            return pred
        extras = (pred[..., self.width + 1 :],) if self.with_variance else ()
        return pred[..., : self.width], pred[..., self.width : self.width + 1], *extras

    @property
    def output_names(self) -> list[str]:
        names = [OUTPUT_NAME, UNCERTAINTY_OUTPUT, SIDE_VARIANCE_OUTPUT]
        return names[: 1 + (self.num_extra > 0) + self.with_variance]


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict, opset: int = 17,
                dynamic: bool = False, simplify: bool = False) -> Path:
    """Write an ONNX file with input ``images`` and outputs ``output0`` [+ ``uncertainty``, ``side_variance``];
    dynamic batch/height/width if asked; simplified with onnxsim if asked."""
    import onnx

    wrapper = PredictionOnly(model)
    dynamic_axes = {"images": {0: "batch", 2: "height", 3: "width"},
                    **{name: {0: "batch", 1: "anchors"} for name in wrapper.output_names}}
    buffer = io.BytesIO()  # written in one checked, atomic step once complete
    torch.onnx.export(wrapper, (example,), buffer, dynamo=False, opset_version=opset,
                      input_names=["images"], output_names=wrapper.output_names,
                      dynamic_axes=dynamic_axes if dynamic else None, do_constant_folding=True)
    graph = onnx.load_model_from_string(buffer.getvalue())
    onnx.checker.check_model(graph)
    if simplify:
        graph = _simplified(graph, path)
    entry = graph.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    return atomic_write_bytes(path, graph.SerializeToString())


def _onnxsim() -> Any:
    """The onnxsim module; ValueError with the install command when it is missing (an optional dependency)."""
    try:
        import onnxsim
    except ImportError as err:
        raise ValueError("--simplify needs onnx-simplifier, an optional dependency: pip install onnxsim "
                         "(or export without --simplify)") from err
    return onnxsim


def _simplified(graph: Any, path: Path) -> Any:
    simplified, ok = _onnxsim().simplify(graph)
    if not ok:
        raise ValueError(f"{path}: onnxsim could not validate the simplified graph; export without --simplify")
    logger.info("simplified %s with onnxsim: %d -> %d nodes", path.name, len(graph.graph.node),
                len(simplified.graph.node))
    return simplified


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict) -> Path:
    """Trace the model and save it with the metadata as an extra file."""
    traced = torch.jit.trace(PredictionOnly(model), example, strict=False, check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={f"{METADATA_KEY}.json": json.dumps(metadata)})
    return atomic_write_bytes(path, buffer.getbuffer())


def onnx_max_error(path: Path, model: nn.Module, images: torch.Tensor) -> float:
    """max |onnxruntime - torch| / max(1, |torch|) over every output for ``images`` (B, 3, H, W)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = PredictionOnly(model)(images)
    expected = [t.detach().cpu().numpy() for t in (expected if isinstance(expected, tuple) else (expected,))]
    got = session.run(None, {session.get_inputs()[0].name: images.cpu().numpy()})
    if [g.shape for g in got] != [e.shape for e in expected]:
        raise ValueError(f"{path}: ONNX output shapes {[g.shape for g in got]} differ from PyTorch's "
                         f"{[e.shape for e in expected]}")
    return max(float((np.abs(g - e) / np.maximum(1.0, np.abs(e))).max()) for g, e in zip(got, expected))


def export(opts: ExportOptions) -> list[Path]:
    """Export ``opts.weights`` (EMA weights when present) to each format in ``opts.include``.

    Returns the paths written, ONNX first, e.g. [weights/best.onnx, weights/best.torchscript]. ValueError
    for a bad option (the message names the flag), FileNotFoundError for missing weights.
    """
    if opts.simplify and "onnx" in opts.include:
        _onnxsim()  # fail before any work when the optional dependency is missing
    device = select_device(opts.device)
    if opts.half and device.type != "cuda":
        raise ValueError(f"--half exports float16 and needs a CUDA --device (e.g. --device 0), got {device}")
    weights = Path(opts.weights)
    if not (opts.project or opts.name):
        for file_format in opts.include:
            check_replaceable(weights.with_suffix(f".{file_format}"))
    checkpoint = load_checkpoint(weights)
    model = model_from_checkpoint(checkpoint, use_ema=True, source=weights).fuse().eval().to(device)
    model.detect.side_variance = opts.side_variance and bool(model.detect.num_extra)
    stride = max_stride(model.stride)
    if any(size % stride for size in opts.imgsz):
        raise ValueError(f"--imgsz {list(opts.imgsz)} must be multiples of the model stride {stride}")
    example = torch.rand(opts.batch_size, 3, *opts.imgsz, generator=torch.Generator().manual_seed(0)).to(device)
    if opts.half:
        model, example = model.half(), example.half()
    metadata = model_metadata(model, opts.imgsz, opts.batch_size, opts.dynamic, checkpoint)
    base = output_folder(opts) / weights.name
    written = []
    if "onnx" in opts.include:
        written.append(export_onnx(model, example, base.with_suffix(".onnx"), metadata, opts.opset, opts.dynamic,
                                   opts.simplify))
        if opts.check and not opts.half:
            _check_onnx(written[-1], model.cpu(), example.cpu(), opts.dynamic, stride)
            model = model.to(device)
        elif opts.check:
            logger.info("float16 export: ONNX Runtime comparison skipped (it runs float32 on CPU); check the file "
                        "with val.py --weights %s", written[-1])
    if "torchscript" in opts.include:
        written.append(export_torchscript(model, example, base.with_suffix(".torchscript"), metadata))
    for path in written:
        logger.info("exported %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return written


def output_folder(opts: ExportOptions) -> Path:
    """Beside the weights (YOLOv5's place), or project/name (incremented unless --exist-ok) when either is given."""
    if not (opts.project or opts.name):
        return Path(opts.weights).parent
    return increment_path(Path(opts.project or DEFAULT_PROJECT) / (opts.name or DEFAULT_NAME), opts.exist_ok,
                          mkdir=True)


def is_our_export(path: Path) -> bool:
    """True for an ONNX or TorchScript file that this project's export wrote (it carries our metadata). Only the
    file's structure is read: nothing in it runs."""
    import onnx

    try:
        if path.suffix == ".onnx":
            props = onnx.load_model(str(path), load_external_data=False).metadata_props
            return any(entry.key == METADATA_KEY for entry in props)
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(f"/extra/{METADATA_KEY}.json") for name in archive.namelist())
    except Exception:  # whatever fails to parse (protobuf, zip or OS errors) is not an export of ours
        return False


def check_replaceable(path: Path) -> None:
    """Refuse to replace ``path`` beside the weights unless an earlier export of ours wrote it."""
    if (path.exists() or path.is_symlink()) and not (path.is_file() and is_our_export(path)):
        raise ValueError(f"{path} already exists and was not written by this project's export; remove it, or pass "
                         "--project/--name to export into a run folder")


def _check_onnx(path: Path, model: nn.Module, example: torch.Tensor, dynamic: bool, stride: int) -> None:
    """ONNX Runtime vs PyTorch on the export shape (and on another shape when dynamic)."""
    batches = [torch.rand_like(example)]
    if dynamic:
        height, width = example.shape[2:]
        batches.append(torch.rand(example.shape[0] + 1, 3, height + stride, width, generator=torch.Generator()
                                  .manual_seed(1)))
    for images in batches:
        error = onnx_max_error(path, model, images)
        if error > ONNX_TOLERANCE:
            raise ValueError(f"{path}: ONNX Runtime differs from PyTorch by {error:.2e} (> {ONNX_TOLERANCE}) "
                             f"on input {tuple(images.shape)}")
        logger.info("ONNX Runtime matches PyTorch on %s: max relative error %.2e", tuple(images.shape), error)
