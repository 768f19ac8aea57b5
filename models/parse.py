"""The YAML model builder: ``[from, number, module, args]`` rows -> an nn.Sequential of layers.

Rows live under ``backbone:`` then ``head:`` (YOLOv5's layout). ``from`` is -1 (previous layer), an
earlier layer index or a list of them; ``number`` repeats a block (scaled by ``depth_multiple``);
output channels are scaled by ``width_multiple`` and rounded up to a multiple of 8. The Detect
settings live under ``detect:`` (see models/detect.py). Every error names the row (and its YAML line).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch.nn as nn
import yaml

from models.clla import CLLADetect
from models.common import C3, SPP, SPPF, Bottleneck, Concat, Conv, Focus, Upsample
from models.detect import Detect
from models.swin import C3STRv2, CrossLayerAttention
from models.tph import BiFPNConcat, C3TRv2, CBAMv2
from models.tph_yolov5 import C3STR, C3TR, CBAM

# Module names a YAML row may use (no eval of YAML text). TPH-YOLOv5's names are TPH's blocks; *v2 are ours.
MODULES: dict[str, type] = {
    "Conv": Conv, "Bottleneck": Bottleneck, "C3": C3, "SPP": SPP, "SPPF": SPPF, "Focus": Focus,
    "Concat": Concat, "BiFPNConcat": BiFPNConcat, "Upsample": Upsample, "nn.Upsample": nn.Upsample,
    "C3TR": C3TR, "C3STR": C3STR, "CBAM": CBAM, "C3TRv2": C3TRv2, "C3STRv2": C3STRv2, "CBAMv2": CBAMv2,
    "CrossLayerAttention": CrossLayerAttention, "Detect": Detect, "CLLADetect": CLLADetect,
}
# args (c2, ...) -> (c1, c2, ...)
CHANNEL_BLOCKS = (Conv, Bottleneck, C3, SPP, SPPF, Focus, C3TR, C3STR, CBAM, C3TRv2, C3STRv2)
REPEAT_BLOCKS = (C3, C3TR, C3STR, C3TRv2, C3STRv2)  # take ``number`` as their own n (the 3rd argument)
CHANNEL_KEEPING = (CBAMv2,)  # args (...) -> (c1, ...), output channels = input channels
CROSS_LAYER = (CrossLayerAttention,)  # from [coarse, fine]: args (...) -> (c_coarse, c_fine, ...), keeps c_coarse
CHANNEL_DIVISOR = 8
# Words YOLOv5 YAMLs use as arguments (YOLOv5 eval()s them; we look them up).
ARG_NAMES = {"nc": lambda cfg: cfg["nc"], "anchors": lambda cfg: cfg["anchors"], "None": lambda cfg: None}


@dataclass(frozen=True)
class LayerSpec:
    """One built layer, for the model table: index, sources, repeats, module name, final args, params."""

    index: int
    sources: Union[int, list[int]]
    number: int
    module: str
    args: list
    params: int


def make_divisible(value: float, divisor: int = CHANNEL_DIVISOR) -> int:
    """Smallest multiple of ``divisor`` >= value (channel counts stay hardware friendly)."""
    return int(math.ceil(value / divisor) * divisor)


def row_lines(text: str) -> list[Optional[int]]:
    """1-based YAML line of each backbone then head row (None when the layout is unusual)."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return []
    lines: list[Optional[int]] = []
    for section in ("backbone", "head"):
        for key_node, value_node in getattr(root, "value", []):
            if getattr(key_node, "value", None) == section and isinstance(value_node, yaml.SequenceNode):
                lines += [item.start_mark.line + 1 for item in value_node.value]
    return lines


def _row_name(cfg: dict, index: int, row: Any) -> str:
    source, lines = cfg.get("_source", "model config"), cfg.get("_lines") or []
    line = f" line {lines[index]}" if index < len(lines) and lines[index] else ""
    return f"{source}{line}: layer {index} {row!r}"


def _check_row(row: Any, index: int, where: str) -> tuple[Union[int, list[int]], int, type, list]:
    """Validate a row's shape, sources, repeat count and module name; ValueError naming the row."""
    if not isinstance(row, (list, tuple)) or len(row) != 4:
        raise ValueError(f"{where}: a row must be [from, number, module, args]")
    sources, number, name, args = row
    source_list = [sources] if isinstance(sources, int) else sources
    if not isinstance(source_list, list) or not source_list or not all(isinstance(s, int) for s in source_list):
        raise ValueError(f"{where}: 'from' must be an int or a list of ints, got {sources!r}")
    for source in source_list:
        absolute = index + source if source < 0 else source
        if not 0 <= absolute < index and not (index == 0 and source == -1):
            raise ValueError(f"{where}: 'from' index {source} does not point to an earlier layer")
    if not isinstance(number, int) or number < 1:
        raise ValueError(f"{where}: 'number' must be an int >= 1, got {number!r}")
    if name not in MODULES:
        raise ValueError(f"{where}: unknown module {name!r}; known modules: {sorted(MODULES)}")
    if not isinstance(args, list):
        raise ValueError(f"{where}: args must be a list, got {args!r}")
    return sources, number, MODULES[name], list(args)


