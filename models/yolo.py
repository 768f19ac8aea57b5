"""The YOLO model: a YAML-built graph ending in a Detect head, plus its command line table printer.

    python models/yolo.py --cfg models/yolov5s.yaml --img 640 --box-loss cbbl

prints the layer table, parameters and GFLOPs, and exits non-zero with a message naming the bad row
of a broken YAML. See docs/ARCHITECTURE.md "The model contract".
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn
import yaml

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.detect import Detect, DetectOutput  # noqa: E402
from models.fuse import fuse_model  # noqa: E402
from models.info import model_info  # noqa: E402
from models.parse import MODULES, parse_model, row_lines, run_layers  # noqa: E402
from models.verify import check_graph  # noqa: E402
from utils.anchors import check_anchor_order, default_anchors  # noqa: E402
from utils.checkpoint import checkpoint_weights  # noqa: E402
from utils.files import resolve_path  # noqa: E402
from utils.head import HeadConfig, HeadFlags, head_overrides  # noqa: E402
from utils.log import setup_logging  # noqa: E402
from utils.options import build_parser, cli_main, option  # noqa: E402

logger = logging.getLogger(__name__)

# Square input of the dry run that measures the level strides (a multiple of every usual stride).
STRIDE_PROBE_SIZE = 64
# Detect buffers that model.yaml defines (never transferred from other weights).
YAML_BUFFERS = (".anchors", ".stride")
# YOLOv5's BatchNorm settings, which its training schedule is tuned for.
BN_EPS, BN_MOMENTUM = 1e-3, 0.03
# Where bare model config names (yolov5s.yaml) are looked up, relative to the repository root.
MODEL_CONFIG_DIR = "models"


def resolve_model_config(cfg: Union[str, Path], flag: str = "model config") -> Path:
    """A model YAML found as train.py, models/yolo.py, hubconf and :class:`Model` all find it: as given, else under
    the repository root, else in models/ (``yolov5s.yaml``). FileNotFoundError names ``flag`` and the places."""
    return resolve_path(cfg, flag, MODEL_CONFIG_DIR)


def load_model_yaml(cfg: Union[str, Path, dict]) -> dict:
    """A model dict from a YAML path (see :func:`resolve_model_config`) or dict (copied); ValueError/
    FileNotFoundError naming the file."""
    if isinstance(cfg, dict):
        return copy.deepcopy(cfg)
    path = resolve_model_config(cfg)
    text = path.read_text(encoding="utf-8")
    try:
        model_dict = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(model_dict, dict):
        raise ValueError(f"{path}: expected a mapping with backbone/head rows, got {type(model_dict).__name__}")
    model_dict["_source"], model_dict["_lines"] = str(path), row_lines(text)
    return model_dict


class Model(nn.Module):
    """A detector built from a YAML path or dict.

    Args:
        cfg: YAML path or dict (``backbone``/``head`` rows, ``nc``, ``anchors``, optional ``detect`` settings).
        ch: input channels.
        nc: number of classes, overriding the YAML.
        anchors: anchors per level (int, "from the data") or explicit per-level pixel lists, overriding the YAML.
        head: the box head (utils.head.HeadConfig, built once per run) replacing the YAML's ``detect:`` entry;
            a dict overrides single settings of that entry instead (HeadConfig's defaults where it has none).

    ``model.yaml`` rebuilds the same model: resolved nc, explicit pixel anchors, head settings.
    ``model.anchors_from_data`` is True when the config asked for k-means anchors (utils.anchors.check_anchors).
    """

    def __init__(self, cfg: Union[str, Path, dict], ch: int = 3, nc: Optional[int] = None,
                 anchors: Union[int, list, None] = None, head: Union[HeadConfig, dict, None] = None):
        super().__init__()
        model_dict = load_model_yaml(cfg)
        source = model_dict.pop("_source", "model config")
        lines = model_dict.pop("_lines", [])
        if nc is not None:
            model_dict["nc"] = int(nc)
        if anchors is not None:
            model_dict["anchors"] = anchors
        if not isinstance(model_dict.get("nc"), int) or model_dict["nc"] < 1:
            raise ValueError(f"{source}: 'nc' must be an int >= 1, got {model_dict.get('nc')!r}")
        if not isinstance(head, HeadConfig):
            head = HeadConfig.from_dict(model_dict.get("detect"), **(head or {}))
        model_dict["detect"] = head.to_dict()
        self.anchors_from_data, build_dict = self._placeholder_anchors(model_dict, source)
        self.model, self.routes, self.save, self.layer_table = parse_model(
            {**build_dict, "_source": source, "_lines": lines}, ch)
        self._init_weights()
        self._init_detect(ch, source)
        model_dict["anchors"] = [level.flatten().tolist()
                                 for level in self.detect.anchors * self.detect.stride.view(-1, 1, 1)]
        self.yaml = model_dict
        self.nc = model_dict["nc"]
        self.names = [str(name) for name in model_dict.get("names") or range(self.nc)]

    @staticmethod
    def _placeholder_anchors(model_dict: dict, source: str) -> tuple[bool, dict]:
        """For ``anchors: N`` give Detect N zero anchors per level (filled once the strides are known)."""
        anchors = model_dict.get("anchors")
        if isinstance(anchors, int):
            if anchors < 1:
                raise ValueError(f"{source}: 'anchors: N' needs N >= 1, got {anchors}")
            detect_row = (model_dict.get("head") or [[None]])[-1]
            head_name = detect_row[2] if len(detect_row) > 2 and isinstance(detect_row[2], str) else None
            extra = getattr(MODULES.get(head_name), "extra_inputs", 0)
            levels = (len(detect_row[0]) if isinstance(detect_row[0], list) else 1) - extra
            return True, {**model_dict, "anchors": [[0.0] * (2 * anchors)] * levels}
        if not isinstance(anchors, list) or not anchors or not all(isinstance(a, list) for a in anchors):
            raise ValueError(f"{source}: 'anchors' must be an int or per-level lists [w0, h0, w1, h1, ...], "
                             f"got {anchors!r}")
        return False, model_dict

    @property
    def detect(self) -> Detect:
        return self.model[-1]

    @property
    def stride(self) -> torch.Tensor:
        return self.detect.stride

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eps, module.momentum = BN_EPS, BN_MOMENTUM

    def _init_detect(self, ch: int, source: str) -> None:
        """Measure strides with a dry run, fill/check anchors, convert them to grid units, set bias priors."""
        detect = self.detect
        was_training = self.training
        self.eval()
        with torch.no_grad():
            _, raw = self.forward(torch.zeros(1, ch, STRIDE_PROBE_SIZE, STRIDE_PROBE_SIZE))
        self.train(was_training)
        stride = torch.tensor([STRIDE_PROBE_SIZE / level.shape[-2] for level in raw])  # (nl,)
        if self.anchors_from_data:
            detect.anchors.copy_(default_anchors(stride, detect.na))
        check_anchor_order(detect.anchors, stride, source)
        detect.set_stride(stride)
        detect.initialize_biases()

    def forward(self, x: torch.Tensor) -> DetectOutput:
        """Images (B, ch, H, W) float in [0, 1] -> the head's DetectOutput (pred None in training, raw)."""
        return run_layers(self.model, self.routes, self.save, x)

    def set_head(self, head: HeadConfig) -> None:
        """New head settings with the same box loss and K (a size-dependent beta, fitted grid points): the
        Detect grids and ``model.yaml['detect']`` change together, so checkpoints rebuild the same head."""
        self.detect.set_head(head)
        self.yaml["detect"] = head.to_dict()

    def fuse(self) -> Model:
        """Fold every BatchNorm into its convolution (inference only); returns self."""
        fuse_model(self)
        return self

    def info(self, imgsz: int = 640) -> dict:
        """Parameters, gradients and GFLOPs at ``imgsz`` (see models/info.py)."""
        return model_info(self, imgsz)


def layers_on_meta(cfg: Union[str, Path, dict], nc: int, head: HeadConfig) -> nn.Sequential:
    """The layers ``Model(cfg, nc=nc, head=head)`` builds, on the meta device (shapes, no memory): sizes a model
    before it is allocated, so an absurd ``width_multiple`` is refused instead of exhausting memory."""
    model_dict = load_model_yaml(cfg)
    source = model_dict.pop("_source", "model config")
    model_dict.pop("_lines", None)
    model_dict.update(nc=int(nc), detect=head.to_dict())
    _, build_dict = Model._placeholder_anchors(model_dict, source)
    with torch.device("meta"):
        layers, *_ = parse_model({**build_dict, "_source": source})
    return layers


def transfer_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> tuple[int, int, list[str]]:
    """Load the entries of ``state_dict`` whose name and shape match ``model``'s; returns (loaded, total, the
    names of the model's entries left at their init).

    For pretrained weights from a model with another nc, head mode or depth: the rest keeps its init.
    Detect's anchors and strides are never taken: they belong to ``model.yaml``, which must keep describing
    the model (k-means may replace the anchors afterwards).
    """
    own = model.state_dict()
    matching = {name: value for name, value in state_dict.items()
                if name in own and own[name].shape == value.shape and not name.endswith(YAML_BUFFERS)}
    model.load_state_dict(matching, strict=False)
    return len(matching), len(own), [name for name in own if name not in matching]


def model_from_checkpoint(checkpoint: dict, use_ema: bool = True, source: Union[str, Path] = "checkpoint") -> Model:
    """Rebuild the model of a checkpoint (EMA weights when present and ``use_ema``), in eval mode, float32.

    The graph is checked against the weights first (models/verify.py); errors name ``source`` (the file).
    """
    state = checkpoint_weights(checkpoint, use_ema)
    check_graph(checkpoint["model_yaml"], state, source)
    model = Model(checkpoint["model_yaml"])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    model.names = list(checkpoint.get("names") or [str(i) for i in range(model.nc)])
    return model.eval()


def format_table(model: Model) -> str:
    """The layer table: index, from, repeats, params, module, resolved args."""
    lines = [f"{'':>3}{'from':>18}{'n':>3}{'params':>10}  {'module':<20}arguments"]
    for spec in model.layer_table:
        lines.append(f"{spec.index:>3}{spec.sources!s:>18}{spec.number:>3}{spec.params:>10}  {spec.module:<20}"
                     f"{spec.args}")
    return "\n".join(lines)


@dataclass(frozen=True)
class ModelOptions(HeadFlags):
    """models/yolo.py's flags; the box head flags are train.py's (utils.head.HeadFlags)."""

    cfg: str = option("", "model YAML, bare names look in models/ (e.g. yolov5s.yaml)", required=True)
    img: int = option(640, "image size for the GFLOPs figure")
    nc: Optional[int] = option(None, "override the number of classes")


def parse_args(argv: Optional[list[str]] = None) -> ModelOptions:
    parser = build_parser(ModelOptions, "Build a model YAML and print its layers, parameters and GFLOPs")
    parser.add_argument("--bins", dest="cbbl_bins", type=int, default=argparse.SUPPRESS, help="same as --cbbl-bins")
    return ModelOptions(**vars(parser.parse_args(argv)))


def main(argv: Optional[list[str]] = None) -> Model:
    """CLI entry: build ``--cfg`` and log its layer table, parameters and GFLOPs. A broken config raises
    ValueError naming its row (one line and exit 2 through cli_main)."""
    opts = parse_args(argv)
    setup_logging()
    cfg = resolve_model_config(opts.cfg, "--cfg")
    model = Model(cfg, nc=opts.nc, head=head_overrides(opts))
    info = model.info(opts.img)
    logger.info("%s\n%s: %d layers, %s parameters, %.1f GFLOPs at %d px, strides %s, head %s", format_table(model),
                cfg.stem, info["layers"], f"{info['params']:,}", info["gflops"], opts.img,
                model.stride.tolist(), model.detect.head)
    return model


if __name__ == "__main__":
    cli_main(main, "models/yolo.py")
