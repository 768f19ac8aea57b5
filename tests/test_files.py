"""Tests for utils/files.py: run folders (a read-only file system, the run lock), checked atomic writes (a full
disk, a kill), output names, and bounded reads of images (decompression bombs, FIFOs) and YAML files (alias bombs,
binary files)."""

import errno
import logging
import os
import resource
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tests.conftest import (
    REPO_ROOT,
    make_tiny_checkpoint,
    make_yolo_dataset,
    read_only_folder,
    small_filesystem,
    write_image_bomb,
)
from utils.files import (
    MAX_IMAGE_PIXELS,
    MAX_YAML_BYTES,
    MAX_YAML_NODES,
    OutputNames,
    OutputWriteError,
    atomic_write_bytes,
    atomic_write_text,
    checked_imwrite,
    folder_lock,
    increment_path,
    is_image_file,
    is_video_file,
    load_yaml_file,
    make_dirs,
    outermost_missing,
    read_image,
    remove_created_folder,
    remove_stale_temps,
)


def test_increment_path(tmp_path):
    first = increment_path(tmp_path / "exp", mkdir=True)
    assert first.name == "exp"
    assert increment_path(tmp_path / "exp", mkdir=True).name == "exp2"
    assert increment_path(tmp_path / "exp", mkdir=True).name == "exp3"
    assert increment_path(tmp_path / "exp", exist_ok=True).name == "exp"
    (tmp_path / "tph-cbbl").mkdir()
    assert increment_path(tmp_path / "tph-cbbl").name == "tph-cbbl2"


def test_media_suffixes():
    assert is_image_file("a/B.JPG") and not is_image_file("a/b.txt")
    assert is_video_file("clip.MP4") and not is_video_file("clip.jpg")


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = atomic_write_text(tmp_path / "labels" / "a.txt", "old\n")
    assert target.read_text() == "old\n" and oct(target.stat().st_mode & 0o777) != oct(0o600)

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OutputWriteError, match=r"^could not write .*a\.txt: \[Errno 28\] No space left on device "
                                               r"\(disk full\?\)$"):
        atomic_write_text(target, "new, longer content\n")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"], "the temporary file is removed"


def test_a_real_full_disk_gives_one_line_and_no_partial_file(tmp_path):
    with small_filesystem(tmp_path / "small", "64k") as small:
        with pytest.raises(OutputWriteError) as error:
            atomic_write_bytes(small / "big.bin", b"x" * 200_000)
        assert str(error.value).startswith(f"could not write {small / 'big.bin'}: ")
        assert "No space left on device" in str(error.value) and "\n" not in str(error.value)
        assert list(small.iterdir()) == []


def test_checked_imwrite_reports_what_cv2_imwrite_would_hide(tmp_path):
    image = np.zeros((8, 8, 3), np.uint8)
    assert cv2.imread(str(checked_imwrite(tmp_path / "ok.png", image))).shape == (8, 8, 3)
    with pytest.raises(OutputWriteError, match="could not write .*bad.xyz"):
        checked_imwrite(tmp_path / "bad.xyz", image)
    (tmp_path / "file").write_text("a file where a folder should be")
    with pytest.raises(OutputWriteError, match="could not write"):
        checked_imwrite(tmp_path / "file" / "x.jpg", image)


def test_stale_temps_of_a_killed_write_are_removed(tmp_path):
    stale = tmp_path / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half")
    other = tmp_path / ".best.pt.abc123.tmp"
    other.write_bytes(b"half")
    assert remove_stale_temps(tmp_path / "last.pt") == [stale]
    assert not stale.exists() and other.exists()


