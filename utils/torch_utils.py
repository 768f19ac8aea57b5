"""Device selection, seeding and small torch helpers shared by train, val and detect."""

from __future__ import annotations

import logging
import os
import random
import time

import numpy as np
import torch
import torch.nn as nn

logger = logging.getLogger(__name__)


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


def de_parallel(model: nn.Module) -> nn.Module:
    """The underlying model of a DataParallel/DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


def time_sync() -> float:
    """time.time() after waiting for pending CUDA work, for honest timings."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.time()
