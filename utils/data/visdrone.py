"""Official VisDrone2019-DET annotations: reading them, and turning them into YOLO labels.

An annotation line is ``x,y,w,h,score,category,truncation,occlusion`` (pixels, top-left origin; some
files end lines with a comma). ``score`` 0 marks boxes the evaluation ignores; category 0 is an
"ignored region" and 11 "others". Training labels keep categories 1..10 with score 1 (YOLO class =
category - 1); the annotation files are never modified, so evaluation reads the ignore information
from them through :func:`read_annotation`.

The converter writes a split's ``labels/`` all or nothing: into a temporary folder beside it, renamed into
place once every file converted. It only ever replaces its own earlier output, which it knows by the
marker it leaves inside (LABELS_MARKER, with the sha256 of each file it wrote); a ``labels`` that is a
link (e.g. to ``annotations``) or holds any other file is refused before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from utils.boxes import clip_boxes, ltwh_to_xyxy, xyxy_to_cxcywhn
from utils.data.scan import check_image
from utils.data.yolo_txt import LABEL_FORMAT, yolo_txt
from utils.files import OutputWriteError, atomic_write_text, is_image_file

logger = logging.getLogger(__name__)

CATEGORY_NAMES = ("ignored-region", "pedestrian", "people", "bicycle", "car", "van", "truck", "tricycle",
                  "awning-tricycle", "bus", "motor", "others")
IGNORED_REGION, OTHERS = 0, 11
ANNOTATION_COLUMNS = 8
# A box with at least this fraction of its area inside ignored regions is dropped (dropObjectsInIgr.m).
DROP_FRACTION = 0.5
# Written inside labels/ by the converter: the names and sha256 of the files it wrote there.
LABELS_MARKER = ".visdrone2yolo.json"


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
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text annotation file") from None
    for line_number, line in enumerate(text.splitlines(), 1):
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
    boxes = ltwh_to_xyxy(table[:, :4].astype(np.float64))  # (n, 4)
    return VisDroneAnnotation(boxes, table[:, 4], table[:, 5], table[:, 6], table[:, 7])


def ignored_regions(image_path: Union[str, Path]) -> np.ndarray:
    """(r, 4) xyxy pixels: the ignored regions (category 0) of the official annotation file beside an image
    (:func:`annotation_path`); none when there is no such file (a dataset that is not VisDrone's layout)."""
    path = annotation_path(image_path)
    if not path.is_file():
        return np.zeros((0, 4))
    annotation = read_annotation(path)
    return annotation.boxes[annotation.category == IGNORED_REGION]


def _matlab_round(values: np.ndarray) -> np.ndarray:
    """MATLAB ``round``: halves away from zero (numpy rounds them to even)."""
    return np.sign(values) * np.floor(np.abs(values) + 0.5)


def ignored_fraction(boxes_xywh: np.ndarray, regions_xywh: np.ndarray, height: int, width: int) -> np.ndarray:
    """dropObjectsInIgr.m: the fraction of each box's rounded area covered by the ignored-region map.

    Args:
        boxes_xywh: (N, 4) [left, top, w, h] pixels; regions_xywh: (R, 4) ignored regions, same format.
        height, width: image size in pixels (the map's size).
    Returns:
        (N,) covered fraction (the toolkit's integral-image sum, 1-based inclusive ranges, divided by w * h).
        The map's integral image is evaluated exactly on the cells between region edges (no pixel array).
    """
    painted = np.maximum(1, np.round(regions_xywh)).astype(np.int64)  # (R, 4), 1-based as the toolkit
    row_start, row_end = painted[:, 1] - 1, np.minimum(height, painted[:, 1] + painted[:, 3])  # 0-based [start, end)
    col_start, col_end = painted[:, 0] - 1, np.minimum(width, painted[:, 0] + painted[:, 2])
    row_edges, col_edges = np.unique(np.r_[row_start, row_end]), np.unique(np.r_[col_start, col_end])
    # The map is constant on the cells between consecutive region edges: (Ry, Cx) painted flags.
    row_cover = (row_start[:, None] <= row_edges[None, :-1]) & (row_end[:, None] >= row_edges[None, 1:])  # (R, Ry)
    col_cover = (col_start[:, None] <= col_edges[None, :-1]) & (col_end[:, None] >= col_edges[None, 1:])  # (R, Cx)
    cells = (row_cover[:, :, None] & col_cover[:, None, :]).any(0).astype(np.float64)  # (Ry, Cx)

    def summed(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The toolkit's intIgrMap(y, x) (1-based): painted pixels in rows 1..y, columns 1..x, for (N,) points."""
        rows_in = (np.minimum(y[:, None], row_edges[None, 1:]) - row_edges[None, :-1]).clip(min=0)  # (N, Ry)
        cols_in = (np.minimum(x[:, None], col_edges[None, 1:]) - col_edges[None, :-1]).clip(min=0)  # (N, Cx)
        return ((rows_in @ cells) * cols_in).sum(1)

    pos = np.maximum(1, _matlab_round(boxes_xywh)).astype(np.int64)
    x, y = np.clip(pos[:, 0], 1, width), np.clip(pos[:, 1], 1, height)
    w, h = pos[:, 2], pos[:, 3]
    x2, y2 = np.minimum(width, x + w), np.clip(y + h, 1, height)
    covered = summed(y, x) + summed(y2, x2) - summed(y, x2) - summed(y2, x)
    return covered / (w * h)


def annotation_path(image_path: Union[str, Path]) -> Path:
    """``<split>/images/x.jpg`` -> ``<split>/annotations/x.txt``."""
    image_path = Path(image_path)
    return image_path.parent.parent / "annotations" / f"{image_path.stem}.txt"


def to_yolo_labels(annotation: VisDroneAnnotation, width: int, height: int) -> np.ndarray:
    """Training labels of one image -> (m, 5) float64 ``[class, cx, cy, w, h]`` normalised, class 0..9.

    Boxes reaching past the image are clipped to it; boxes with no area left are dropped.
    """
    keep = annotation.object_mask
    boxes = clip_boxes(annotation.boxes[keep], height, width)  # (m, 4) xyxy, a copy: boolean indexing copies
    labels = np.c_[annotation.category[keep] - 1, xyxy_to_cxcywhn(boxes, width, height)]  # (m, 5) float64
    return labels[(labels[:, 3] > 0) & (labels[:, 4] > 0)]


def split_dirs(src: Union[str, Path]) -> list[Path]:
    """The VisDrone split folders under ``src``: ``src`` itself if it holds ``images/`` and ``annotations/``,
    else each direct subfolder that does (e.g. ``VisDrone2019-DET-train``)."""
    src = Path(src)
    candidates = [src] + sorted(p for p in src.iterdir() if p.is_dir()) if src.is_dir() else []
    found = [p for p in candidates if (p / "images").is_dir() and (p / "annotations").is_dir()]
    if not found:
        raise FileNotFoundError(f"no VisDrone split (a folder with images/ and annotations/) in {src}")
    return found[:1] if found[0] == src else found


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _written_by_us(labels_dir: Path) -> dict[str, str]:
    """The files our marker in ``labels_dir`` lists (name -> sha256); {} without a readable marker."""
    try:
        files = json.loads((labels_dir / LABELS_MARKER).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return files if isinstance(files, dict) else {}


def check_labels_folder(split_dir: Union[str, Path]) -> None:
    """Refuse (ValueError, one line) to write ``split_dir/labels`` unless it is absent, empty or wholly our own
    earlier output: a link (e.g. to ``annotations``, whose official files it would overwrite) or a folder
    holding any file the converter did not write, unchanged, is left alone."""
    labels_dir = Path(split_dir) / "labels"
    if labels_dir.is_symlink():
        target = os.path.realpath(labels_dir)
        same = [name for name in ("annotations", "images") if target == os.path.realpath(Path(split_dir) / name)]
        what = f"the {same[0]} folder" if same else target
        raise ValueError(f"{labels_dir} is a link to {what}; the converter writes a real labels folder and never "
                         "writes through a link: remove the link (rm, not rm -r) and run it again")
    if not labels_dir.exists():
        return
    if not labels_dir.is_dir():
        raise ValueError(f"{labels_dir} exists and is not a folder; move it away and run the converter again")
    ours = _written_by_us(labels_dir)
    foreign = [path.name for path in sorted(labels_dir.iterdir()) if path.name != LABELS_MARKER and
               not (path.is_file() and not path.is_symlink() and ours.get(path.name) == _sha256(path))]
    if foreign:
        raise ValueError(f"{labels_dir} holds {len(foreign)} file(s) the converter did not write (or that changed "
                         f"since), e.g. {foreign[0]}; it overwrites only its own output: move them away first")


def convert_split(split_dir: Union[str, Path]) -> dict[str, int]:
    """Write ``labels/*.txt`` for every image of one split from its annotations, all or nothing; returns counts
    (images, objects written, ignored boxes, images without annotation file).

    Raises:
        ValueError: ``labels`` is not ours to write (:func:`check_labels_folder`), or an annotation line or an
            image is bad (naming the file and line); ``labels`` is then left as it was.
    """
    split_dir = Path(split_dir)
    check_labels_folder(split_dir)
    staging = Path(tempfile.mkdtemp(prefix=".labels.", suffix=".tmp", dir=split_dir))
    try:
        counts = _convert_into(split_dir, staging)
        _replace_labels(split_dir / "labels", staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # our own temporary folder; already gone after a success
    logger.info("%s: %s", split_dir, ", ".join(f"{key} {value}" for key, value in counts.items()))
    return counts


def _convert_into(split_dir: Path, out: Path) -> dict[str, int]:
    """Write the labels of every image of ``split_dir`` into ``out``, plus our marker listing them."""
    counts = {"images": 0, "objects": 0, "ignored": 0, "no_annotation": 0}
    written: dict[str, str] = {}
    for image_path in sorted(p for p in (split_dir / "images").iterdir() if is_image_file(p)):
        source = annotation_path(image_path)
        if not source.is_file():
            logger.warning("%s: no annotation file %s, no label written", image_path, source)
            counts["no_annotation"] += 1
            continue
        annotation = read_annotation(source)
        try:
            width, height = check_image(str(image_path))
        except (OSError, ValueError, SyntaxError) as error:
            raise ValueError(f"{image_path}: unreadable image ({error}); fix or remove it and run again") from None
        labels = to_yolo_labels(annotation, width, height)
        name = f"{image_path.stem}.txt"
        text = yolo_txt(labels[:, 0], labels[:, 1:], LABEL_FORMAT)
        written[name] = _sha256(atomic_write_text(out / name, text))
        counts["images"] += 1
        counts["objects"] += len(labels)
        counts["ignored"] += int(annotation.ignore_mask.sum())
    atomic_write_text(out / LABELS_MARKER, json.dumps({"written_by": "data/scripts/visdrone2yolo.py",
                                                       "files": written}, indent=0))
    return counts


def _replace_labels(labels_dir: Path, staging: Path) -> None:
    """Rename ``staging`` to ``labels_dir``; an existing ``labels_dir`` (checked to be ours) is set aside first and
    its files, all ours, deleted after."""
    if not labels_dir.exists():
        staging.rename(labels_dir)
        return
    check_labels_folder(labels_dir.parent)  # again, right before touching it
    old = Path(tempfile.mkdtemp(prefix=".labels.", suffix=".old", dir=labels_dir.parent))
    try:
        os.replace(labels_dir, old / "labels")
        try:
            staging.rename(labels_dir)
        except OSError:
            os.replace(old / "labels", labels_dir)  # put the previous labels back
            raise
    except OSError as error:
        old.rmdir()
        raise OutputWriteError(labels_dir, error) from error
    for path in (old / "labels").iterdir():  # every one was listed in our marker, with its hash
        path.unlink()
    (old / "labels").rmdir()
    old.rmdir()