def test_output_names_are_unique_and_stable():
    sources = ["in/a b.jpg", "in/a_b.jpg", "in/x.jpg", "in/x.png", "d1/img.jpg", "d2/img.jpg", "in/photo[1].jpg",
               "in/IMG.jpg"]
    names = OutputNames()
    stems = [names.stem(source) for source in sources]
    assert len({stem.lower() for stem in stems}) == len(sources), stems
    assert stems[:3] == ["a b", "a_b", "x"] and stems[4] == "img" and stems[6] == "photo[1]"
    assert stems[3].startswith("x_") and stems[5].startswith("img_") and stems[7].startswith("IMG_")
    assert names.name("in/x.png") == stems[3] + ".png" and names.stem("in/x.png") == stems[3]
    again = OutputNames()
    assert [again.stem(source) for source in sources] == stems, "the same files get the same names on every run"


def test_a_read_only_target_says_permission_not_disk(tmp_path):
    error = OutputWriteError(tmp_path / "x.txt", PermissionError(errno.EACCES, "Permission denied"))
    assert str(error) == f"could not write {tmp_path / 'x.txt'}: [Errno 13] Permission denied (no write permission?)"


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_a_header_claiming_30000x30000_is_refused_before_decoding(tmp_path, caplog, suffix):
    """A 1 KB file whose header claims 900 MP must not be decoded (2.7 GB as BGR)."""
    bomb = write_image_bomb(tmp_path / f"bomb{suffix}")
    assert bomb.stat().st_size < 2000 and 30000 * 30000 > MAX_IMAGE_PIXELS
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with caplog.at_level(logging.WARNING):
        assert read_image(bomb) is None
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 100  # MB (ru_maxrss is KiB)
    assert f"{bomb}: header claims 900000000 pixels, above the limit of {MAX_IMAGE_PIXELS} pixels" in caplog.text


