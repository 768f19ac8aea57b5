"""Tests for utils/infer/sources.py: every source kind, --vid-stride, and the skip/error paths."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from utils.infer.sources import is_stream, iterate_frames, list_files


def write_image(path, height=20, width=30, value=0):
    image = np.full((height, width, 3), value, dtype=np.uint8)
    assert cv2.imwrite(str(path), image)
    return path


def write_video(path, frames=5, height=32, width=48):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (width, height))
    for i in range(frames):
        writer.write(np.full((height, width, 3), i * 40, dtype=np.uint8))
    writer.release()
    return path


def test_folder_lists_media_and_skips_other_files(tmp_path, caplog):
    write_image(tmp_path / "b.jpg")
    write_image(tmp_path / "a.png")
    (tmp_path / "notes.md").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        files = list_files(tmp_path)
    assert [f.name for f in files] == ["a.png", "b.jpg"]
    assert "notes.md" in caplog.text


def test_glob_and_list_file(tmp_path, caplog):
    (tmp_path / "sub").mkdir()
    write_image(tmp_path / "sub" / "x.jpg")
    write_image(tmp_path / "y.jpg")
    assert [f.name for f in list_files(str(tmp_path / "**" / "*.jpg"))] == ["x.jpg", "y.jpg"]
    list_file = tmp_path / "list.txt"
    list_file.write_text("sub/x.jpg\nmissing.jpg\n\n# comment\n" + str(tmp_path / "y.jpg") + "\n")
    with caplog.at_level(logging.WARNING):
        files = list_files(list_file)
    assert [f.name for f in files] == ["x.jpg", "y.jpg"]
    assert f"{list_file}:2" in caplog.text


def test_numbered_sequence_in_frame_order(tmp_path):
    for number in (10, 2, 1):
        write_image(tmp_path / f"img_{number:04d}.png", value=number)
    write_image(tmp_path / "img_12.png")  # wrong width: not part of img_%04d.png
    files = list_files(str(tmp_path / "img_%04d.png"))
    assert [f.name for f in files] == ["img_0001.png", "img_0002.png", "img_0010.png"]
    assert [int(frame.image[0, 0, 0]) for frame in iterate_frames(str(tmp_path / "img_%04d.png"))] == [1, 2, 10]


def test_bad_sources_raise_naming_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_files(tmp_path / "nowhere")
    bad = tmp_path / "table.csv"
    bad.write_text("1,2")
    with pytest.raises(ValueError, match="table.csv"):
        list_files(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images or videos"):
        list_files(tmp_path / "empty")
    with pytest.raises(ValueError, match="vid-stride"):
        next(iterate_frames(tmp_path, vid_stride=0))


def test_unreadable_image_is_skipped_once(tmp_path, caplog):
    write_image(tmp_path / "good.jpg", value=7)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    with caplog.at_level(logging.WARNING):
        frames = list(iterate_frames(tmp_path))
    assert [frame.path for frame in frames] == [str(tmp_path / "good.jpg")]
    assert frames[0].image.shape == (20, 30, 3) and not frames[0].is_video
    assert caplog.text.count("broken.jpg") == 1


def test_video_frames_with_stride(tmp_path):
    video = write_video(tmp_path / "clip.avi", frames=5)
    frames = list(iterate_frames(video, vid_stride=2))
    assert [frame.index for frame in frames] == [0, 2, 4]
    assert all(frame.is_video and frame.image.shape == (32, 48, 3) for frame in frames)
    assert frames[0].frame_count == 5 and frames[0].fps > 0
    assert abs(int(frames[1].image.mean()) - 80) <= 3  # frame 2 was written with value 80


def test_streams_that_cannot_open_raise():
    assert is_stream("0") and is_stream("rtsp://host/x") and not is_stream("video.mp4")
    with pytest.raises(ValueError, match="could not open stream"):
        next(iterate_frames("99"))
    with pytest.raises(ValueError, match="rtsp://127.0.0.1:9/none"):
        next(iterate_frames("rtsp://127.0.0.1:9/none"))
