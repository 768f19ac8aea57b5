"""Checking the lines of one YOLO label file (``class cx cy w h``, normalised): keep the good, say why not.

A YOLOv5 segment line (``class x1 y1 x2 y2 x3 y3 ...``, a polygon of at least three points, normalised)
becomes the box of its points, with YOLOv5's float32 arithmetic; unlike YOLOv5, which reads a whole file as
polygons once one line is, each line is read by its own column count.

Decisions: a box whose edges overshoot the image by at most ``EDGE_TOLERANCE`` (float noise, a
converter's rounding, an annotation drawn a pixel past the border) is clipped; further out, the line is
dropped. Exact duplicate rows are removed. Blank lines are ignored.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from utils.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh

# Largest overshoot of a box edge past the image border that is clipped rather than rejected (fraction).
EDGE_TOLERANCE = 0.01
LABEL_COLUMNS = 5
# A line with more columns than this is a polygon (YOLOv5's test): class and at least three x y points.
MAX_BOX_COLUMNS = 6


def polygon_to_box(points: list[float]) -> list[float]:
    """Normalised polygon ``[x1, y1, x2, y2, ...]`` -> its box ``[cx, cy, w, h]``, computed in float32 as
    YOLOv5's segments2boxes and xyxy2xywh compute it (so the numbers are the same)."""
    xy = np.array(points, np.float32).reshape(-1, 2)  # (P, 2)
    x1, y1 = xy.min(0)
    x2, y2 = xy.max(0)
    two = np.float32(2)
    return [float((x1 + x2) / two), float((y1 + y2) / two), float(x2 - x1), float(y2 - y1)]


def parse_label_line(line: str, nc: Optional[int]) -> tuple[Optional[list[float]], str]:
    """One label line -> ([class, cx, cy, w, h], "") or (None, reason). Blank lines give (None, "")."""
    fields = line.split()
    if not fields:
        return None, ""
    polygon = len(fields) > MAX_BOX_COLUMNS
    if polygon and len(fields) % 2 == 0:
        return None, f"polygon with an odd number of coordinates ({len(fields) - 1}); expected class x1 y1 x2 y2 ..."
    if not polygon and len(fields) != LABEL_COLUMNS:
        return None, (f"expected {LABEL_COLUMNS} columns (class cx cy w h) or a polygon (class x1 y1 x2 y2 x3 y3 "
                      f"...), got {len(fields)}")
    try:
        values = [float(v) for v in fields]
    except ValueError:
        return None, f"non-number in {line.strip()!r}"
    if not all(math.isfinite(v) for v in values):
        return None, f"non-finite number in {line.strip()!r}"
    if polygon:
        values = values[:1] + polygon_to_box(values[1:])
    class_id, cx, cy, width, height = values
    if class_id < 0 or class_id != int(class_id):
        return None, f"class id {fields[0]} is not a non-negative integer"
    if nc is not None and class_id >= nc:
        return None, f"class id {int(class_id)} >= nc={nc}"
    if width <= 0 or height <= 0:
        return None, f"non-positive box size w={width:g} h={height:g}"
    edges = (cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2)
    if min(edges) < -EDGE_TOLERANCE or max(edges) > 1 + EDGE_TOLERANCE:
        return None, f"box {values[1:]} lies outside the image (edges must be within [0, 1])"
    return values, ""


def parse_label_text(text: str, label_path: str, nc: Optional[int]) -> tuple[np.ndarray, list[str]]:
    """All lines of one label file -> ((n, 5) float32 ``[class, cx, cy, w, h]`` clipped to the image,
    messages naming ``label_path:line`` and the reason for every dropped line)."""
    rows, messages = [], []
    for line_number, line in enumerate(text.splitlines(), 1):
        values, reason = parse_label_line(line, nc)
        if reason:
            messages.append(f"{label_path}:{line_number}: label line dropped: {reason}")
        elif values is not None:
            rows.append(values)
    labels = np.array(rows, np.float32).reshape(-1, LABEL_COLUMNS)
    if len(labels):
        corners = cxcywh_to_xyxy(labels[:, 1:])  # (n, 4)
        clipped = corners.clip(0, 1)
        overshoot = (clipped != corners).any(1)  # only these change: boxes inside keep their exact numbers
        labels[overshoot, 1:] = xyxy_to_cxcywh(clipped[overshoot])
        inside = (labels[:, 3] > 0) & (labels[:, 4] > 0)
        if not inside.all():
            messages.append(f"{label_path}: {int((~inside).sum())} box(es) with nothing inside the image dropped")
            labels = labels[inside]
        unique, first = np.unique(labels, axis=0, return_index=True)
        if len(unique) < len(labels):
            messages.append(f"{label_path}: {len(labels) - len(unique)} duplicate label row(s) removed")
            labels = labels[np.sort(first)]
    return labels, messages
