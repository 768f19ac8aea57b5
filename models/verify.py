"""Check a checkpoint's graph against its stored weights before building it (a file may come from anywhere).

A ``model_yaml`` that asks for 200000 repeats or a width multiple of 1e7 would take minutes and hundreds of
GB to build; one that does not match its weights would fail in ``load_state_dict`` without naming the file.
So, before anything real is allocated: the rows, repeats and channel widths are bounded by what the weights
hold; the graph is then built and probed on the ``meta`` device (shapes only, no memory) and every
parameter and buffer shape must equal the stored one, and every activation of the stride probe must stay
within a bound set by the widest weight. Only then is the model built for real, at exactly the stored size.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any, Union

import torch

from models.parse import CHANNEL_BLOCKS, MODULES, make_divisible, parse_model, run_layers
from utils.head import as_head_config

# Side of the square probe image pushed through the meta graph (a multiple of every usual stride).
PROBE_SIZE = 64
# Largest activation allowed per layer of the probe, in units of (probe pixels x widest stored dimension):
# a stride-2 stem holds a quarter of that, so legitimate graphs stay far below it.
ACTIVATION_BOUND = 1


def _problem(source: Union[str, Path], text: str) -> ValueError:
    return ValueError(f"{source}: its model_yaml does not match its weights ({text}); the file is damaged or "
                      f"was edited; use the checkpoint its training run wrote")


def _check_bounds(rows: list, model_yaml: dict, state: dict[str, torch.Tensor], source: Union[str, Path]) -> None:
    """Rows, repeats and widths within what the weights can hold (cheap, before building anything)."""
    width, depth = model_yaml.get("width_multiple", 1.0), model_yaml.get("depth_multiple", 1.0)
    for name, value in (("width_multiple", width), ("depth_multiple", depth)):
        if not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise _problem(source, f"{name} {value!r} is not a positive number")
    per_layer = Counter(int(key.split(".")[1]) for key in state if key.split(".")[0] == "model"
                        and key.split(".")[1].isdigit())
    if not per_layer or len(rows) != max(per_layer) + 1:
        raise _problem(source, f"{len(rows)} rows for weights of {max(per_layer, default=-1) + 1} layers")
    widest = max(max(t.shape, default=1) for t in state.values())
    for index, row in enumerate(rows):
        if not isinstance(row, (list, tuple)) or len(row) != 4:
            continue  # parse_model names the bad row
        _, number, name, args = row
        repeats = max(round(number * depth), 1) if isinstance(number, int) and number > 1 else number
        if isinstance(repeats, int) and repeats > max(per_layer.get(index, 0), 1):
            raise _problem(source, f"row {index} repeats {name} {repeats} times but its weights hold "
                                   f"{per_layer.get(index, 0)} tensors")
        if MODULES.get(name) in CHANNEL_BLOCKS and args and isinstance(args[0], (int, float)) \
                and make_divisible(args[0] * width) > widest:
            raise _problem(source, f"row {index} asks for {make_divisible(args[0] * width)} channels, wider than "
                                   f"any stored weight ({widest})")


def check_graph(model_yaml: Any, state: Any, source: Union[str, Path] = "checkpoint", ch: int = 3) -> None:
    """ValueError naming ``source`` unless ``model_yaml`` builds exactly the tensors of ``state`` (a state dict)."""
    if not isinstance(model_yaml, dict) or not isinstance(state, dict) or not state or \
            not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError(f"{source}: model_yaml must be a dict and the weights a non-empty state dict of tensors")
    rows = list(model_yaml.get("backbone") or []) + list(model_yaml.get("head") or [])
    _check_bounds(rows, model_yaml, state, source)
    build = {**model_yaml, "_source": str(source), "detect": as_head_config(model_yaml.get("detect"))}
    try:
        with torch.device("meta"):
            layers, routes, saved, _ = parse_model(build, ch)
            layers.to("meta")  # constants computed on the CPU (the C-BBL grid) too
            expected = {f"model.{key}": value.shape for key, value in layers.state_dict().items()}
            _check_shapes(expected, state, source)
            _probe(layers, routes, saved, state, source, ch)
    except ValueError as err:
        raise err if str(err).startswith(str(source)) else ValueError(f"{source}: {err}") from err


def _check_shapes(expected: dict[str, torch.Size], state: dict[str, torch.Tensor], source: Union[str, Path]) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{key} {tuple(state[key].shape)} stored, {tuple(shape)} built" for key, shape in expected.items()
             if key in state and state[key].shape != shape]
    problems = [f"missing {missing[:3]}"] * bool(missing) + [f"unexpected {unexpected[:3]}"] * bool(unexpected) + \
        wrong[:3]
    if problems:
        raise _problem(source, "; ".join(problems))


def _probe(layers: torch.nn.Sequential, routes: list, saved: set[int], state: dict[str, torch.Tensor],
           source: Union[str, Path], ch: int) -> None:
    """Run the stride probe on meta tensors; refuse any layer whose output exceeds the activation bound."""
    widest = max(max(t.shape, default=1) for t in state.values())
    limit = ACTIVATION_BOUND * PROBE_SIZE * PROBE_SIZE * widest

    def bounded(index: int, output: Any) -> None:
        size = sum(t.numel() for t in (output if isinstance(output, (list, tuple)) else [output])
                   if isinstance(t, torch.Tensor))
        if size > limit:
            raise _problem(source, f"layer {index} makes {size} values from a {PROBE_SIZE}x{PROBE_SIZE} image, "
                                   f"more than the weights justify ({limit})")

    run_layers(layers.eval(), routes, saved, torch.zeros(1, ch, PROBE_SIZE, PROBE_SIZE), bounded)
