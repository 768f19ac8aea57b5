"""File-system helpers: the repository root and bare-name look-ups, media suffixes, run folders,
checked, atomic output writes, and bounded reads of user images and YAML files.

Every output (images, labels, JSON, CSV, plots, caches, checkpoints) goes through :func:`atomic_open` or a
helper built on it: a failed write raises :class:`OutputWriteError`, whose one-line message names the file,
and a kill never leaves half a file.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import glob
import hashlib
import io
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Optional, Union

import numpy as np
import yaml

logger = logging.getLogger(__name__)

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
        make_dirs(path)
    return path


def make_dirs(path: Union[str, Path]) -> Path:
    """``mkdir -p``; a failure (read-only file system, no permission, a file in the way) raises OutputWriteError,
    whose one-line message names the folder."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputWriteError(path, error) from error
    return path


def outermost_missing(folder: Path) -> Optional[Path]:
    """The outermost of ``folder`` and its parents that does not exist yet (None if ``folder`` exists): the
    folder a run creates with ``mkdir -p``, so a failed run can remove all it made (runs/detect/exp, or runs/)."""
    missing = None
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing = path
    return missing


def remove_created_folder(root: Optional[Path], own_files: Sequence[Path] = ()) -> None:
    """After a failed run, remove ``root`` (what :func:`outermost_missing` said the run would create) when it holds
    no file but ``own_files`` (e.g. the run's options record): a user's next run is then exp again, not exp2."""
    if root is None or not root.is_dir():
        return
    own = {Path(path) for path in own_files}
    if all(path.is_dir() or path in own for path in root.rglob("*")):
        shutil.rmtree(root)


# The file a run folder's lock is taken on (utils/engine/run.py: one training per run folder at a time).
LOCK_NAME = ".lock"


@contextmanager
def folder_lock(folder: Union[str, Path], holder: str) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (an flock on its .lock file) while the block runs.

    A second process asking for the same folder gets ValueError at once (no waiting): two trainings with
    the same ``--name --exist-ok`` would interleave their results.csv rows and checkpoints. The lock dies
    with its process, so a killed run never leaves the folder locked.
    """
    path = Path(folder) / LOCK_NAME
    try:
        handle = open(path, "a+b")
    except OSError as error:
        raise OutputWriteError(path, error) from error
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"{folder} is in use by another {holder} (it holds {path}); wait for that one to "
                             "finish, or give this one another --name") from None
        yield Path(folder)
    finally:
        handle.close()  # closing releases the lock


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


class OutputWriteError(OSError):
    """An output file could not be written; ``str()`` is the whole one-line message the CLIs print."""

    def __init__(self, path: Union[str, Path], reason: Union[str, BaseException]):
        denied = isinstance(reason, OSError) and reason.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
        if isinstance(reason, BaseException):
            reason = (str(reason).splitlines() or [type(reason).__name__])[0]
        hint = "(no write permission?)" if denied else "(disk full?)"
        super().__init__(f"could not write {path}: {reason} {hint}")
        self.path = Path(path)

    def __str__(self) -> str:
        return self.args[0]


def output_file_mode() -> int:
    """The mode ``open()`` would give a new file (0644 under umask 022): temp files are created 0600, and
    finished outputs get this instead. Reading the umask means setting it, so it is set straight back."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask

# Suffix of the temporary files written beside their target, so stale ones can be found.
TEMP_SUFFIX = ".tmp"


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def remove_stale_temps(path: Union[str, Path]) -> list[Path]:
    """Delete the temporary files that killed writes of ``path`` left beside it; returns them."""
    path = Path(path)
    stale = list(path.parent.glob(f"{glob.escape(_temp_prefix(path))}*{TEMP_SUFFIX}")) if path.parent.is_dir() else []
    for temp in stale:
        temp.unlink(missing_ok=True)
    return stale