def test_images_up_to_the_limit_are_read(tmp_path):
    write_image_bomb(tmp_path / "tall.png", width=4, height=MAX_IMAGE_PIXELS // 4 + 1)
    assert read_image(tmp_path / "tall.png") is None
    cv2.imwrite(str(tmp_path / "ok.png"), np.full((30, 20, 3), 7, np.uint8))
    assert read_image(tmp_path / "ok.png").shape == (30, 20, 3)


@pytest.mark.timeout(20)
def test_a_fifo_is_not_opened(tmp_path, caplog):
    """Opening a FIFO blocks until a writer comes; the reader must not wait for one."""
    os.mkfifo(tmp_path / "pipe.jpg")
    with caplog.at_level(logging.WARNING):
        assert read_image(tmp_path / "pipe.jpg") is None
    assert "pipe.jpg: not a regular file" in caplog.text


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """``width ** levels`` items once expanded, in a few hundred bytes."""
    lines = [f"l0: &l0 [{', '.join(['x'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nnames: *l{levels - 1}\n"


def test_ordinary_files_and_a_few_aliases_load(tmp_path):
    (tmp_path / "a.yaml").write_text("base: &b {lr0: 0.01}\nother: *b\nnames: [a, b]\n")
    assert load_yaml_file(tmp_path / "a.yaml") == {"base": {"lr0": 0.01}, "other": {"lr0": 0.01}, "names": ["a", "b"]}
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    assert load_yaml_file(tmp_path / "empty.yaml") is None


@pytest.mark.timeout(60)
def test_an_alias_bomb_is_refused_with_bounded_memory(tmp_path):
    (tmp_path / "bomb.yaml").write_text(alias_bomb())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match=f"bomb.yaml: more than {MAX_YAML_NODES} values"):
        load_yaml_file(tmp_path / "bomb.yaml")
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 100  # MB (KiB from getrusage)
    (tmp_path / "small.yaml").write_text(alias_bomb(levels=3, width=9))  # 729 items: a legitimate size
    assert len(load_yaml_file(tmp_path / "small.yaml")["names"]) == 9


@pytest.mark.parametrize("content,message", [
    (b"a: &a [1, *a]\n", "containing itself"),
    (b"[" * 5000 + b"]" * 5000, "nested too deeply|more than"),
    (b"a: [1, 2\nb: 3\n", r"bad.yaml:\d+: not valid YAML"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not a UTF-8 text file"),
    (b"a: 1\x00\x00", "not a text file"),
])
def test_bad_files_are_one_line_naming_the_file(tmp_path, content, message):
    (tmp_path / "bad.yaml").write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        load_yaml_file(tmp_path / "bad.yaml")
    assert str(error.value).startswith(str(tmp_path / "bad.yaml")) and "\n" not in str(error.value)


def test_size_limit_and_missing_file(tmp_path):
    (tmp_path / "big.yaml").write_bytes(b"#" * (MAX_YAML_BYTES + 1))
    with pytest.raises(ValueError, match="too large"):
        load_yaml_file(tmp_path / "big.yaml")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_yaml_file(tmp_path / "missing.yaml")


def test_a_run_folder_on_a_read_only_file_system_is_one_line(tmp_path):
    with read_only_folder(tmp_path / "ro") as folder:
        with pytest.raises(OutputWriteError, match=f"could not write {folder / 'exp'}: .*(Read-only|Permission)"):
            increment_path(folder / "exp", mkdir=True)
        with pytest.raises(OutputWriteError, match="weights"):
            make_dirs(folder / "exp" / "weights")


def test_every_cli_on_a_read_only_project_prints_one_line_and_exits_2(tmp_path):
    weights = make_tiny_checkpoint(tmp_path / "w.pt")
    images = make_yolo_dataset(tmp_path / "data", num_images=2)
    data = tmp_path / "data.yaml"
    data.write_text(f"path: {tmp_path / 'data'}\ntrain: images\nval: images\nnames: [a, b, c]\n")
    with read_only_folder(tmp_path / "ro") as folder:
        for cli, argv in (("train.py", ["--data", str(data), "--img", "64", "--epochs", "1", "--workers", "0"]),
                          ("val.py", ["--weights", str(weights), "--data", str(data), "--img", "64"]),
                          ("detect.py", ["--weights", str(weights), "--source", str(images), "--img", "64"]),
                          ("export.py", ["--weights", str(weights), "--include", "onnx", "--img", "64"])):
            done = subprocess.run([sys.executable, str(REPO_ROOT / cli), *argv, "--project", str(folder)],
                                  cwd=tmp_path, capture_output=True, text=True, timeout=300)
            lines = done.stderr.strip().splitlines()
            assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
            assert lines[0].startswith(f"{cli}: error: could not write {folder}"), lines[0]


def test_a_locked_folder_is_refused_at_once_and_freed_with_its_holder(tmp_path):
    with folder_lock(tmp_path, "training"):
        holder = subprocess.run([sys.executable, "-c", f"from utils.files import folder_lock\n"
                                 f"with folder_lock({str(tmp_path)!r}, 'training'): pass"],
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert holder.returncode == 1 and f"ValueError: {tmp_path} is in use by another training" in holder.stderr
    with folder_lock(tmp_path, "training"):  # released when the block ended
        pass
    killed = subprocess.Popen([sys.executable, "-c", f"import time\nfrom utils.files import folder_lock\n"
                               f"with folder_lock({str(tmp_path)!r}, 'training'): print('held', flush=True); "
                               "time.sleep(60)"], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    assert killed.stdout.readline().strip() == "held"
    killed.kill()
    killed.wait()
    with folder_lock(tmp_path, "training"):  # a killed holder never leaves the folder locked
        pass


def test_a_failed_run_removes_only_the_folders_it_made(tmp_path):
    target = tmp_path / "runs" / "val" / "exp"
    assert outermost_missing(target) == tmp_path / "runs" and outermost_missing(tmp_path) is None
    make_dirs(target)
    own = atomic_write_text(target / "options.json", "{}")
    remove_created_folder(tmp_path / "runs", [own])
    assert not (tmp_path / "runs").exists()
    make_dirs(target)
    (target / "theirs.txt").write_text("not ours")
    remove_created_folder(tmp_path / "runs", [own])
    assert (target / "theirs.txt").read_text() == "not ours"
