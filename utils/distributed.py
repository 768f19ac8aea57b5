"""DistributedDataParallel plumbing for torchrun launches: read the env once, pass ranks explicitly.

Nothing here runs at import; ``DistContext.from_env()`` is called by the training entry point and
the result travels as an argument (no global RANK).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

logger = logging.getLogger(__name__)

# Generous, because rank 0 validates alone while the others wait at the next collective.
PROCESS_GROUP_TIMEOUT = timedelta(minutes=30)
# How long a finishing rank waits for its peers before leaving the group anyway.
CLEANUP_BARRIER_S = 60


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank -1 means a plain single-process run."""

    rank: int = -1
    local_rank: int = -1
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 or single process: the one that logs, validates and saves."""
        return self.rank in (-1, 0)

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None, local_rank: int = -1) -> DistContext:
        """Read torchrun's RANK / LOCAL_RANK / WORLD_SIZE (``--local_rank`` is the fallback of old launchers)."""
        env = os.environ if env is None else env
        world_size = int(env.get("WORLD_SIZE", 1))
        if world_size <= 1:
            return cls()
        local = int(env.get("LOCAL_RANK", local_rank))
        return cls(rank=int(env.get("RANK", local)), local_rank=local, world_size=world_size)


def init_distributed(context: DistContext, device: torch.device) -> None:
    """Join the process group: NCCL for CUDA devices, gloo on CPU. No-op for a single process."""
    if not context.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=PROCESS_GROUP_TIMEOUT)
    logger.info("DDP: rank %d/%d joined with backend %s", context.rank, context.world_size, backend)


def wrap_ddp(model: nn.Module, context: DistContext, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """Wrap a model in DistributedDataParallel (optionally with SyncBatchNorm); unchanged for one process."""
    if not context.enabled:
        return model
    if sync_bn and device.type != "cuda":
        logger.warning("--sync-bn needs CUDA devices (torch's SyncBatchNorm); training with per-process BatchNorm")
    elif sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        logger.info("DDP: using SyncBatchNorm")
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, output_device=device_ids and device_ids[0])


def broadcast_object(value: Any, context: DistContext, src: int = 0) -> Any:
    """Rank ``src``'s value on every rank (e.g. the early-stop decision); the value itself for one process."""
    if not context.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier(context: DistContext) -> None:
    if context.enabled:
        dist.barrier()


def cleanup(context: DistContext) -> None:
    """Leave the process group (end of training or an error)."""
    if context.enabled and dist.is_initialized():
        # Leave together: a rank destroying its gloo group while a peer still talks aborts that peer.
        try:
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=timedelta(seconds=CLEANUP_BARRIER_S))
            else:
                dist.barrier()
        except RuntimeError as err:  # a peer already failed: nothing to wait for
            logger.warning("distributed cleanup: peers did not reach the final barrier (%s)", err)
        dist.destroy_process_group()
