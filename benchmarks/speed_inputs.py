"""The shared inputs of speed_vs_yolov5.py, written once to a folder both sides read.

Seeded and synthetic, so both implementations see byte-identical data: a training batch with many
small boxes (VisDrone-like), an NMS candidate tensor shaped like a 640 px YOLOv5 output, predictions
and labels for the metrics, and a YOLO-format image folder (JPEGs at VisDrone's resolutions) for the
mosaic loaders.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch

# VisDrone-DET frame sizes (w, h) used for the loader images.
FRAME_SIZES = ((1360, 765), (1920, 1080), (1400, 1050))
BOXES_PER_IMAGE = 60  # VisDrone averages ~54 objects per image
LOADER_IMAGES = 32
NMS_OBJECTS, NMS_ROWS_PER_OBJECT = 300, 10  # 3000 candidates above the confidence threshold
# val.py's and detect.py's defaults (both implementations share them).
NMS_SETTINGS = {"val": {"conf_thres": 0.001, "iou_thres": 0.6, "max_det": 300, "multi_label": True},
                "detect": {"conf_thres": 0.25, "iou_thres": 0.45, "max_det": 1000, "multi_label": False}}


def small_boxes(rng: np.random.Generator, num: int, width: float, height: float) -> np.ndarray:
    """(num, 4) cxcywh pixels: sizes log-uniform in 4..96 px (mostly < 32 px), inside the frame."""
    size = np.exp(rng.uniform(np.log(4), np.log(96), (num, 2)))  # (num, 2)
    centre = rng.uniform(size / 2, np.array([width, height]) - size / 2)  # (num, 2)
    return np.concatenate([centre, size], 1)


def write_train_batch(folder: Path, batch: int, imgsz: int, nc: int, rng: np.random.Generator) -> None:
    """train_batch.pt: uint8 images (B, 3, S, S) and targets (M, 6) [image, class, cx, cy, w, h] normalised."""
    images = torch.from_numpy(rng.integers(0, 256, (batch, 3, imgsz, imgsz), dtype=np.uint8))
    rows = []
    for index in range(batch):
        boxes = small_boxes(rng, BOXES_PER_IMAGE, imgsz, imgsz) / imgsz  # (n, 4) normalised
        classes = rng.integers(0, nc, (BOXES_PER_IMAGE, 1))
        rows.append(np.concatenate([np.full((BOXES_PER_IMAGE, 1), index), classes, boxes], 1))
    targets = torch.from_numpy(np.concatenate(rows).astype(np.float32))  # (M, 6)
    torch.save({"images": images, "targets": targets}, folder / "train_batch.pt")


def write_nms_candidates(folder: Path, num_rows: int, nc: int, rng: np.random.Generator) -> None:
    """nms_candidates.pt (1, N, 5 + nc) cxcywh pixels + sigmoid scores: clustered hits, near-zero background."""
    objects = small_boxes(rng, NMS_OBJECTS, 640, 640)  # (O, 4)
    hits = np.repeat(objects, NMS_ROWS_PER_OBJECT, 0)  # (O*R, 4)
    hits = hits + rng.normal(0, 0.1, hits.shape) * hits[:, [2, 3, 2, 3]]  # jitter relative to size
    background = small_boxes(rng, num_rows - len(hits), 640, 640)
    boxes = np.concatenate([hits, background])  # (N, 4)
    objectness = np.concatenate([rng.uniform(0.05, 0.95, len(hits)), rng.uniform(0, 0.001, len(background))])
    class_scores = rng.uniform(0, 0.3, (num_rows, nc))
    class_scores[np.arange(num_rows), rng.integers(0, nc, num_rows)] = rng.uniform(0.5, 1.0, num_rows)
    candidates = np.concatenate([boxes, objectness[:, None], class_scores], 1)[None].astype(np.float32)
    torch.save(torch.from_numpy(candidates), folder / "nms_candidates.pt")
    torch.save(NMS_SETTINGS, folder / "nms_settings.pt")


def write_metric_inputs(folder: Path, num_images: int, nc: int, rng: np.random.Generator) -> None:
    """metric_inputs.npz: labels (L, 6) [img, cls, xyxy], preds (P, 7) [img, xyxy, conf, cls] in 1920x1080 px.

    Per label a detection with probability 0.8 (box jittered by ~10% of its size, right class 90% of the
    time), plus 40 false positives per image: a mix of hits, misses and duplicates.
    """
    labels, preds = [], []
    for image in range(num_images):
        boxes = small_boxes(rng, BOXES_PER_IMAGE, 1920, 1080)
        xyxy = np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1)
        classes = rng.integers(0, nc, len(boxes))
        labels.append(np.column_stack([np.full(len(boxes), image), classes, xyxy]))
        found = rng.random(len(boxes)) < 0.8
        jittered = xyxy[found] + rng.normal(0, 0.1, (found.sum(), 4)) * boxes[found][:, [2, 3, 2, 3]]
        det_classes = np.where(rng.random(found.sum()) < 0.9, classes[found], rng.integers(0, nc, found.sum()))
        false_boxes = small_boxes(rng, 40, 1920, 1080)
        false_xyxy = np.concatenate([false_boxes[:, :2] - false_boxes[:, 2:] / 2,
                                     false_boxes[:, :2] + false_boxes[:, 2:] / 2], 1)
        det_xyxy = np.concatenate([jittered, false_xyxy])
        scores = np.concatenate([rng.uniform(0.2, 1.0, len(jittered)), rng.uniform(0.001, 0.6, 40)])
        det_classes = np.concatenate([det_classes, rng.integers(0, nc, 40)])
        preds.append(np.column_stack([np.full(len(det_xyxy), image), det_xyxy, scores, det_classes]))
    np.savez(folder / "metric_inputs.npz", preds=np.concatenate(preds).astype(np.float32),
             labels=np.concatenate(labels).astype(np.float32), num_images=num_images)


def write_loader_images(folder: Path, nc: int, rng: np.random.Generator) -> Path:
    """images/*.jpg + labels/*.txt (YOLO format) with textured backgrounds and filled small boxes."""
    image_dir, label_dir = folder / "images", folder / "labels"
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    for index in range(LOADER_IMAGES):
        width, height = FRAME_SIZES[index % len(FRAME_SIZES)]
        low_res = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
        image = cv2.resize(low_res, (width, height), interpolation=cv2.INTER_CUBIC)  # texture, realistic JPEG size
        boxes = small_boxes(rng, BOXES_PER_IMAGE, width, height)
        classes = rng.integers(0, nc, len(boxes))
        for cx, cy, w, h in boxes:
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            cv2.rectangle(image, (int(cx - w / 2), int(cy - h / 2)), (int(cx + w / 2), int(cy + h / 2)), color, -1)
        cv2.imwrite(str(image_dir / f"frame_{index:03d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        normalised = boxes / np.array([width, height, width, height])
        lines = [f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}" for cls, (cx, cy, w, h) in zip(classes, normalised)]
        (label_dir / f"frame_{index:03d}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return image_dir


def write_all(folder: Path, args: argparse.Namespace, nc: int) -> Path:
    """Write every shared input into ``folder``; returns the loader's image folder."""
    rng = np.random.default_rng(0)
    write_train_batch(folder, args.batch, args.img, nc, rng)
    write_nms_candidates(folder, args.nms_candidates, nc, rng)
    write_metric_inputs(folder, args.metric_images, nc, rng)
    return write_loader_images(folder / "loader", nc, rng)


def drain_loader(loader, num_batches: int) -> dict:
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
