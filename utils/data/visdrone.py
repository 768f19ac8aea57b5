"""Official VisDrone2019-DET annotations: reading them, and turning them into YOLO labels.

An annotation line is ``x,y,w,h,score,category,truncation,occlusion`` (pixels, top-left origin; some
files end lines with a comma). ``score`` 0 marks boxes the evaluation ignores; category 0 is an
"ignored region" and 11 "others". Training labels keep categories 1..10 with score 1 (YOLO class =
category - 1); the annotation files are never modified, so evaluation reads the ignore information
from them through :func:`read_annotation`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from utils.data.scan import check_image
from utils.files import atomic_write_text, is_image_file

logger = logging.getLogger(__name__)

CATEGORY_NAMES = ("ignored-region", "pedestrian", "people", "bicycle", "car", "van", "truck", "tricycle",
                  "awning-tricycle", "bus", "motor", "others")
IGNORED_REGION, OTHERS = 0, 11
ANNOTATION_COLUMNS = 8


@dataclass(frozen=True)
class VisDroneAnnotation:
    """All boxes of one image. ``boxes`` (n, 4) float64 xyxy pixels; the rest (n,) int64."""

    boxes: np.ndarray
    score: np.ndarray
    category: np.ndarray
    truncation: np.ndarray
    occlusion: np.ndarray

    @property
    def object_mask(self) -> np.ndarray:
        """(n,) bool: evaluated objects, categories 1..10 with score 1 (the training labels)."""
        return (self.score != 0) & (self.category > IGNORED_REGION) & (self.category < OTHERS)

    @property
    def ignore_mask(self) -> np.ndarray:
        """(n,) bool: what the evaluation ignores: score 0 boxes, ignored regions (0) and others (11)."""
        return ~self.object_mask


def read_annotation(path: Union[str, Path]) -> VisDroneAnnotation:
    """Parse one official annotation txt. Raises ValueError naming ``path:line`` for a malformed line."""
    rows = []
    for line_number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        fields = line.strip().rstrip(",").split(",")
        if fields == [""]:
            continue
        if len(fields) != ANNOTATION_COLUMNS:
            raise ValueError(f"{path}:{line_number}: expected {ANNOTATION_COLUMNS} comma-separated values "
                             f"(x,y,w,h,score,category,truncation,occlusion), got {line.strip()!r}")
        try:
            rows.append([int(f) for f in fields])
        except ValueError:
            raise ValueError(f"{path}:{line_number}: non-integer value in {line.strip()!r}") from None
    table = np.array(rows, np.int64).reshape(-1, ANNOTATION_COLUMNS)
    xywh = table[:, :4].astype(np.float64)
    boxes = np.concatenate((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), 1)  # (n, 4) xyxy
    return VisDroneAnnotation(boxes, table[:, 4], table[:, 5], table[:, 6], table[:, 7])


def annotation_path(image_path: Union[str, Path]) -> Path:
    """``<split>/images/x.jpg`` -> ``<split>/annotations/x.txt``."""
    image_path = Path(image_path)
    return image_path.parent.parent / "annotations" / f"{image_path.stem}.txt"


def to_yolo_labels(annotation: VisDroneAnnotation, width: int, height: int) -> np.ndarray:
    """Training labels of one image -> (m, 5) float64 ``[class, cx, cy, w, h]`` normalised, class 0..9.

    Boxes reaching past the image are clipped to it; boxes with no area left are dropped.
    """
    keep = annotation.object_mask
    boxes = annotation.boxes[keep].copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    labels = np.empty((len(boxes), 5))
    labels[:, 0] = annotation.category[keep] - 1
    labels[:, 1] = (boxes[:, 0] + boxes[:, 2]) / 2 / width
    labels[:, 2] = (boxes[:, 1] + boxes[:, 3]) / 2 / height
    labels[:, 3] = (boxes[:, 2] - boxes[:, 0]) / width
    labels[:, 4] = (boxes[:, 3] - boxes[:, 1]) / height
    return labels[(labels[:, 3] > 0) & (labels[:, 4] > 0)]


def format_labels(labels: np.ndarray) -> str:
    """(m, 5) labels -> YOLO txt lines (class as integer, coordinates with 6 decimals)."""
    return "".join(f"{int(row[0])} {row[1]:.6f} {row[2]:.6f} {row[3]:.6f} {row[4]:.6f}\n" for row in labels)


def split_dirs(src: Union[str, Path]) -> list[Path]:
    """The VisDrone split folders under ``src``: ``src`` itself if it holds ``images/`` and ``annotations/``,
    else each direct subfolder that does (e.g. ``VisDrone2019-DET-train``)."""
    src = Path(src)
    candidates = [src] + sorted(p for p in src.iterdir() if p.is_dir()) if src.is_dir() else []
    found = [p for p in candidates if (p / "images").is_dir() and (p / "annotations").is_dir()]
    if not found:
        raise FileNotFoundError(f"no VisDrone split (a folder with images/ and annotations/) in {src}")
    return found[:1] if found[0] == src else found


def convert_split(split_dir: Union[str, Path]) -> dict[str, int]:
    """Write ``labels/*.txt`` for every image of one split from its annotations; returns counts
    (images, objects written, ignored boxes, images without annotation file)."""
    split_dir = Path(split_dir)
    (split_dir / "labels").mkdir(exist_ok=True)
    counts = {"images": 0, "objects": 0, "ignored": 0, "no_annotation": 0}
    for image_path in sorted(p for p in (split_dir / "images").iterdir() if is_image_file(p)):
        source = annotation_path(image_path)
        if not source.is_file():
            logger.warning("%s: no annotation file %s, no label written", image_path, source)
            counts["no_annotation"] += 1
            continue
        annotation = read_annotation(source)
        width, height = check_image(str(image_path))
        labels = to_yolo_labels(annotation, width, height)
        atomic_write_text(split_dir / "labels" / f"{image_path.stem}.txt", format_labels(labels))
        counts["images"] += 1
        counts["objects"] += len(labels)
        counts["ignored"] += int(annotation.ignore_mask.sum())
    logger.info("%s: %s", split_dir, ", ".join(f"{key} {value}" for key, value in counts.items()))
    return counts
