"""What every benchmark script shares: the machine/versions header, a timer, CSV/JSON writers, and the GPU
check's measurements.

Needs only the standard library, numpy and torch, so that benchmarks/_reference_yolov5.py loads it by path in
the reference venv and both implementations are timed by identical code. Figures are only meaningful next to
the machine, the load on it and the library versions that produced them.
"""

from __future__ import annotations

import copy
import csv
import fcntl
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# The reference side (Ultralytics' YOLOv5 in its own venv) and how it hands back its figures.
REFERENCE_SCRIPT = Path(__file__).resolve().parent / "_reference_yolov5.py"
RESULT_PREFIX = "RESULT_JSON: "
NUM_CLASSES = 10  # VisDrone's: both sides build their models with it


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    """Short commit of the working tree the figures came from ('unknown' outside git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def environment() -> dict[str, Any]:
    """Machine (CPU, cores, 1/5/15-min load), library versions and git commit, as a flat dict."""
    import cv2
    import numpy

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_1_5_15": [round(x, 2) for x in load],
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "opencv": cv2.__version__,
        "commit": _git_commit(),
    }


def header_lines(settings: dict[str, Any]) -> list[str]:
    """Human-readable header: environment then settings, one ``key: value`` per line."""
    env = environment()
    return [f"{key}: {value}" for key, value in {**env, **settings}.items()]


def quiet_start(logger: logging.Logger, threads: int) -> None:
    """A benchmark's start: only its own INFO lines (library logs at WARNING), and ``threads`` torch threads."""
    from utils.log import setup_logging

    setup_logging(verbose=False)
    logger.setLevel(logging.INFO)
    torch.set_num_threads(threads)


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: VmHWM from /proc/self/status (Linux).

    Not ``getrusage``'s ru_maxrss: Linux carries that across fork and exec, so a child started by a large
    parent reports the parent's peak. VmHWM belongs to the process's own address space.
    """
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status: peak memory needs Linux")


def time_call(fn: Callable[[], Any], warmup: int = 1, repeats: int = 5) -> dict[str, float]:
    """Wall-clock seconds of ``fn()``: warm-up calls discarded, then median/min/max over ``repeats``."""
    if repeats < 1:
        raise ValueError(f"time_call needs repeats >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats}


def drain_loader(loader: Any, num_batches: int) -> dict[str, float]:
    """Images/s over ``num_batches`` batches after one warm-up batch (cycling a short loader)."""
    iterator, seen, start = iter(loader), 0, 0.0
    for index in range(num_batches + 1):
        try:
            images = next(iterator)[0]
        except StopIteration:
            iterator = iter(loader)
            images = next(iterator)[0]
        if index == 0:
            start = time.perf_counter()
            continue
        seen += images.shape[0]
    elapsed = time.perf_counter() - start
    return {"images": seen, "seconds": elapsed, "images_per_s": seen / elapsed}


def result_of(command: list[str], cwd: Path, what: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``command``; its last ``RESULT_JSON:`` line as a dict (RuntimeError with the output's tail otherwise)."""
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise RuntimeError(f"{what} failed with exit code {done.returncode}:\n{tail}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def welch_t(values: list[float], baseline: list[float]) -> float:
    """Welch's t of mean(values) - mean(baseline) (unequal variances); nan below 2 values on either side."""
    if len(values) < 2 or len(baseline) < 2:
        return float("nan")
    spread = statistics.variance(values) / len(values) + statistics.variance(baseline) / len(baseline)
    difference = statistics.mean(values) - statistics.mean(baseline)
    return difference / spread ** 0.5 if spread > 0 else float("nan")


def summary_cell(entry: dict[str, Any], name: str, t_columns: Sequence[str], digits: int) -> str:
    """A summary row's ``name`` as a table cell: 'mean +- std (t a / b)', with the t's of the ``t_columns``
    (``<name>_<t_column>``) that are set, in that order; '-' where the column has no mean."""
    if entry.get(f"{name}_mean", "") == "":
        return "-"
    cell = f"{float(entry[f'{name}_mean']):.{digits}f}"
    if entry.get(f"{name}_std", "") != "":
        cell += f" +- {float(entry[f'{name}_std']):.{digits}f}"
    ts = [entry.get(f"{name}_{t}", "") for t in t_columns]
    shown = [f"{float(t):+.1f}" for t in ts if t != "" and not math.isnan(float(t))]  # '', nan: too few seeds
    return cell + (f" (t {' / '.join(shown)})" if shown else "")


def temporary_twin(path: Path) -> Path:
    """Where an atomic write of ``path`` goes first: beside it, named per process (two study lanes may write the
    same file)."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON (atomic: temp file then rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_twin(path)
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows (dicts; columns = union of keys in first-seen order) as CSV, replacing the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    tmp = temporary_twin(path)
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV written by :func:`write_csv` / :func:`append_csv_row`, or of a results.csv, whose fields
    are space-padded as YOLOv5 writes them (names and values come back stripped); [] if the file is missing."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [{key.strip(): value.strip() for key, value in row.items()} for row in csv.DictReader(f)]


def append_csv_row(path: Path, row: dict[str, Any]) -> Path:
    """Add one row, so a long study keeps every finished result; rewrites the file if new columns appear. Holds an
    flock on the file's folder meanwhile: two study processes sharing a results folder never lose a row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)  # released when the descriptor closes
        rows = read_csv(path)
        known = list(rows[0].keys()) if rows else []
        if rows and all(key in known for key in row):
            with open(path, "a", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, fieldnames=known).writerow(row)
            return path
        return write_csv(path, [*rows, row])
    finally:
        os.close(folder)


# The GPU check (gpu_check.py, and task gpu of _reference_yolov5.py): models come in as plain callables,
# ``loss_fn(preds, targets) -> (loss, ...)``, ``forward(images) -> pred`` and ``nms(pred) -> list``; inputs are
# seeded, hence byte-identical on both sides: uint8 images and VisDrone-like targets (many small boxes).
BOXES_PER_IMAGE = 60  # VisDrone averages ~54 objects per image
GRAD_CLIP = 10.0  # both trainers clip the gradient norm at 10
# Inference tasks -> NMS settings: val.py's (throughput) and detect.py's (batch-1 latency), the same on both sides.
PREDICT_NMS = {"val": {"conf_thres": 0.001, "iou_thres": 0.6, "max_det": 300, "multi_label": True},
               "detect_b1": {"conf_thres": 0.25, "iou_thres": 0.45, "max_det": 1000, "multi_label": False}}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> Optional[float]:
    """Peak GPU memory allocated by tensors since the last reset (None on CPU)."""
    return round(torch.cuda.max_memory_allocated(device) / 1e9, 3) if device.type == "cuda" else None


def synthetic_batch(batch: int, imgsz: int, nc: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (B, 3, S, S) and targets (M, 6) ``[image, class, cx, cy, w, h]`` normalised, 4-96 px boxes."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, imgsz, imgsz), generator=generator, dtype=torch.uint8)
    count = batch * BOXES_PER_IMAGE
    size = torch.exp(torch.empty(count, 2).uniform_(math.log(4), math.log(96), generator=generator))
    size = size.clamp(max=imgsz) / imgsz  # (M, 2) normalised
    centre = size / 2 + torch.rand(count, 2, generator=generator) * (1 - size)
    image_index = torch.arange(batch).repeat_interleave(BOXES_PER_IMAGE)[:, None].float()
    classes = torch.randint(0, nc, (count, 1), generator=generator).float()
    return images, torch.cat([image_index, classes, centre, size], 1)


def train_throughput(model: torch.nn.Module, loss_fn: Callable, device: torch.device, batch: int, imgsz: int,
                     nc: int, steps: int, warmup: int, amp: bool) -> dict:
    """Mean seconds per training step (AMP forward + loss, scaled backward, clip, SGD step) and images/s."""
    images, targets = synthetic_batch(batch, imgsz, nc)
    images, targets = images.to(device), targets.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.937, nesterov=True)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    model.train()

    def step() -> None:
        with torch.autocast(device_type=device.type, enabled=amp):
            loss = loss_fn(model(images.float() / 255), targets)[0]
        scaler.scale(loss.sum()).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=GRAD_CLIP)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    reset_peak_memory(device)
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    elapsed = time.perf_counter() - start
    return {"step_s": round(elapsed / steps, 4), "images_per_s": round(batch * steps / elapsed, 2),
            "peak_mem_gb": peak_memory_gb(device)}


