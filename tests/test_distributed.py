"""Tests for utils/distributed.py: env parsing, and a real 2-process gloo run under torchrun (CPU)."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from utils.distributed import DistContext, broadcast_object, wrap_ddp
from utils.engine.writers import read_results


def test_single_process_by_default():
    context = DistContext.from_env({})
    assert not context.enabled and context.is_main and context.rank == -1
    assert broadcast_object("x", context) == "x"


def test_torchrun_env_is_read():
    context = DistContext.from_env({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    assert context.enabled and not context.is_main and (context.rank, context.local_rank) == (1, 1)
    assert DistContext.from_env({"WORLD_SIZE": "1", "RANK": "0"}) == DistContext()


def test_wrap_is_identity_for_one_process():
    import torch

    model = torch.nn.Linear(2, 2)
    assert wrap_ddp(model, DistContext(), torch.device("cpu")) is model


WORKER = textwrap.dedent("""
    import torch, torch.distributed as dist
    from utils.distributed import DistContext, init_distributed, wrap_ddp, broadcast_object, cleanup
    context = DistContext.from_env()
    init_distributed(context, torch.device("cpu"))
    torch.manual_seed(context.rank)
    model = wrap_ddp(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)), context,
                     torch.device("cpu"), sync_bn=True)
    model(torch.randn(4, 3) * (context.rank + 1)).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    gathered = [None, None]
    dist.all_gather_object(gathered, grads)
    assert all(torch.allclose(a, b) for a, b in zip(*gathered)), "DDP gradients differ between ranks"
    assert broadcast_object(context.rank + 10, context) == 10
    cleanup(context)
    print(f"rank {context.rank} ok")
""")


@pytest.mark.timeout(120)
def test_two_process_gloo_ddp(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", free_port(), str(script)], capture_output=True, text=True, timeout=110,
                            env=_env_with_repo())
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rank 0 ok" in result.stdout and "rank 1 ok" in result.stdout


@pytest.mark.timeout(600)
def test_train_py_under_torchrun_two_processes(tmp_path):
    """train.py itself under torchrun: gloo, DistributedSampler, rank-0 outputs only."""
    data = tmp_path / "tiny.yaml"
    data.write_text(yaml.safe_dump({"path": str(tmp_path / "data"), "train": "images/train", "val": "images/val",
                                    "names": ["a", "b", "c", "d", "e"],
                                    "generate": {"images": 16, "val_images": 8, "size": 128, "seed": 0}}))
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", free_port(), "train.py", "--img", "64", "--batch", "8", "--nbs", "8",
                             "--epochs", "1", "--workers", "0", "--data", str(data), "--project", str(tmp_path),
                             "--noplots", "--noautoanchor", "--sync-bn"], cwd=repo, capture_output=True, text=True,
                            timeout=580, env=_env_with_repo())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0/2 joined with backend gloo" in result.stdout
    assert "rank 1/2 joined" not in result.stdout  # other ranks log errors only
    assert [row[0] for row in read_results(tmp_path / "exp" / "results.csv")[1]] == ["0"]
    assert (tmp_path / "exp" / "weights" / "last.pt").is_file() and not (tmp_path / "exp2").exists()


def free_port() -> str:
    """A TCP port nothing listens on now: fixed ports collide with other test runs on the same machine."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def _env_with_repo() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env