@contextmanager
def atomic_open(path: Union[str, Path], mode: str = "wb", encoding: Optional[str] = None) -> Iterator[IO]:
    """Write ``path`` through a temporary file in its folder, fsynced and renamed over it at the end.

    A kill or an error never leaves half a file: ``path`` holds its old content or the whole new one.
    Any failure to write raises :class:`OutputWriteError` naming ``path`` (other errors pass through).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as error:
        raise OutputWriteError(path, error) from error
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp_name, output_file_mode())
        os.replace(temp_name, path)
    except OutputWriteError:
        Path(temp_name).unlink(missing_ok=True)
        raise
    except OSError as error:
        Path(temp_name).unlink(missing_ok=True)
        raise OutputWriteError(path, error) from error
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Union[str, Path], data: Union[bytes, memoryview]) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: Union[str, Path], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_open`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def checked_imwrite(path: Union[str, Path], image: np.ndarray, params: Sequence[int] = ()) -> Path:
    """Encode ``image`` (H, W, 3) uint8 BGR by the file's suffix and write it atomically.

    Unlike ``cv2.imwrite``, whose False return is easy to ignore, a failure raises OutputWriteError.
    """
    import cv2

    path = Path(path)
    try:
        ok, encoded = cv2.imencode(path.suffix or ".jpg", image, list(params))
    except cv2.error as error:
        raise OutputWriteError(path, f"OpenCV cannot encode a {path.suffix} image ({error})") from error
    if not ok:
        raise OutputWriteError(path, f"OpenCV cannot encode a {path.suffix} image")
    return atomic_write_bytes(path, encoded.tobytes())


def checked_savefig(figure: Any, path: Union[str, Path], **kwargs: Any) -> Path:
    """``figure.savefig`` into a temporary file renamed over ``path``; a failure raises OutputWriteError."""
    path = Path(path)
    with atomic_open(path, "wb") as f:
        figure.savefig(f, format=path.suffix[1:] or "png", **kwargs)
    return path


class OutputNames:
    """One output stem per source file, unique within a run (case-insensitively, for case-blind disks).

    The first source keeps its own stem (``photo[1].jpg`` -> ``photo[1]``); a later source whose stem is
    taken (``x.png`` after ``x.jpg``, ``d2/img.jpg`` after ``d1/img.jpg``) gets ``<stem>_<hash>``, a hash
    of its full path, so it is the same on every run over the same files.
    """

    def __init__(self) -> None:
        self._stems: dict[str, str] = {}  # source -> stem
        self._taken: set[str] = set()

    def stem(self, source: Union[str, Path]) -> str:
        source = str(source)
        if source not in self._stems:
            base = Path(source).stem if Path(source).name else "output"
            stem, attempt = base, 0
            while stem.lower() in self._taken:
                digest = hashlib.sha1(f"{os.path.abspath(source)}|{attempt}".encode()).hexdigest()[:6]
                stem, attempt = f"{base}_{digest}", attempt + 1
            self._taken.add(stem.lower())
            self._stems[source] = stem
        return self._stems[source]

    def name(self, source: Union[str, Path]) -> str:
        """The output file name: the unique stem with the source's own suffix."""
        return self.stem(source) + Path(str(source)).suffix


