"""The GPU check's measurements, shared by both implementations (benchmarks/gpu_check.py and, loaded by path,
benchmarks/_reference_yolov5.py): torch only, so that identical code times ours and theirs.

A model comes in as plain callables: ``loss_fn(preds, targets) -> (loss, ...)`` for training, ``forward(images)
-> pred`` and ``nms(pred) -> list`` for inference. Inputs are synthetic and seeded, hence byte-identical on
both sides: uint8 images and VisDrone-like targets (many small boxes).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Optional

import torch

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
