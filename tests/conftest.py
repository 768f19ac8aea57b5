"""Shared fixtures and factories for the test suite (tiny, seeded, CPU)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
VISDRONE_SAMPLE = SHARED_DATA / "visdrone-sample"
AERIAL_COCO_SAMPLE = SHARED_DATA / "aerial-coco-sample"
# YOLOv5 v7.0 / TPH-YOLOv5 checkpoints with the outputs their own code gives (see its SOURCE.md).
FOREIGN_CHECKPOINTS = REPO_ROOT.parent / "shared" / "fixtures" / "foreign-checkpoints"
# Training checkpoints made by YOLOv5 v7.0 (GitHub, PyPI 7.0.14) and TPH-YOLOv5's own code
# (tests/fixtures/make_yolov5_checkpoints.py).
YOLOV5_FIXTURES = REPO_ROOT / "tests" / "fixtures" / "yolov5"
FOREIGN_FILES = ("yolov5s-v7.0-tiny.pt", "tph-yolov5l-xs-tph-s.pt", "tph-yolov5l-xs-tr-cbam-spp-bifpn-s.pt",
                 "tph-yolov5l-tph-plus-s.pt")


# The CLIs' default --project folders (train, val, detect, export, convert): tests never write there. Other
# folders under runs/ are left out, so a long training of the user's (e.g. runs/study) cannot fail a test.
DEFAULT_PROJECTS = tuple(REPO_ROOT / "runs" / name for name in ("train", "val", "detect", "export", "convert"))


def _default_projects_state() -> dict[Path, int]:
    """Every path under the default project folders -> its mtime (ns)."""
    return {path: path.lstat().st_mtime_ns for project in DEFAULT_PROJECTS if project.exists()
            for path in [project, *project.rglob("*")]}


@pytest.fixture(autouse=True)
def _no_writes_into_repo_runs() -> Iterator[None]:
    """Fail a test that writes into <repo>/runs/{train,val,detect,export,convert} (a CLI left at its default
    --project): tests write only into tmp_path, so a user's first ``python train.py`` is runs/train/exp. Nothing
    is deleted here (the files might be a concurrent run's); the message names them."""
    before = _default_projects_state()
    yield
    changed = sorted(path for path, mtime in _default_projects_state().items() if before.get(path) != mtime)
    if changed:
        pytest.fail(f"this test wrote into the repository's runs/ ({', '.join(str(p) for p in changed[:5])}); pass "
                    "project=tmp_path (--project) to the CLI it runs, and remove those files", pytrace=False)


def random_boxes(num: int, size: float = 100.0, seed: int = 0) -> torch.Tensor:
    """(num, 4) valid xyxy boxes inside [0, size]^2."""
    generator = torch.Generator().manual_seed(seed)
    top_left = torch.rand(num, 2, generator=generator) * size * 0.8
    extent = torch.rand(num, 2, generator=generator) * size * 0.2 + 1.0
    return torch.cat([top_left, top_left + extent], 1)


def positives(assigned) -> set[tuple[int, int, int]]:
    """(anchor, cell_x, cell_y) of every positive in a utils.assign.LevelTargets."""
    return set(zip(assigned.anchor.tolist(), assigned.cell_x.tolist(), assigned.cell_y.tolist()))


@pytest.fixture
def visdrone_sample() -> Path:
    if not VISDRONE_SAMPLE.is_dir():
        pytest.skip(f"shared VisDrone sample not found at {VISDRONE_SAMPLE}")
    return VISDRONE_SAMPLE


@pytest.fixture
def aerial_coco_sample() -> Path:
    if not AERIAL_COCO_SAMPLE.is_dir():
        pytest.skip(f"shared aerial COCO sample not found at {AERIAL_COCO_SAMPLE}")
    return AERIAL_COCO_SAMPLE


def foreign_checkpoint(name: str) -> tuple[Path, dict]:
    """(path of a foreign fixture, its expected-output dict); skips when the shared fixtures are absent."""
    path = FOREIGN_CHECKPOINTS / name
    if not path.is_file():
        pytest.skip(f"shared foreign checkpoints not found at {FOREIGN_CHECKPOINTS}")
    return path, torch.load(path.with_name(path.stem + ".expected.pt"), weights_only=True)


def assert_parity(output: torch.Tensor, expected: torch.Tensor) -> None:
    """YOLOv5's decoded rows equal: boxes within 1e-2 px, objectness and class scores within 1e-4."""
    assert output.shape == expected.shape
    assert (output[..., :4] - expected[..., :4]).abs().max() < 1e-2
    assert (output[..., 4:] - expected[..., 4:]).abs().max() < 1e-4


# A tiny two-level detector (strides 8 and 16) for plumbing tests of detect/val/export.
TINY_MODEL_YAML = {
    "nc": 3,
    "depth_multiple": 1.0,
    "width_multiple": 1.0,
    "anchors": [[4, 5, 8, 10, 12, 8], [16, 20, 24, 16, 32, 40]],
    "backbone": [[-1, 1, "Conv", [8, 3, 2]], [-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [16, 3, 2]],
                 [-1, 1, "Conv", [32, 3, 2]]],
    "head": [[[2, 3], 1, "Detect", ["nc", "anchors"]]],
}


def make_tiny_checkpoint(path: Path, box: str = "regress", names: list | None = None, seed: int = 0,
                         objectness_logit: float | None = 0.0, head: dict | None = None, opt: dict | None = None
                         ) -> Path:
    """Save a randomly initialised tiny model as a project checkpoint at ``path``.

    ``head``: more HeadConfig settings (e.g. a C-BBL grid mode and points) over the box mode's defaults.
    ``objectness_logit`` overwrites the objectness and class biases (0.0: sigmoid 0.5 each, so random weights
    give confidences near 0.25 and many boxes above a conf threshold of 0.1); None keeps YOLOv5's priors
    (almost no boxes). ``opt``: the training options record (e.g. ``{"tile": 64}`` for a --tile run).
    """
    from models.yolo import Model
    from utils.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    model = Model(TINY_MODEL_YAML, head={"box_loss": "cbbl" if box == "cbbl" else "ciou", **(head or {})})
    detect = model.detect
    if objectness_logit is not None:
        with torch.no_grad():
            for conv in detect.m:
                conv.bias.view(detect.na, detect.no)[:, detect.box_channels:] = objectness_logit
    names = names or ["car", "pedestrian", "van"]
    save_checkpoint({"model": model.state_dict(), "ema": None, "model_yaml": model.yaml, "names": names,
                     "epoch": 0, **({"opt": opt} if opt else {})}, path)
    return path


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """Factory: ``tiny_checkpoint(box='regress'|'cbbl', name='tiny.pt', **kw)`` -> path of a saved tiny model."""

    def make(box: str = "regress", name: str | None = None, **kwargs) -> Path:
        return make_tiny_checkpoint(tmp_path / (name or f"tiny_{box}.pt"), box=box, **kwargs)

    return make


def make_yolo_dataset(root: Path, num_images: int = 6, size: tuple[int, int] = (96, 128), seed: int = 0) -> Path:
    """Tiny YOLO dataset under ``root/images`` + ``root/labels``: black (h, w) PNGs with 1-3 filled boxes,
    box k in colour channel k (255), label class k. Returns the images folder."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    height, width = size
    for index in range(num_images):
        image = np.zeros((height, width, 3), np.uint8)
        lines = []
        for channel in range(int(rng.integers(1, 4))):
            box_w, box_h = rng.integers(6, width // 3), rng.integers(6, height // 3)
            x1, y1 = rng.integers(0, width - box_w), rng.integers(0, height - box_h)
            image[y1:y1 + box_h, x1:x1 + box_w, channel] = 255
            lines.append(f"{channel} {(x1 + box_w / 2) / width:.6f} {(y1 + box_h / 2) / height:.6f} "
                         f"{box_w / width:.6f} {box_h / height:.6f}")
        cv2.imwrite(str(root / "images" / f"im{index}.png"), image[:, :, ::-1])  # channel 0 = red in RGB
        (root / "labels" / f"im{index}.txt").write_text("\n".join(lines) + "\n")
    return root / "images"


def write_image_bomb(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A ~1 KB JPEG (.jpg) or PNG (.png) whose header claims ``width`` x ``height`` (a decompression bomb)."""
    import struct
    import zlib

    import cv2
    import numpy as np

    if path.suffix == ".png":
        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        rows = zlib.compress(b"\0" * (1 + 3 * width) * 4, 9)  # a few black rows; the rest is missing
        header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    else:
        data = bytearray(cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
        start = data.index(b"\xff\xc0") + 5  # baseline frame header: length (2), precision (1), height, width
        data[start:start + 4] = struct.pack(">HH", height, width)
        path.write_bytes(bytes(data))
    return path


@contextmanager
def small_filesystem(path: Path, size: str = "256k") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (a real full disk); skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot mount a small tmpfs here (needs root); the patched-writer tests cover the logic")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextmanager
def read_only_folder(path: Path) -> Iterator[Path]:
    """An empty folder at ``path`` on a read-only file system (a read-only tmpfs; without root, a folder without
    write permission); skips the test where neither can be made."""
    import os

    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                      capture_output=True).returncode == 0:
        try:
            yield path
        finally:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
        return
    if os.geteuid() == 0:
        pytest.skip("cannot mount a read-only tmpfs here, and root ignores folder permissions")
    path.chmod(0o555)
    try:
        yield path
    finally:
        path.chmod(0o755)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` -> its bytes: compare before and after to prove a folder was left alone."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class _Reduce:
    """Pickles as ``function(*args)``: what a hostile checkpoint runs on a plain ``torch.load``."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def hostile_payload(kind: str, marker: Path):
    """An object whose unpickling would create ``marker``, through os.system, eval, builtins.exec,
    subprocess.Popen or a nested torch.storage._load_from_bytes (a torch file inside the pickle)."""
    import builtins
    import io
    import os
    import subprocess

    touch = f"open({str(marker)!r}, 'w').close()"
    if kind == "nested":
        inner = io.BytesIO()
        torch.save(hostile_payload("os.system", marker), inner)
        return _Reduce(torch.storage._load_from_bytes, inner.getvalue())
    return {"os.system": _Reduce(os.system, f"touch '{marker}'"), "eval": _Reduce(eval, touch),
            "builtins.exec": _Reduce(builtins.exec, touch),
            "subprocess.Popen": _Reduce(subprocess.Popen, ["touch", str(marker)])}[kind]


HOSTILE_KINDS = ("os.system", "eval", "builtins.exec", "subprocess.Popen", "nested")


def make_hostile_checkpoint(path: Path, kind: str, marker: Path) -> Path:
    """A torch zip file shaped like a YOLOv5 checkpoint whose model entry is a hostile payload."""
    torch.save({"epoch": -1, "model": hostile_payload(kind, marker), "model_yaml": {}, "opt": {}}, path)
    return path