def append_text(path: Union[str, Path], text: str) -> None:
    """Append complete lines to a log such as results.csv and fsync; a failure raises OutputWriteError.

    A kill can still cut the last line; readers of such logs drop rows of the wrong length.
    """
    try:
        with open(path, "a", newline="", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:
        raise OutputWriteError(path, error) from error


def append_csv_rows(path: Union[str, Path], rows: Sequence[Sequence[Any]]) -> None:
    """Append complete CSV rows to ``path`` (see :func:`append_text`)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    append_text(path, buffer.getvalue())


# JPEG decoders scale by 1/2, 1/4 or 1/8 inside the DCT, far cheaper than a full decode and a resize.
REDUCED_DECODES = ((8, "IMREAD_REDUCED_COLOR_8"), (4, "IMREAD_REDUCED_COLOR_4"), (2, "IMREAD_REDUCED_COLOR_2"))
JPEG_SUFFIXES = (".jpg", ".jpeg")
# Largest image decoded, in pixels (about 13400 x 13400; 540 MB as BGR): where Pillow, and so YOLOv5's dataset
# scan, refuses a "decompression bomb". A tiny file whose header claims more is refused before any decoding.
MAX_IMAGE_PIXELS = 178_956_970


def image_header_size(path: Union[str, Path]) -> tuple[int, int]:
    """(width, height) as the file's header states it, without decoding pixels (EXIF orientation not applied).

    Raises (messages without the path, which callers add):
        ValueError: ``path`` is missing or not a regular file (a FIFO or device would block or never end), or
            the header claims more than MAX_IMAGE_PIXELS pixels.
        OSError: Pillow cannot read the header (not an image, or a format only OpenCV reads).
    """
    import warnings

    from PIL import Image

    if not os.path.isfile(path):
        raise ValueError("not a regular file (a FIFO, device or folder)" if os.path.exists(path) else "not found")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                width, height = image.size
        except Image.DecompressionBombError as error:  # Pillow's own ceiling (2x its MAX_IMAGE_PIXELS) passed
            claimed = re.search(r"\((\d+) pixels\)", str(error))
            size = f"{claimed.group(1)} pixels" if claimed else "more pixels than Pillow allows"
            raise _too_large(size) from None
    if width * height > MAX_IMAGE_PIXELS:
        raise _too_large(f"{width}x{height}")
    return width, height


def _too_large(claimed_size: str) -> ValueError:
    return ValueError(f"header claims {claimed_size}, above the limit of {MAX_IMAGE_PIXELS} pixels "
                      "(utils/files.py MAX_IMAGE_PIXELS); not decoded")


def read_image(path: Union[str, Path], long_side: int = 0, target: int = 0) -> Optional[np.ndarray]:
    """An image as (H, W, 3) uint8 BGR the way viewers display it (EXIF orientation applied), or None.

    The one reader of scanning, training, val and detect, so labels and boxes share one frame. A JPEG whose
    ``long_side`` (from the scan) is at least 2x ``target`` is decoded at the largest 1/2, 1/4 or 1/8 scale whose
    long side stays >= ``target``, so the later resize only shrinks; normalised labels stay exact. ``target`` 0
    decodes at full size. The header is checked first (:func:`image_header_size`): a non-regular file or one
    claiming more than MAX_IMAGE_PIXELS gives None and one warning saying why, with memory left bounded.
    """
    import cv2

    try:
        image_header_size(path)
    except ValueError as error:
        logger.warning("%s: %s", path, error)
        return None
    except OSError:
        pass  # a format Pillow does not read: OpenCV decides (its own pixel limit applies)
    flags = cv2.IMREAD_COLOR
    if target > 0 and str(path).lower().endswith(JPEG_SUFFIXES):
        reduced = next((name for factor, name in REDUCED_DECODES if long_side // factor >= target), None)
        flags = getattr(cv2, reduced) if reduced else flags
    return cv2.imread(str(path), flags)


# Reading a user's YAML file (data, hyp) with bounded cost, and errors that name the file.
# ``yaml.safe_load`` never runs code, but an alias bomb (``a: &a [x, x]``, ``b: &b [*a, *a]``, ...) is a few
# lines that stand for billions of items: printing or walking the result hangs and eats memory. So the
# composed document is measured as it would be expanded (aliases counted each time they are used) and
# refused past a bound that no data or hyp file comes near; the file size is capped too.

# Largest YAML we read: data YAMLs with a download script are a few KB, the biggest names list (Objects365) ~10 KB.
MAX_YAML_BYTES = 1 << 20
# Most values (scalars, lists, mappings) a document may hold once aliases are expanded.
MAX_YAML_NODES = 100_000


def expanded_size(root: yaml.Node, limit: int) -> int:
    """Number of nodes of ``root`` with every alias expanded, counted up to ``limit`` (+1 past it) without
    expanding anything: each distinct node's size is computed once. A node containing itself counts as
    past the limit."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes and sizes[id(node)] >= 0:
            continue
        children = _children(node)
        if children_done:
            sizes[id(node)] = min(limit + 1, 1 + sum(sizes[id(child)] for child in children))
            continue
        if sizes.get(id(node)) == -1:  # reached again while its children are pending: a cycle
            return limit + 1
        sizes[id(node)] = -1
        stack.append((node, True))
        stack += [(child, False) for child in children if sizes.get(id(child), -1) < 0]
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


def load_yaml_file(path: Union[str, Path]) -> Any:
    """The content of a YAML file (safe types only).

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file: too large, not UTF-8 text (e.g. a binary file), not valid YAML
            (with the line), or an alias bomb.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (or not a regular file)")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ValueError(f"{path}: {path.stat().st_size} bytes is too large for a YAML settings file "
                         f"(limit {MAX_YAML_BYTES})")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file (a YAML file was expected)") from None
    if "\x00" in text:
        raise ValueError(f"{path}: not a text file (it holds NUL bytes; a YAML file was expected)")
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()  # aliases are shared nodes here: composing a bomb is cheap
        if root is None:
            return None
        if expanded_size(root, MAX_YAML_NODES) > MAX_YAML_NODES:
            raise ValueError(f"{path}: more than {MAX_YAML_NODES} values once its aliases (*name) are expanded, "
                             "or a value containing itself: refused (a settings file needs far fewer)")
        return loader.construct_document(root)
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be a settings file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        reason = " ".join(str(getattr(error, "problem", None) or error).split())
        raise ValueError(f"{path}{where}: not valid YAML ({reason})") from None
    finally:
        loader.dispose()
