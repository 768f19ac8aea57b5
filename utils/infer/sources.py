"""Where detect.py reads frames from: images, folders, globs, list files, videos, numbered image
sequences, webcams and streams, all yielding full-resolution BGR frames.

Letterboxing and slicing happen later (utils/infer/predictor.py), so a source only reads. Unsupported or
unreadable files are reported once each and skipped; a source that names nothing usable is an error.
"""

from __future__ import annotations

import glob
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np

from utils.files import IMG_FORMATS, VID_FORMATS, is_image_file, is_video_file, read_image
from utils.log import log_once

logger = logging.getLogger(__name__)

STREAM_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "tcp://")
# printf-style frame counter in a numbered image sequence, e.g. img_%04d.png
_SEQUENCE_FIELD = re.compile(r"%0?(\d*)d")


@dataclass
class Frame:
    """One frame to detect on.

    Attributes:
        path: the file (or stream) it came from.
        image: (H, W, 3) uint8 BGR at full resolution.
        index: frame number within a video/stream (0 for still images).
        is_video: True for frames of a video or stream (outputs go to a video file).
        frame_count: frames in the video (0 if unknown or a still image).
        fps: the video's frame rate (0 for still images).
    """

    path: str
    image: np.ndarray
    index: int = 0
    is_video: bool = False
    frame_count: int = 0
    fps: float = 0.0


def is_stream(source: str) -> bool:
    """A webcam index ('0') or a stream URL."""
    return source.isdigit() or source.lower().startswith(STREAM_PREFIXES)


def list_files(source: Union[str, Path]) -> list[Path]:
    """Expand a file, folder, glob, list .txt file or numbered sequence pattern into media files.

    Raises FileNotFoundError when the source names nothing that exists, ValueError when it names
    no image or video. Missing entries of a list file and non-media files in a folder are logged and skipped.
    """
    text = str(source)
    path = Path(text)
    if _SEQUENCE_FIELD.search(path.name):
        candidates = _sequence_files(path)
    elif any(char in text for char in "*?[") and not path.exists():  # an existing name like photo[1].jpg is no glob
        candidates = [Path(p) for p in sorted(glob.glob(text, recursive=True)) if Path(p).is_file()]
    elif path.is_dir():
        candidates = sorted(p for p in path.iterdir() if p.is_file())
    elif path.suffix.lower() == ".txt" and path.is_file():
        candidates = _list_file_entries(path)
    elif path.is_file():
        if not (is_image_file(path) or is_video_file(path)):
            raise ValueError(f"{path}: unsupported file type {path.suffix!r}; images: {IMG_FORMATS}, "
                             f"videos: {VID_FORMATS}, or a .txt list of paths")
        return [path]
    else:
        raise FileNotFoundError(f"--source {text!r} does not exist (file, folder, glob, list .txt, "
                                "sequence like img_%04d.png, webcam index or stream URL)")
    media = []
    for candidate in candidates:
        if is_image_file(candidate) or is_video_file(candidate):
            media.append(candidate)
        else:
            log_once(logger, logging.WARNING, "skipping %s: not an image or video file", candidate)
    if not media:
        raise ValueError(f"--source {text!r}: no images or videos found (images: {IMG_FORMATS}, videos: {VID_FORMATS})")
    return media


def _sequence_files(pattern: Path) -> list[Path]:
    """Files matching a printf-style pattern (img_%04d.png), ordered by their frame number."""
    field = _SEQUENCE_FIELD.search(pattern.name)
    width = field.group(1)
    number = rf"\d{{{int(width)}}}" if width else r"\d+"
    name_regex = re.compile(re.escape(pattern.name[: field.start()]) + f"({number})"
                            + re.escape(pattern.name[field.end() :]) + "$")
    folder = pattern.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"--source {str(pattern)!r}: folder {folder} does not exist")
    numbered = [(int(m.group(1)), p) for p in folder.iterdir() if (m := name_regex.match(p.name))]
    return [p for _, p in sorted(numbered)]


def _list_file_entries(list_file: Path) -> list[Path]:
    """Paths in a .txt list (one per line; relative paths are relative to the list's folder)."""
    entries = []
    with open(list_file, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            entry = Path(line) if Path(line).is_absolute() else list_file.parent / line
            if entry.is_file():
                entries.append(entry)
            else:
                logger.warning("%s:%d: %s not found, skipped", list_file, line_number, line)
    return entries


def iterate_frames(source: Union[str, Path], vid_stride: int = 1, files: Optional[Sequence[Path]] = None
                   ) -> Iterator[Frame]:
    """Frames of any source, in order; a video or stream yields every ``vid_stride``-th frame.

    ``files``: the source's :func:`list_files`, when the caller has listed it already.

    Raises ValueError for a stream or webcam that cannot be opened, or vid_stride < 1.
    """
    if vid_stride < 1:
        raise ValueError(f"--vid-stride must be >= 1, got {vid_stride}")
    text = str(source)
    if is_stream(text):
        yield from _read_video(text, vid_stride, stream=True)
        return
    for path in list_files(text) if files is None else files:
        if is_video_file(path):
            yield from _read_video(str(path), vid_stride, stream=False)
            continue
        image = read_image(path)
        if image is None:
            log_once(logger, logging.WARNING, "skipping %s: unreadable image", path)
            continue
        yield Frame(path=str(path), image=image)


def _open_capture(source: str, stream: bool) -> Optional[cv2.VideoCapture]:
    capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if capture.isOpened():
        return capture
    capture.release()
    if stream:
        raise ValueError(f"could not open stream/webcam {source!r} (check the index or URL and that OpenCV "
                         "was built with the needed backend)")
    log_once(logger, logging.WARNING, "skipping %s: OpenCV cannot open this video", source)
    return None


def _read_video(source: str, vid_stride: int, stream: bool) -> Iterator[Frame]:
    capture = _open_capture(source, stream)
    if capture is None:
        return
    frame_count = 0 if stream else max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    index = 0
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                break
            if index % vid_stride == 0:
                yield Frame(path=source, image=image, index=index, is_video=True, frame_count=frame_count, fps=fps)
            index += 1
    finally:
        capture.release()
    if index == 0:
        log_once(logger, logging.WARNING, "skipping %s: no frame could be decoded", source)