def predict_latency(forward: Callable, nms: Callable, device: torch.device, batch: int, imgsz: int,
                    repeats: int, warmup: int, half: bool) -> dict:
    """Median seconds of forward + NMS on a random batch, images/s, and peak memory."""
    dtype = torch.float16 if half else torch.float32
    images = torch.rand(batch, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    reset_peak_memory(device)
    times = []
    with torch.inference_mode():
        for index in range(warmup + repeats):
            synchronize(device)
            start = time.perf_counter()
            nms(forward(images).float())
            synchronize(device)
            if index >= warmup:
                times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"batch_s": round(median, 5), "latency_ms": round(median * 1000, 2),
            "images_per_s": round(batch / median, 2), "peak_mem_gb": peak_memory_gb(device)}


def gpu_rows(model: torch.nn.Module, loss_fn: Callable, nms: Callable, base: dict, args: Any) -> list[dict]:
    """The GPU check's rows of one model: AMP training steps per ``args.train_batches``, then val (batch
    ``args.val_batch``) and detect-b1 latency of its fused copy; ``nms(pred, **settings)``."""
    device = torch.device(args.device)
    rows = []
    for batch in args.train_batches:
        timing = train_throughput(model, loss_fn, device, batch, args.img, args.nc, args.steps, args.warmup,
                                  amp=device.type == "cuda")
        rows.append({**base, "task": "train_step_amp", "batch": batch, **timing})
    fused = copy.deepcopy(model).fuse().eval()
    fused = fused.half() if args.half else fused
    for task, settings in PREDICT_NMS.items():
        batch = args.val_batch if task == "val" else 1
        timing = predict_latency(lambda images: fused(images)[0], lambda pred, s=settings: nms(pred, **s), device,
                                 batch, args.img, args.repeats, args.warmup, args.half)
        rows.append({**base, "task": task, "batch": batch, **timing})
    return rows
