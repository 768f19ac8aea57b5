"""Tests for utils/safe_yaml.py: bounded reading of data and hyp YAMLs, errors that name the file."""

from __future__ import annotations

import resource

import pytest

from utils.safe_yaml import MAX_YAML_BYTES, MAX_YAML_NODES, load_yaml_file


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
