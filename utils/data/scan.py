"""Finding a dataset's images, checking every image and label line once, and caching the result.

Bad input never stops a run: a corrupt image (or an unreadable label file) skips that image, a bad label
line is dropped, each is reported once with file, line and reason, and a summary counts
found/missing/empty/corrupt. The only file ever written is the cache (an ``.npz`` read with
``allow_pickle=False``, keyed by a hash of the file list with sizes and mtimes): ``labels/<split>.npz.cache``
beside a labels folder (YOLOv5's own ``<split>.cache`` there is never touched), or inside a flat folder
whose labels sit next to its images; an unlabelled folder gets none. A damaged cache is reported and rebuilt.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from utils.data.label_check import parse_label_text
from utils.files import OutputWriteError, atomic_open, image_header_size, is_image_file

logger = logging.getLogger(__name__)

# Bump when the cache layout or the checks change, so old caches are rebuilt.
CACHE_VERSION = "2"  # 2: polygon lines read as boxes, boxes inside the image kept exact
CACHE_SUFFIX = ".npz.cache"  # not YOLOv5's ".cache", which a user's dataset may hold
# Smallest usable image side in pixels.
MIN_IMAGE_SIDE = 2
JPEG_END = b"\xff\xd9"
# The EXIF orientation tag, and its values that rotate by 90 degrees (width and height swap when displayed).
EXIF_ORIENTATION = 0x0112
EXIF_TRANSPOSED = (5, 6, 7, 8)

PathLike = Union[str, Path]


@dataclass
class ScanResult:
    """The usable part of a dataset: images, their (n, 5) ``[class, cx, cy, w, h]`` normalised labels and
    (N, 2) ``[w, h]`` original sizes, plus what was found wrong."""

    im_files: list[str]
    labels: list[np.ndarray]
    shapes: np.ndarray
    messages: list[str] = field(default_factory=list)
    found: int = 0
    missing: int = 0
    empty: int = 0
    corrupt: int = 0

    def summary(self) -> str:
        return f"found {self.found}, missing {self.missing}, empty {self.empty}, corrupt {self.corrupt}"


def list_image_files(source: Union[PathLike, list[PathLike]], prefix: str = "") -> list[str]:
    """Image paths from a directory (recursive, following links to folders), a ``.txt`` list file (relative lines
    are relative to the file's folder), an image file, a glob pattern, or a list of these; sorted, without
    duplicates. Files named in a list are checked later by the scan (a FIFO or device there is skipped then)."""
    sources = source if isinstance(source, (list, tuple)) else [source]
    files: list[str] = []
    for item in sources:
        item = Path(item)
        if item.is_dir():
            files += walk_image_files(item)
        elif item.is_file() and item.suffix.lower() == ".txt":
            lines = item.read_text(encoding="utf-8").splitlines()
            files += [str(item.parent / line.strip()) for line in lines if line.strip()]
        elif item.is_file():
            files.append(str(item))
        elif item.exists():
            raise ValueError(f"{prefix}{item} is neither a folder nor a regular file (a FIFO or device?)")
        elif glob.has_magic(str(item)):
            files += [p for p in glob.glob(str(item), recursive=True) if is_image_file(p) and os.path.isfile(p)]
        else:
            raise FileNotFoundError(f"{prefix}{item} does not exist (expected a directory, a .txt list of "
                                    "images, an image or a glob pattern)")
    files = sorted({os.path.abspath(f) for f in files if is_image_file(f)})
    if not files:
        raise FileNotFoundError(f"{prefix}no images found in {[str(s) for s in sources]}")
    return files


def walk_image_files(folder: Path) -> list[str]:
    """Regular image files under ``folder``. Links to folders are followed, as YOLOv5's recursive glob follows
    them, but each real folder is listed once, under its own path when it lies in ``folder`` (where its labels
    are): a link loop (``a/loop -> a``) ends, and no image is listed twice."""
    in_tree = {os.path.realpath(root) for root, _, _ in os.walk(folder)}  # the folders reached without links
    files, seen = [], set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        links = {d for d in dirs if os.path.islink(os.path.join(root, d))}
        dirs[:] = sorted(d for d in dirs if d not in links or os.path.realpath(os.path.join(root, d)) not in in_tree)
        files += [path for name in names if is_image_file(name) and os.path.isfile(path := os.path.join(root, name))]
    return files


def image_to_label_path(image_path: str) -> str:
    """``.../images/x.jpg`` -> ``.../labels/x.txt`` (last ``images`` folder); else ``x.txt`` beside it."""
    parts = Path(image_path).with_suffix(".txt").parts
    if "images" in parts:
        last = len(parts) - 1 - parts[::-1].index("images")
        parts = parts[:last] + ("labels",) + parts[last + 1:]
    return str(Path(*parts))


def check_image(path: str) -> tuple[int, int]:
    """(width, height) of an image as displayed (EXIF orientation applied, as :func:`read_image` reads it)
    after making sure it decodes; raises ValueError or OSError saying why.

    The header is checked first (a non-regular file or a decompression bomb is refused before any decoding),
    then Pillow's verify (fast). A JPEG that does not end with its end-of-image marker is decoded in full:
    bytes after the marker are harmless, a cut file is not.
    """
    from PIL import Image

    image_header_size(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size was checked just above
        with Image.open(path) as image:
            image.verify()
            width, height = image.size
            image_format = image.format
        with Image.open(path) as image:  # verify() leaves the image unusable; reopen for the EXIF tags
            if image.getexif().get(EXIF_ORIENTATION) in EXIF_TRANSPOSED:
                width, height = height, width
            if image_format == "JPEG" and not _ends_with_jpeg_marker(path):
                image.load()  # raises OSError ("image file is truncated") for a cut file
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ValueError(f"image size {width}x{height} is too small")
    return width, height


def _ends_with_jpeg_marker(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-2, os.SEEK_END)
        return f.read() == JPEG_END


def _scan_one(image_path: str, label_path: str, nc: Optional[int]) -> tuple[str, object, np.ndarray, list[str]]:
    """Check one image and its label file -> (status, (w, h) or None, labels (n, 5), messages)."""
    no_labels = np.zeros((0, 5), np.float32)
    try:
        size = check_image(image_path)
    except (OSError, ValueError, SyntaxError) as error:
        return "corrupt", None, no_labels, [f"{image_path}: corrupt image skipped ({error})"]
    if not os.path.isfile(label_path):
        return "missing", size, no_labels, [f"{label_path}: no label file, image used without objects"]
    try:
        with open(label_path, encoding="utf-8-sig") as f:  # -sig: a UTF-8 BOM (Windows editors) is dropped
            text = f.read()
    except (OSError, UnicodeDecodeError) as error:
        return "corrupt", None, no_labels, [f"{label_path}: unreadable label file, image skipped ({error})"]
    labels, messages = parse_label_text(text, label_path, nc)
    return ("found" if len(labels) else "empty"), size, labels, messages


def files_hash(paths: list[str], nc: Optional[int]) -> str:
    """A hash of paths, sizes and modification times (and nc, which the checks depend on)."""
    digest = hashlib.sha256(f"{CACHE_VERSION}|{nc}".encode())
    for path in paths:
        try:
            stat = os.stat(path)
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        except OSError:
            digest.update(f"{path}|absent".encode())
    return digest.hexdigest()


def scan_dataset(im_files: list[str], nc: Optional[int] = None, workers: int = 8, prefix: str = "") -> ScanResult:
    """Check all images and labels (or load the still-valid cache) and log each problem and the summary.

    Raises:
        ValueError: when no image is usable.
    """
    label_files = [image_to_label_path(f) for f in im_files]
    cache_path = cache_path_for(im_files[0], label_files[0])
    key = files_hash(im_files + label_files, nc)
    result = load_cache(cache_path, key, prefix)
    if result is None:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            rows = list(pool.map(_scan_one, im_files, label_files, [nc] * len(im_files)))
        result = _collect(im_files, rows)
        if result.missing == len(im_files):  # an unlabelled folder: one message, not one per image, no cache
            result.messages = [f"no label files (e.g. {label_files[0]}): all {len(im_files)} images used "
                               "without objects"]
        elif Path(label_files[0]).parent.is_dir():
            save_cache(cache_path, key, result, prefix)
    else:
        logger.info("%sloaded label cache %s", prefix, cache_path)
    for message in result.messages:
        logger.warning("%s%s", prefix, message)
    logger.info("%s%s images: %s", prefix, len(im_files), result.summary())
    if not result.im_files:
        raise ValueError(f"{prefix}no usable image among {len(im_files)} file(s) starting {im_files[0]}: "
                         f"{result.summary()}")
    return result


def _collect(im_files: list[str], rows: list[tuple]) -> ScanResult:
    result = ScanResult([], [], np.zeros((0, 2), np.int64))
    sizes = []
    for image_path, (status, size, labels, messages) in zip(im_files, rows):
        result.messages += messages
        setattr(result, status, getattr(result, status) + 1)
        if status != "corrupt":
            result.im_files.append(image_path)
            result.labels.append(labels)
            sizes.append(size)
    result.shapes = np.array(sizes, np.int64).reshape(-1, 2)
    return result


def cache_path_for(image_path: str, label_path: str) -> Path:
    """Where a scan's cache goes: ``labels/<split>.npz.cache`` beside a ``labels/<split>`` folder (YOLOv5's
    place, inside the dataset, but not YOLOv5's name: its pickled ``<split>.cache`` is the user's file), or
    inside a flat folder whose labels sit next to the images, never above it."""
    label_dir = Path(label_path).parent
    if label_dir == Path(image_path).parent:  # flat: x.jpg and x.txt side by side
        return label_dir / f"{label_dir.name}{CACHE_SUFFIX}"
    return label_dir.with_suffix(CACHE_SUFFIX)


def save_cache(cache_path: Path, key: str, result: ScanResult, prefix: str = "") -> None:
    """Write the scan as an ``.npz`` (atomic rename); an unwritable folder only costs a warning."""
    counts = np.array([len(labels) for labels in result.labels], np.int64)
    arrays = {
        "version": np.array(CACHE_VERSION), "key": np.array(key), "im_files": np.array(result.im_files, dtype=str),
        "shapes": result.shapes, "counts": counts, "messages": np.array(result.messages, dtype=str),
        "labels": np.concatenate(result.labels, 0) if result.labels else np.zeros((0, 5), np.float32),
        "stats": np.array([result.found, result.missing, result.empty, result.corrupt], np.int64),
    }
    try:  # a uniquely named temporary file, so two runs scanning one dataset never mix their writes
        with atomic_open(cache_path, "wb") as f:
            np.savez(f, **arrays)
    except OutputWriteError as error:  # the cache only saves time: a read-only dataset still trains
        logger.warning("%slabel cache not saved: %s", prefix, error)


def load_cache(cache_path: Path, key: str, prefix: str = "") -> Optional[ScanResult]:
    """The cached scan if the file exists, loads without pickle and matches ``key``; else None.

    A damaged cache (cut by a kill, empty, not an .npz) is reported in one line naming it, then rebuilt.
    """
    if not cache_path.is_file():
        return None
    try:
        with np.load(cache_path, allow_pickle=False) as cache:
            if str(cache["version"]) != CACHE_VERSION or str(cache["key"]) != key:
                return None
            offsets = np.cumsum(cache["counts"])[:-1]
            labels = list(np.split(cache["labels"].astype(np.float32), offsets)) if len(cache["counts"]) else []
            found, missing, empty, corrupt = (int(v) for v in cache["stats"])
            return ScanResult([str(f) for f in cache["im_files"]], labels, cache["shapes"],
                              [str(m) for m in cache["messages"]], found, missing, empty, corrupt)
    except Exception as error:  # np.load raises many types (EOFError, BadZipFile, ValueError, ...) on bad bytes
        logger.warning("%signoring unreadable label cache %s (%s: %s); rebuilding it", prefix, cache_path,
                       type(error).__name__, error)
        return None
