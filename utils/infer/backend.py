"""One inference interface over trained weights: PyTorch checkpoints (one, or several as an ensemble),
ONNX files (ONNX Runtime) and TorchScript files.

Every backend takes float images (B, 3, H, W) in [0, 1] and returns the eval-mode decoded head
output (B, N, 5 + nc + num_extra) described in docs/ARCHITECTURE.md, so detect/val never need
to know which file they were given. Exported files give YOLOv5's (B, N, 5 + nc) first and a C-BBL
model's uncertainty and side variances as further outputs (utils/infer/export.py); the backend joins them
again.
Exported files carry the model's facts (names, stride, box mode) as JSON metadata written by
:func:`model_metadata`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn as nn

from models.detect import SIDE_VARIANCE_COLUMNS
from models.yolo import model_from_checkpoint
from utils.cbbl.calibration import CHECKPOINT_KEY as CALIBRATION_KEY
from utils.cbbl.calibration import UncertaintyCalibration
from utils.checkpoint import load_checkpoint
from utils.data.tiles import TileSettings
from utils.infer.options import votes
from utils.torch_utils import TRAIN_GRID_FLOOR, autocast, autocast_dtype, max_stride

logger = logging.getLogger(__name__)

WeightsArg = Union[str, Path, Sequence[Union[str, Path]]]
# Key of the JSON metadata in ONNX metadata_props and in TorchScript extra files.
METADATA_KEY = "cbbl_tph"
SUFFIXES = (".pt", ".onnx", ".torchscript")
UNCERTAINTY_OUTPUT = "uncertainty"  # name of an exported C-BBL model's second output (B, N, 1)
SIDE_VARIANCE_OUTPUT = "side_variance"  # and of its third (B, N, 4), for --cbbl-fusion (export --side-variance)


def model_metadata(model: nn.Module, imgsz: Sequence[int], batch_size: int, dynamic: bool,
                   checkpoint: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """What a backend needs to know about an exported model: classes, stride, box mode, input shape, whether it
    outputs side variances (a C-BBL head with ``side_variance`` on), and from its ``checkpoint`` the tiles it was
    trained on and its uncertainty calibration (so an export slices and reads its uncertainty as its checkpoint
    does)."""
    tile = TileSettings.of_checkpoint(checkpoint or {})
    detect = model.detect
    return {"names": list(model.names), "nc": int(model.nc), "stride": max_stride(model.stride),
            "box_mode": str(detect.box_mode), "num_extra": int(detect.num_extra),
            "side_variance": bool(detect.num_extra and detect.side_variance),  # export --side-variance
            "imgsz": [int(s) for s in imgsz], "batch_size": int(batch_size), "dynamic": bool(dynamic),
            "tile": None if tile is None else tile.to_dict(), "calibration": (checkpoint or {}).get(CALIBRATION_KEY)}


def _parse_metadata(text: str, path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: unreadable '{METADATA_KEY}' metadata ({err}); re-export it with export.py") from err
    missing = {"names", "nc", "stride", "box_mode", "num_extra"} - set(meta)
    if missing:
        raise ValueError(f"{path}: metadata lacks {sorted(missing)}; re-export it with export.py")
    return meta


class DetectBackend(nn.Module):
    """Weights file(s) -> a callable detector with ``nc``, ``names``, ``stride``, ``num_extra``, ``box_mode``.

    Args:
        weights: a ``.pt`` checkpoint (EMA weights when present), a list of them (an ensemble: their
            predictions are concatenated along N so one NMS merges them), an ``.onnx`` or a ``.torchscript`` file.
        device: torch device for inputs and outputs (ONNX Runtime uses its CUDA provider only on CUDA).
        fuse: fuse Conv+BN where the model offers ``fuse()``.
        half: YOLOv5's --half: fp16 weights on CUDA (.pt/.torchscript); on a CPU with native bfloat16 (AMX or
            AVX512-BF16), bf16 autocast of a .pt model's backbone and neck, the head and decode float32
            (models/detect.py). Ignored with a warning elsewhere.

    PyTorch models run channels-last on CPU: measured 5-20% faster there (docs/benchmarks.md), same outputs.
    """

    def __init__(self, weights: WeightsArg, device: Union[str, torch.device] = "cpu", fuse: bool = True,
                 half: bool = False):
        super().__init__()
        paths = [Path(w) for w in ([weights] if isinstance(weights, (str, Path)) else weights)]
        if not paths:
            raise ValueError("no weights given")
        for path in paths:
            if path.suffix not in SUFFIXES:
                raise ValueError(f"{path}: unsupported weights format {path.suffix!r}; expected one of {SUFFIXES}")
        if len(paths) > 1 and any(p.suffix != ".pt" for p in paths):
            raise ValueError(f"an ensemble takes .pt checkpoints only, got {[str(p) for p in paths]}")
        self.device = torch.device(device)
        self.weights_name = ", ".join(str(p) for p in paths)  # named in errors
        self.fp16 = bool(half) and self.device.type == "cuda" and paths[0].suffix != ".onnx"
        self.bf16 = (bool(half) and self.device.type == "cpu" and paths[0].suffix == ".pt"
                     and autocast_dtype(self.device) == torch.bfloat16)
        if half and not (self.fp16 or self.bf16):
            logger.warning("--half needs CUDA and a .pt/.torchscript model, or a CPU with native bfloat16 "
                           "(amx_bf16/avx512_bf16) and a .pt model; running in float32")
        self.is_onnx = paths[0].suffix == ".onnx"
        self.is_torchscript = paths[0].suffix == ".torchscript"
        self.fixed_imgsz: tuple[int, int] | None = None  # (h, w) an exported model was frozen to
        self.fixed_batch: int | None = None
        self.channels_last = False  # set for PyTorch checkpoints on CPU
        self.trained_tile: Optional[TileSettings] = None  # the --tile windows the weights were trained on
        self.calibration: Optional[UncertaintyCalibration] = None  # C-BBL entropy -> expected IoU, when stored
        self.head_extra = 0  # the head's columns after the class scores (C-BBL: the uncertainty)
        self.has_side_variance = False  # the model can output per-side variances (decode_side_variance)
        self.side_variance_on = False
        if self.is_onnx:
            self._load_onnx(paths[0])
        elif self.is_torchscript:
            self._load_torchscript(paths[0])
        else:
            self._load_checkpoints(paths, fuse)

    def _load_checkpoints(self, paths: list[Path], fuse: bool) -> None:
        models, tiles, calibrations = [], set(), []
        for path in paths:
            checkpoint = load_checkpoint(path, map_location="cpu")
            tiles.add(TileSettings.of_checkpoint(checkpoint))
            calibrations.append(UncertaintyCalibration.of_checkpoint(checkpoint))
            model = model_from_checkpoint(checkpoint, use_ema=True, source=path)
            check_finite_weights(model, path)
            if fuse and hasattr(model, "fuse"):
                model = model.fuse()
            if self.bf16:
                bfloat16_weights_before_the_head(model)
            models.append(model.to(self.device).eval())
        first = models[0]
        for path, model in zip(paths[1:], models[1:]):
            if model.nc != first.nc or list(model.names) != list(first.names):
                raise ValueError(f"ensemble members disagree on classes: {paths[0]} has {first.nc} "
                                 f"{list(first.names)}, {path} has {model.nc} {list(model.names)}")
        modes = {m.detect.box_mode for m in models}
        self.box_mode = modes.pop() if len(modes) == 1 else "mixed"
        extras = {int(m.detect.num_extra) for m in models}
        if len(extras) > 1:
            logger.warning("ensemble mixes C-BBL and regression heads: the uncertainty column is dropped")
        self.head_extra = min(extras)
        self.has_side_variance = self.box_mode == "cbbl"
        self.trained_tile = tiles.pop() if len(tiles) == 1 else None  # an ensemble slices only if all agree
        self.calibration = calibrations[0] if len(calibrations) == 1 else None  # an ensemble's entropy is mixed
        self.nc, self.names = int(first.nc), list(first.names)
        self.stride = max(max_stride(m.stride, TRAIN_GRID_FLOOR) for m in models)  # as YOLOv5 DetectMultiBackend
        self.channels_last = self.device.type == "cpu"
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        self.models = nn.ModuleList((m.half() if self.fp16 else m).to(memory_format=layout) for m in models)

    def _load_onnx(self, path: Path) -> None:
        import onnxruntime

        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} not found (export one with export.py --include onnx)")
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        session_options = onnxruntime.SessionOptions()
        session_options.intra_op_num_threads = torch.get_num_threads()  # one thread setting for both runtimes
        try:
            self.session = onnxruntime.InferenceSession(str(path), session_options, providers=providers)
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types; name the file
            raise ValueError(f"{path}: not a loadable ONNX model ({type(err).__name__}: {err})") from err
        props = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise ValueError(f"{path}: no '{METADATA_KEY}' metadata; export it with this project's export.py")
        self._apply_metadata(_parse_metadata(props[METADATA_KEY], path))
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_dtype = np.float16 if model_input.type == "tensor(float16)" else np.float32  # export --half

    def _load_torchscript(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"TorchScript model {path} not found (export one with export.py)")
        logger.warning("%s: a TorchScript file is code, and loading it runs that code; load only files you made "
                       "or trust (.pt checkpoints never run code)", path)
        extra_files = {f"{METADATA_KEY}.json": ""}
        try:
            module = torch.jit.load(str(path), map_location=self.device, _extra_files=extra_files)
        except RuntimeError as err:
            raise ValueError(f"{path}: not a loadable TorchScript model ({err})") from err
        self._apply_metadata(_parse_metadata(extra_files[f"{METADATA_KEY}.json"] or "{}", path))
        self.script_module = module.half() if self.fp16 else module.float()

    def _apply_metadata(self, meta: dict[str, Any]) -> None:
        self.nc, self.names = int(meta["nc"]), list(meta["names"])
        self.stride, self.box_mode, self.head_extra = int(meta["stride"]), str(meta["box_mode"]), int(meta["num_extra"])
        if not meta.get("dynamic", True):
            self.fixed_imgsz = (int(meta["imgsz"][0]), int(meta["imgsz"][1]))
            self.fixed_batch = int(meta["batch_size"])
        self.has_side_variance = bool(meta.get("side_variance", False))  # export.py --side-variance
        self.trained_tile = TileSettings.from_dict(meta.get("tile"))
        self.calibration = UncertaintyCalibration.from_dict(meta.get("calibration"))

    def decode_only_above(self, conf_thres: float) -> None:
        """Sparse C-BBL decode for PyTorch models: box distributions only where NMS at ``conf_thres`` can keep a
        box (models.detect.Detect.sparse_decode_level; the same kept boxes up to float rounding). Exported graphs stay
        dense."""
        if self.is_onnx or self.is_torchscript:
            return
        for model in self.models:
            model.detect.decode_conf = float(conf_thres)

    def decode_side_variance(self, requested: Optional[bool]) -> bool:
        """Turn the per-side variance columns for --cbbl-fusion on or off (models.detect.Detect.side_variance;
        appended after the uncertainty; ``requested`` None: on where possible, utils.infer.options.votes). Returns
        whether the predictions carry them: only C-BBL models (checkpoints, and exports that have the
        ``side_variance`` output) have distributions to read; other models keep today's output and NMS stays plain
        (said once when voting was asked for, or when a C-BBL export cannot vote)."""
        able = self.has_side_variance
        if not able and (requested or (requested is None and self.box_mode == "cbbl")):
            logger.warning("variance voting (--cbbl-fusion): %s has no C-BBL box distributions at inference "
                           "(regression head, mixed ensemble or an export without them: export.py --side-variance); "
                           "plain NMS", self.weights_name)
        self.side_variance_on = votes(requested, able)
        if able and not (self.is_onnx or self.is_torchscript):
            for model in self.models:
                model.detect.side_variance = self.side_variance_on
        return self.side_variance_on

    @property
    def num_extra(self) -> int:
        """Columns after the class scores: the head's (C-BBL: uncertainty), then the side variances when on."""
        return self.head_extra + (SIDE_VARIANCE_COLUMNS if self.side_variance_on else 0)

    @torch.no_grad()
    def forward_each(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Per-model predictions for (B, 3, H, W) float images in [0, 1] -> list of (B, N_m, 5 + nc + E).

        Raises ValueError when a model outputs NaN/inf: scoring or drawing such values would only give an
        unexplained zero mAP or no boxes.
        """
        preds = self._predict_each(images)
        if not all(torch.isfinite(pred.sum()) for pred in preds):  # one pass: any NaN/inf makes the sum non-finite
            raise ValueError(f"{self.weights_name}: the model's outputs hold NaN/inf values for these inputs "
                             "(overflow in --half, or damaged weights); this model cannot be used as it is")
        return preds

    def _predict_each(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if self.fixed_imgsz is not None and tuple(images.shape[2:]) != self.fixed_imgsz:
            raise ValueError(f"this exported model takes {self.fixed_imgsz} (h, w) inputs, got "
                             f"{tuple(images.shape[2:])}; export with --dynamic or use --imgsz {self.fixed_imgsz[0]}")
        images = images.to(self.device)
        width = 5 + self.nc + self.num_extra  # an export's side variances are dropped unless asked for
        if self.is_onnx:
            return [self._run_onnx(images)[..., :width]]
        images = images.half() if self.fp16 else images.float()
        if self.is_torchscript:
            return [_joined(self.script_module(images))[..., :width].float()]
        if self.bf16:  # autocast would cast in the first convolution; before the layout copy it halves its bytes
            images = images.to(torch.bfloat16)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.bf16):
            return [_pred_of(model(images))[..., :width].float() for model in self.models]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> (B, N, 5 + nc + num_extra) ``cx, cy, w, h`` pixels, obj, classes, extra."""
        preds = self.forward_each(images)
        return preds[0] if len(preds) == 1 else torch.cat(preds, 1)

    def _run_onnx(self, images: torch.Tensor) -> torch.Tensor:
        """ONNX Runtime on numpy; a fixed-batch model gets the batch in chunks, the last one zero-padded."""
        array = images.float().cpu().numpy().astype(self.input_dtype)
        chunk = self.fixed_batch or len(array)
        outputs = []
        for start in range(0, len(array), chunk):
            part = array[start : start + chunk]
            padded = np.concatenate([part, np.zeros((chunk - len(part), *part.shape[1:]), part.dtype)])
            outputs.append(np.concatenate(self.session.run(None, {self.input_name: padded}), -1)[: len(part)])
        return torch.from_numpy(np.concatenate(outputs).astype(np.float32)).to(self.device)

    def warmup(self, imgsz: Sequence[int] = (640, 640), batch_size: int = 1) -> None:
        """One forward pass on zeros so that later timings exclude lazy initialisation."""
        shape = self.fixed_imgsz or tuple(imgsz)
        self.forward(torch.zeros(self.fixed_batch or batch_size, 3, *shape, device=self.device))


def _joined(output: Union[torch.Tensor, tuple, list]) -> torch.Tensor:
    """An exported model's outputs (predictions [, uncertainty, side variances]) -> one (B, N, width) tensor."""
    return torch.cat(list(output), -1) if isinstance(output, (tuple, list)) else output


def bfloat16_weights_before_the_head(model: nn.Module) -> None:
    """Store the convolution and linear weights of every layer before the Detect head in bfloat16, once, for
    inference under CPU bf16 autocast: autocast would otherwise cast each of them from float32 on every call
    (measured: a tenth of yolov5n's bf16 time at 640 px), and casts the same way, so the outputs are unchanged.
    The head, its decode and every normalisation keep float32."""
    head = set(map(id, model.detect.modules()))
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and id(module) not in head:
            module.to(torch.bfloat16)


def check_finite_weights(model: nn.Module, path: Path) -> None:
    """Refuse a checkpoint whose parameters or buffers hold NaN/inf (a diverged run): it can only output NaN."""
    bad = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()]
           if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise ValueError(f"{path}: {len(bad)} weight tensor(s) hold NaN/inf values (e.g. {bad[0]}); the training "
                         "run that wrote it diverged; use an earlier checkpoint")


def _pred_of(output: Union[torch.Tensor, tuple, list]) -> torch.Tensor:
    """Eval-mode models return (pred, raw); exported wrappers return pred alone."""
    return output[0] if isinstance(output, (tuple, list)) else output