def _resolve_args(module: type, args: list, sources: Union[int, list[int]], number: int, ch: list[int],
                  cfg: dict) -> tuple[list, int, int]:
    """The constructor args, output channels and repeat count of a row (width/depth scaling applied)."""
    width, depth = cfg.get("width_multiple", 1.0), cfg.get("depth_multiple", 1.0)
    number = max(round(number * depth), 1) if number > 1 else number
    args = [ARG_NAMES[arg](cfg) if isinstance(arg, str) and arg in ARG_NAMES else arg for arg in args]
    source_list = [sources] if isinstance(sources, int) else sources
    if module in CHANNEL_BLOCKS:
        if not args:
            raise ValueError("expected the output channels as the first argument")
        c1, c2 = ch[source_list[0]], make_divisible(args[0] * width)
        args = [c1, c2, *args[1:]]
        if module in REPEAT_BLOCKS:
            args.insert(2, number)
            number = 1
        return args, c2, number
    if module in CHANNEL_KEEPING:
        return [ch[source_list[0]], *args], ch[source_list[0]], number
    if module in CROSS_LAYER:
        if len(source_list) != 2:
            raise ValueError(f"expected 'from' = [coarse, fine] (2 layers), got {sources!r}")
        return [ch[source_list[0]], ch[source_list[1]], *args], ch[source_list[0]], number
    if module is Concat:
        return args, sum(ch[s] for s in source_list), number
    if module is BiFPNConcat:
        return [len(source_list), *args], sum(ch[s] for s in source_list), number
    if issubclass(module, Detect):
        return [args[0], args[1], [ch[s] for s in source_list], cfg["detect"]], 0, number
    return args, ch[source_list[0]], number


def _construct(module: type, args: list, number: int, where: str) -> nn.Module:
    """Build ``number`` copies (Sequential when > 1); ValueError naming the row on wrong arguments."""
    try:
        inspect.signature(module).bind(*args)
    except TypeError as err:
        raise ValueError(f"{where}: wrong arguments {args} for {module.__name__}: {err}") from err
    try:
        layers = [module(*args) for _ in range(number)]
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {module.__name__}{tuple(args)} failed: {err}") from err
    return nn.Sequential(*layers) if number > 1 else layers[0]


def parse_model(cfg: dict, ch: int = 3) -> tuple[nn.Sequential, list[Union[int, list[int]]], set[int], list[LayerSpec]]:
    """Build the layers of a resolved model dict (``nc``, ``anchors`` as lists, ``detect`` settings set).

    Returns (layers, each layer's ``from`` (-1 = previous), indices whose output later layers read,
    layer table rows). ``channels[j]`` is layer j's output width; ``channels[-1]`` the previous one's.
    Raises ValueError naming the bad row.
    """
    rows = list(cfg.get("backbone") or []) + list(cfg.get("head") or [])
    if not rows:
        raise ValueError(f"{cfg.get('_source', 'model config')}: no 'backbone'/'head' rows")
    channels, layers, routes, saved, table = [ch], [], [], set(), []
    for index, row in enumerate(rows):
        where = _row_name(cfg, index, row)
        sources, number, module, args = _check_row(row, index, where)
        if issubclass(module, Detect) != (index == len(rows) - 1):
            raise ValueError(f"{where}: Detect must be the last row, and only the last")
        try:
            args, c2, number = _resolve_args(module, args, sources, number, channels, cfg)
        except (IndexError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from err
        layer = _construct(module, args, number, where)
        routes.append(sources)
        saved.update(s % index for s in ([sources] if isinstance(sources, int) else sources) if s != -1)
        params = sum(p.numel() for p in layer.parameters())
        shown = [args[0], f"{len(args[1][0]) // 2} anchors/level", args[2]] if issubclass(module, Detect) else args
        table.append(LayerSpec(index, sources, number, row[2], shown, params))
        layers.append(layer)
        channels = channels + [c2] if index else [c2]
    return nn.Sequential(*layers), routes, saved, table


def run_layers(layers: nn.Sequential, routes: list[Union[int, list[int]]], saved: set[int], x: Any,
               inspect: Optional[Callable[[int, Any], None]] = None) -> Any:
    """Forward through :func:`parse_model`'s layers: each reads its ``from`` outputs; ``inspect(index, output)``
    sees every layer's output. Returns the last layer's output."""
    outputs: list[Any] = []
    for index, (layer, sources) in enumerate(zip(layers, routes)):
        if sources != -1:
            x = outputs[sources] if isinstance(sources, int) else [x if s == -1 else outputs[s] for s in sources]
        x = layer(x)
        if inspect is not None:
            inspect(index, x)
        outputs.append(x if index in saved else None)
    return x
