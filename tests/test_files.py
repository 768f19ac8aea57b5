"""Tests for utils/files.py."""

from utils.files import increment_path, is_image_file, is_video_file


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
