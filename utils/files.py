"""File-system helpers shared by the CLIs: the repository root, bare-name look-ups, media suffixes, run folders."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Union

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The repository root: where data/, models/ and runs/ live, whatever the current folder."""

IMG_FORMATS = ("bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm")
VID_FORMATS = ("asf", "avi", "gif", "m4v", "mkv", "mov", "mp4", "mpeg", "mpg", "ts", "wmv")


def is_image_file(path: Union[str, Path]) -> bool:
    return Path(path).suffix[1:].lower() in IMG_FORMATS


def is_video_file(path: Union[str, Path]) -> bool:
    return Path(path).suffix[1:].lower() in VID_FORMATS


def increment_path(path: Union[str, Path], exist_ok: bool = False, mkdir: bool = False) -> Path:
    """runs/train/exp -> runs/train/exp2, exp3, ... (the first free one) unless exist_ok."""
    path = Path(path)
    if path.exists() and not exist_ok:
        stem_match = re.match(r"^(.*?)(\d*)$", path.name)
        stem = stem_match.group(1) if stem_match else path.name
        siblings = [p.name for p in path.parent.glob(f"{stem}*")]
        numbers = [int(m.group(1)) for name in siblings if (m := re.fullmatch(rf"{re.escape(stem)}(\d+)", name))]
        path = path.with_name(f"{stem}{max(numbers + [1]) + 1}")
    if mkdir:
        path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_path(path: Union[str, Path], flag: str, search_dir: str = "") -> Path:
    """A file the user named, found as YOLOv5 finds it: as given, else under the repository root, else in the
    repository's ``search_dir`` (so ``--cfg yolov5s.yaml`` and ``--hyp hyp.VisDrone.yaml`` work from any folder).

    Raises FileNotFoundError naming the flag and the places looked in.
    """
    given = Path(path)
    candidates = [given, REPO_ROOT / given] + ([REPO_ROOT / search_dir / given] if search_dir else [])
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    where = f" (also looked in {REPO_ROOT / search_dir})" if search_dir else ""
    raise FileNotFoundError(f"{flag} {path} not found{where}")
