"""A small-object aerial-looking dataset generated from a seed: the project's default data, no download.

Textured backgrounds (grass/soil/asphalt with fields, roads, buildings and blobs), many small objects
of five classes with distinctive shapes and colours (most under 32x32 px, a few large), scale variety
by a per-image "altitude", trees drawn over some objects (occlusion), unlabelled clutter. Image ``i`` of
a split depends only on ``(seed, split, i)``, so the same settings always give the same bytes.

Layout: ``DIR/images/{train,val}/*.jpg`` and ``DIR/labels/{train,val}/*.txt`` (YOLO), and a marker
``DIR/complete.json`` written last: a set without it (or made with other settings) is regenerated.
The generator only writes into a folder it owns: a new or empty one, which it marks with
``DIR/GENERATED.txt`` (the generator's own text) before writing anything. Only that mark proves ownership:
a folder holding other files, even a ``complete.json`` of its own, is refused; a regeneration deletes only
files with the generator's own names.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Union

import cv2
import numpy as np

from utils.boxes import xyxy_to_cxcywh
from utils.data.yolo_txt import LABEL_FORMAT, yolo_txt
from utils.files import atomic_write_text, checked_imwrite

logger = logging.getLogger(__name__)

CLASS_NAMES = ("car", "truck", "pedestrian", "bicycle", "bus")
# How often each class is drawn: cars and pedestrians dominate, as in drone traffic scenes.
CLASS_FREQUENCIES = np.array([0.4, 0.12, 0.25, 0.15, 0.08])
MARKER = "complete.json"
# Written first into a folder the generator takes over; only a folder with it (or a complete.json of an
# earlier generation) is ever cleaned or written to.
OWNER_MARKER = "GENERATED.txt"
OWNER_TEXT = ("This folder was made by utils/data/synthetic.py; its files are regenerated (deleted and "
              "rewritten) when the generate settings change. Do not keep other files here.\n")
JPEG_QUALITY = 92
# Objects per image, and the chance that one is drawn several times larger than usual.
OBJECTS_PER_IMAGE = (12, 36)
LARGE_OBJECT_PROB = 0.05
SPLIT_IDS = {"train": 0, "val": 1}
# Accepted settings: (smallest, largest) of each; the bounds keep a typo from filling a disk or hanging a run.
SETTING_RANGES = {"images": (1, 100_000), "val_images": (1, 100_000), "size": (32, 4096), "seed": (0, 2**63 - 1)}

# BGR palettes, chosen so that each class has its own look.
VEHICLE_COLOURS = np.array([[40, 40, 200], [200, 60, 30], [230, 230, 230], [30, 30, 30], [60, 160, 220],
                            [150, 150, 150]])
BUS_COLOURS = np.array([[30, 200, 240], [40, 40, 190], [240, 240, 240]])
SHIRT_COLOURS = np.array([[0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255], [255, 255, 255]])
GROUND_COLOURS = np.array([[70, 120, 80], [90, 140, 150], [110, 110, 110], [60, 100, 120]])


def _rect(length: float, width: float, offset: float = 0.0, lateral: float = 0.0) -> np.ndarray:
    """(4, 2) corners of an axis-aligned rectangle centred at (offset, lateral) in the object frame."""
    half_l, half_w = length / 2, width / 2
    return np.array([[-half_l, -half_w], [half_l, -half_w], [half_l, half_w], [-half_l, half_w]]) + (offset, lateral)


def _disc(radius: float, offset: float = 0.0) -> np.ndarray:
    """(8, 2) octagon approximating a disc."""
    angles = np.arange(8) * np.pi / 4 + np.pi / 8
    return np.stack((np.cos(angles), np.sin(angles)), 1) * radius + (offset, 0.0)


def _object_parts(class_id: int, rng: np.random.Generator) -> list[tuple[np.ndarray, tuple]]:
    """The coloured polygons of one object at scale 1, in its own frame (x along its length)."""
    if class_id == 0:  # car: bright body, dark windscreen, lighter roof
        length, width = rng.uniform(9, 14), rng.uniform(5, 7)
        body = VEHICLE_COLOURS[rng.integers(len(VEHICLE_COLOURS))]
        return [(_rect(length, width), body), (_rect(length * 0.2, width * 0.8, length * 0.18), (20, 20, 20)),
                (_rect(length * 0.3, width * 0.7, -length * 0.1), np.clip(body + 40, 0, 255))]
    if class_id == 1:  # truck: cab + long cargo box
        length, width = rng.uniform(18, 30), rng.uniform(7, 9)
        cargo = (rng.choice([200, 40]), rng.choice([200, 120]), 230)
        return [(_rect(length * 0.75, width, -length * 0.125), cargo),
                (_rect(length * 0.2, width * 0.9, length * 0.4), VEHICLE_COLOURS[rng.integers(3)])]
    if class_id == 2:  # pedestrian: shirt disc with a dark head
        radius = rng.uniform(1.6, 3.2)
        return [(_disc(radius), SHIRT_COLOURS[rng.integers(len(SHIRT_COLOURS))]), (_disc(radius * 0.5), (15, 15, 25))]
    if class_id == 3:  # bicycle: thin dark frame between two grey wheels
        length = rng.uniform(7, 11)
        return [(_rect(length, 1.6), (10, 10, 10)), (_disc(1.6, -length / 2 + 1.5), (90, 90, 90)),
                (_disc(1.6, length / 2 - 1.5), (90, 90, 90))]
    length, width = rng.uniform(30, 46), rng.uniform(9, 12)  # bus: long body with window rows
    body = BUS_COLOURS[rng.integers(len(BUS_COLOURS))]
    return [(_rect(length, width), body), (_rect(length * 0.85, width * 0.15, 0, -width * 0.3), (40, 30, 30)),
            (_rect(length * 0.85, width * 0.15, 0, width * 0.3), (40, 30, 30))]


def draw_object(image: np.ndarray, class_id: int, centre: tuple[float, float], scale: float,
                rng: np.random.Generator) -> np.ndarray:
    """Draw one object rotated at a random heading; returns its (4,) xyxy pixel box: the exact extent of
    the filled polygons (integer vertices; a vertex at pixel x covers [x, x + 1))."""
    angle = rng.uniform(0, np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    extent = np.array([np.inf, np.inf, -np.inf, -np.inf])
    for polygon, colour in _object_parts(class_id, rng):
        points = np.round(polygon * scale @ rotation.T + centre).astype(np.int32)  # (P, 2) pixels
        cv2.fillPoly(image, [points], tuple(int(c) for c in colour))
        extent = np.minimum(extent, [*points.min(0), np.inf, np.inf])
        extent = np.maximum(extent, [-np.inf, -np.inf, *(points.max(0) + 1)])
    height, width = image.shape[:2]
    return np.clip(extent, 0, [width, height, width, height])


def make_background(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) uint8 BGR ground: base colour, low-frequency tint, fields, roads, buildings, noise."""
    ground = GROUND_COLOURS[rng.integers(len(GROUND_COLOURS))].astype(np.float32)
    tint = cv2.resize(rng.normal(0, 18, (6, 6, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    image = np.clip(ground + tint, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(1, 4)):  # fields: large tinted quadrilaterals
        corners = rng.integers(-size // 4, size + size // 4, (4, 2)).astype(np.int32)
        colour = np.clip(GROUND_COLOURS[rng.integers(len(GROUND_COLOURS))] + rng.integers(-25, 25, 3), 0, 255)
        cv2.fillPoly(image, [cv2.convexHull(corners)], tuple(int(c) for c in colour))
    for _ in range(rng.integers(1, 3)):  # roads with a dashed centre line
        start, end = rng.integers(0, size, 2), rng.integers(0, size, 2)
        direction = (end - start) / (np.linalg.norm(end - start) + 1e-6)
        start, end = (start - direction * size).astype(int), (end + direction * size).astype(int)
        cv2.line(image, tuple(map(int, start)), tuple(map(int, end)), (95, 95, 100), int(rng.integers(14, 30)))
        cv2.line(image, tuple(map(int, start)), tuple(map(int, end)), (200, 200, 200), 1)
    for _ in range(rng.integers(0, 4)):  # buildings: large plain roofs
        corner = rng.integers(0, size, 2)
        extent = rng.integers(25, 70, 2)
        roof = tuple(int(c) for c in rng.integers(60, 180, 3))
        cv2.rectangle(image, tuple(map(int, corner)), tuple(map(int, corner + extent)), roof, -1)
    noise = rng.normal(0, 6, (size, size, 1)).astype(np.float32)
    return np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def _draw_clutter(image: np.ndarray, rng: np.random.Generator, count: int, trees: bool) -> None:
    """Unlabelled blobs (random colours) or trees (dark green discs) that may cover objects."""
    size = image.shape[0]
    for _ in range(count):
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        if trees:
            colour = (int(rng.integers(20, 50)), int(rng.integers(70, 110)), int(rng.integers(20, 50)))
            cv2.circle(image, centre, int(rng.integers(4, 12)), colour, -1)
        else:
            axes = (int(rng.integers(2, 10)), int(rng.integers(2, 10)))
            cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360,
                        tuple(int(c) for c in rng.integers(0, 255, 3)), -1)


def make_image(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One scene -> (image (size, size, 3) uint8 BGR, labels (n, 5) ``[class, x1, y1, x2, y2]`` pixels)."""
    image = make_background(size, rng)
    _draw_clutter(image, rng, int(rng.integers(5, 20)), trees=False)
    altitude_scale = rng.uniform(0.7, 1.5)
    labels = []
    for _ in range(rng.integers(*OBJECTS_PER_IMAGE)):
        class_id = int(rng.choice(len(CLASS_NAMES), p=CLASS_FREQUENCIES))
        scale = altitude_scale * (rng.uniform(2.5, 4.0) if rng.random() < LARGE_OBJECT_PROB else 1.0)
        centre = tuple(rng.uniform(0, size, 2))
        box = draw_object(image, class_id, centre, scale, rng)
        if box[2] - box[0] >= 2 and box[3] - box[1] >= 2:
            labels.append([class_id, *box])
    _draw_clutter(image, rng, int(rng.integers(0, 6)), trees=True)
    return image, np.array(labels, np.float32).reshape(-1, 5)


def write_sample(image: np.ndarray, labels: np.ndarray, image_path: Path, label_path: Path) -> None:
    """Save a JPEG and its YOLO label file; ``labels`` (m, 5) float32 ``[class, x1, y1, x2, y2]`` pixels."""
    height, width = image.shape[:2]
    # cxcywh in float32, normalised in float64: the label files this generator has always written
    boxes_n = xyxy_to_cxcywh(labels[:, 1:5]) / np.array([width, height, width, height], np.float64)  # (m, 4)
    checked_imwrite(image_path, image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    atomic_write_text(label_path, yolo_txt(labels[:, 0], boxes_n, LABEL_FORMAT))


def check_settings(settings: dict) -> None:
    """Refuse (ValueError, one line) a setting that is not a whole number within SETTING_RANGES."""
    for key, (low, high) in SETTING_RANGES.items():
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"synthetic dataset setting {key} must be a whole number from {low} to {high}, "
                             f"got {value!r}")


def is_owned(out: Path) -> bool:
    """True when ``out`` holds the generator's own mark (its exact text: a file a user or another tool wrote
    under that name does not count)."""
    try:
        return (out / OWNER_MARKER).read_text(encoding="utf-8") == OWNER_TEXT
    except (OSError, UnicodeDecodeError):
        return False


def claim_folder(out: Path) -> None:
    """Make ``out`` the generator's own folder, or refuse (ValueError) when it holds files not made here."""
    if is_owned(out):
        return
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"'generate' would write synthetic images into {out}, which already holds files it did "
                         f"not make (no {OWNER_MARKER} of the generator); point 'path' at a new or empty folder "
                         "(or remove the 'generate' key)")
    atomic_write_text(out / OWNER_MARKER, OWNER_TEXT)


def generate_dataset(out: Union[str, Path], images: int, val_images: int, size: int = 384, seed: int = 0) -> Path:
    """Write the train/val splits under ``out`` (skipped if a matching marker says they are complete).

    Raises ValueError when a setting is out of range (:func:`check_settings`) or ``out`` is not the
    generator's own folder (see :func:`claim_folder`).
    """
    out = Path(out)
    settings = {"images": images, "val_images": val_images, "size": size, "seed": seed,
                "names": list(CLASS_NAMES)}
    check_settings(settings)
    if dataset_is_complete(out, settings):
        return out
    claim_folder(out)
    (out / MARKER).unlink(missing_ok=True)
    logger.info("generating the synthetic dataset in %s (%d train, %d val images, %d px, seed %d)",
                out, images, val_images, size, seed)
    for split, count in (("train", images), ("val", val_images)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for path in [*(out / "images" / split).iterdir(), *(out / "labels" / split).iterdir()]:
            if re.fullmatch(rf"{split}_\d{{5,}}\.(jpg|txt)", path.name):  # an earlier generation's (our names)
                path.unlink()
        for index in range(count):
            rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
            image, labels = make_image(size, rng)
            name = f"{split}_{index:05d}"
            write_sample(image, labels, out / "images" / split / f"{name}.jpg", out / "labels" / split / f"{name}.txt")
    atomic_write_text(out / MARKER, json.dumps(settings))
    return out


def dataset_is_complete(out: Union[str, Path], settings: dict) -> bool:
    """True when ``out`` is the generator's own folder and holds a finished generation made with exactly these
    settings."""
    marker = Path(out) / MARKER
    if not is_owned(Path(out)):
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")) == settings
    except (OSError, ValueError):
        return False
