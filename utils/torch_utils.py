"""Device selection, seeding and small torch helpers shared by train, val and detect."""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn as nn

logger = logging.getLogger(__name__)


# Training image sides are multiples of the largest stride and of at least this (YOLOv5's grid floor).
TRAIN_GRID_FLOOR = 32


def max_stride(strides: Any, floor: int = 1) -> int:
    """The grid an image size must fit: the largest level stride (a tensor, list or number), at least ``floor``."""
    values = strides.tolist() if torch.is_tensor(strides) else strides
    values = values if isinstance(values, (list, tuple)) else [values]
    return max(int(max(values)), floor)


def round_to_stride(size: int, stride: int, flag: str = "--img") -> int:
    """``size`` rounded up to a multiple of ``stride``, with a warning when that changes it."""
    rounded = int(math.ceil(size / stride) * stride)
    if rounded != size:
        logger.warning("%s %d is not a multiple of the max stride %d; using %d", flag, size, stride, rounded)
    return rounded


def device_memory(device: torch.device) -> int:
    """Bytes of memory a run on ``device`` can use at most: the GPU's total memory, or the machine's RAM. Sizes that
    cannot fit are refused before anything is allocated (train's model and batch, val's and detect's input)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# CPU flags of bfloat16 arithmetic in hardware (AMX tiles, AVX512-BF16 dot products). Without one of them oneDNN
# emulates bf16 on the fp32 units, slower than fp32: autocast is never used there.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (Linux /proc/cpuinfo flags; False wherever unknown)."""
    try:
        with CPUINFO.open() as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        return False
    return torch.backends.mkldnn.is_available() and any(flag in flags for flag in NATIVE_BF16_FLAGS)


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The mixed-precision type of ``device``: float16 on CUDA (YOLOv5's AMP), bfloat16 on a CPU with native bf16,
    None (stay float32) elsewhere."""
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """``torch.autocast`` at :func:`autocast_dtype` when ``enabled`` and the device has one; a no-op otherwise."""
    dtype = autocast_dtype(device) if enabled else None
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def float32_under_cpu_autocast(forward: Callable) -> Callable:
    """Decorate a head's ``forward(self, features)``: under CPU bf16 autocast it runs in float32, inputs cast up.

    bfloat16 keeps 8 mantissa bits: a coordinate near 640 px is off by up to 2 px, too coarse for 10 px objects, so
    the prediction convolutions, the decode and the C-BBL expectation stay float32. CUDA fp16 autocast (YOLOv5's
    AMP) is left as it is.
    """
    @functools.wraps(forward)
    def wrapper(self: nn.Module, features: list[torch.Tensor]) -> Any:
        if not torch.is_autocast_enabled("cpu"):
            return forward(self, features)
        with torch.autocast("cpu", enabled=False):
            return forward(self, [feature.float() for feature in features])
    return wrapper


def select_device(device: str = "", batch_size: int = 0) -> torch.device:
    """'' (auto: first CUDA device, else CPU), 'cpu', '0' or '0,1' (CUDA ids) -> torch.device.

    Raises ValueError for a CUDA request on a machine without the named device.
    """
    spec = str(device).strip().lower().replace("cuda:", "").replace(" ", "")
    if spec == "cpu":
        return torch.device("cpu")
    if spec in ("", None):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    ids = [int(i) for i in spec.split(",") if i != ""] if all(i.isdigit() for i in spec.split(",")) else None
    if ids is None:
        raise ValueError(f"--device {device!r} not understood; expected '', 'cpu', '0' or '0,1,...'")
    if not torch.cuda.is_available() or max(ids) >= torch.cuda.device_count():
        raise ValueError(f"--device {device!r} requested but {torch.cuda.device_count()} CUDA device(s) "
                         "are available; use --device cpu")
    if batch_size and len(ids) > 1 and batch_size % len(ids):
        raise ValueError(f"--batch-size {batch_size} is not a multiple of the {len(ids)} GPUs")
    return torch.device(f"cuda:{ids[0]}")


def init_seeds(seed: int = 0, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices); optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def python_rng_state(rng: random.Random) -> list:
    """A ``random.Random`` state as plain lists (checkpoints hold builtins only)."""
    version, internal, gauss_next = rng.getstate()
    return [version, list(internal), gauss_next]


def set_python_rng_state(rng: random.Random, state: list) -> None:
    version, internal, gauss_next = state
    rng.setstate((version, tuple(internal), gauss_next))


def global_rng_states() -> dict[str, Any]:
    """The global Python, NumPy and torch (CPU and CUDA) generators, as checkpoint-safe data."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    states = {"python": python_rng_state(random), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position,
                                                           has_gauss, cached],
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_global_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`global_rng_states` returned (CUDA states only when the devices match)."""
    set_python_rng_state(random, states["python"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, np.int64).astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def de_parallel(model: nn.Module) -> nn.Module:
    """The underlying model of a DataParallel/DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


def time_sync() -> float:
    """time.time() after waiting for pending CUDA work, for honest timings."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.time()


class ModelEMA:
    """Exponential moving average of a model's float weights (buffers copied), for steadier evaluation.

    decay(updates) = decay * (1 - exp(-updates / tau)) ramps from 0 so the early average follows
    the fast-changing weights; ``state_dict``/``load_state_dict`` carry it across a resume.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0):
        self.ema = copy.deepcopy(de_parallel(model)).eval()
        self.decay, self.tau, self.updates = decay, tau, updates
        for param in self.ema.parameters():
            param.requires_grad_(False)

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the live weights in: ema = d * ema + (1 - d) * live for floats; other buffers copied."""
        self.updates += 1
        decay = self.current_decay()
        live_state = de_parallel(model).state_dict()
        for name, ema_value in self.ema.state_dict().items():
            if ema_value.dtype.is_floating_point:
                ema_value.mul_(decay).add_(live_state[name].detach().to(ema_value.dtype), alpha=1 - decay)
            else:
                ema_value.copy_(live_state[name])

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.load_state_dict(state["ema"])
        self.updates = int(state["updates"])
