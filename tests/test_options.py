"""Tests for utils/options.py: parsers generated from options dataclasses, kwargs runs, one-line user errors."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from dataclasses import dataclass
from typing import Optional

import pytest

from tests.conftest import REPO_ROOT
from utils.engine.options import TrainOptions, parse_options
from utils.options import INTERRUPTED_EXIT, build_parser, cli_main, option, options_from_kwargs, override_fields


@dataclass(frozen=True)
class Toy:
    size: int = option(640, "image size", flags=("--img",))
    names: tuple[str, ...] = option(("a",), "names")
    half: bool = option(False, "fp16")
    keep: bool = option(True, "keep")
    limit: Optional[float] = option(None, "a limit")
    mode: str = option("x", "mode", choices=("x", "y"), aliases=[("--y", {"action": "store_const", "const": "y"})])
    hidden: int = option(3, "not a flag", cli=False)


def test_generated_parser_keeps_the_dataclass_defaults_and_types():
    assert Toy(**vars(build_parser(Toy).parse_args([]))) == Toy()
    args = vars(build_parser(Toy).parse_args(["--img", "320", "--names", "p", "q", "--half", "--no-keep",
                                              "--limit", "0.5", "--y"]))
    assert args == {"size": 320, "names": ["p", "q"], "half": True, "keep": False, "limit": 0.5, "mode": "y"}
    with pytest.raises(SystemExit):
        build_parser(Toy).parse_args(["--hidden", "4"])


def test_override_fields_keep_help_and_choices_default_to_none_and_group_in_help():
    fields = override_fields(Toy, {"size": "toy_size", "mode": "toy_mode"}, "toy settings")
    overrides = dataclasses.make_dataclass("ToyOverrides", fields, frozen=True)
    parser = build_parser(overrides)
    assert vars(parser.parse_args([])) == {"toy_size": None, "toy_mode": None}
    assert vars(parser.parse_args(["--toy-size", "5", "--img", "7"]))["toy_size"] == 7  # the setting's spellings
    with pytest.raises(SystemExit):
        parser.parse_args(["--toy-mode", "z"])
    assert "toy settings:" in parser.format_help() and "image size (default: 640)" in parser.format_help()


def test_kwargs_take_the_same_fields_and_refuse_unknown_ones():
    assert options_from_kwargs(Toy, {"size": 1}) == Toy(size=1)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['sise'\]"):
        options_from_kwargs(Toy, {"sise": 1})


def test_train_cli_and_kwargs_build_the_same_options():
    argv = ["--data", "data/synthetic.yaml", "--imgsz", "128", "--epochs", "1", "--batch-size", "4", "--workers", "0"]
    kwargs = {"data": "data/synthetic.yaml", "imgsz": 128, "epochs": 1, "batch_size": 4, "workers": 0}
    assert parse_options(argv).to_dict() == options_from_kwargs(TrainOptions, kwargs).to_dict()
    assert parse_options([]) == TrainOptions()  # `python train.py` = TrainOptions() = train.run()


def test_bare_names_resolve_in_the_repository(tmp_path):
    opts = parse_options(["--cfg", "yolov5s.yaml", "--hyp", "hyp.VisDrone.yaml"])
    assert opts.cfg == str(REPO_ROOT / "models" / "yolov5s.yaml")
    assert opts.hyp_path == str(REPO_ROOT / "data" / "hyps" / "hyp.VisDrone.yaml")
    assert opts.project == str(REPO_ROOT / "runs" / "train")


@pytest.mark.parametrize("cli, argv, message", [
    ("train.py", ["--cfg", "nope.yaml"], "--cfg nope.yaml not found"),
    ("train.py", ["--hyp", "nope.yaml"], "--hyp nope.yaml not found"),
    ("train.py", ["--epochs", "0"], "--epochs must be >= 1"),
    ("train.py", ["--data", "missing.yaml"], "missing.yaml"),
    ("val.py", [], "give --weights"),
    ("val.py", ["--weights", "missing.pt"], "missing.pt"),
    ("detect.py", [], "yolov5s.pt"),
    ("detect.py", ["--weights", "missing.pt"], "missing.pt"),
    ("export.py", ["--weights", "missing.pt"], "missing.pt"),
    ("models/yolo.py", ["--cfg", "missing.yaml"], "missing.yaml"),
    ("models/convert.py", ["--weights", "missing.pt"], "missing.pt"),
])
def test_user_errors_print_one_line_and_exit_2(tmp_path, cli, argv, message):
    done = subprocess.run([sys.executable, str(REPO_ROOT / cli), *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith(f"{cli}: error:") and message in lines[0], done.stderr


def _bad_data_files(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train: [images\nnames: {0: a")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    empty = tmp_path / "empty.yaml"
    empty.write_text(f"path: {tmp_path / 'empty'}\ntrain: images\nval: images\nnames: ['a', 'b', 'c']\n")
    return bad_yaml, empty


@pytest.mark.parametrize("cli", ["train.py", "val.py"])
def test_bad_or_empty_datasets_are_one_line_errors(tmp_path, cli):
    bad_yaml, empty = _bad_data_files(tmp_path)
    weights = [] if cli == "train.py" else ["--weights", str(_tiny_weights(tmp_path))]
    for data, message in ((bad_yaml, "bad.yaml"), (empty, "empty")):
        done = subprocess.run([sys.executable, str(REPO_ROOT / cli), "--data", str(data), *weights, "--img", "64",
                               "--project", str(tmp_path / "runs")], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr


def _tiny_weights(tmp_path):
    from tests.conftest import make_tiny_checkpoint

    path = tmp_path / "w.pt"
    make_tiny_checkpoint(path)
    return path


@pytest.mark.parametrize(("interrupt", "line"), [(KeyboardInterrupt(), "prog.py: interrupted"),
                                                 (KeyboardInterrupt("saved in x/last.pt:\n resume it"),
                                                  "prog.py: saved in x/last.pt: resume it")])
def test_ctrl_c_is_one_line_and_exit_130(capsys, monkeypatch, interrupt, line):
    monkeypatch.delenv("CBBL_TRACEBACK", raising=False)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # cli_main replaces it for the exiting process

    def main():
        raise interrupt

    with pytest.raises(SystemExit) as exit_info:
        cli_main(main, "prog.py")
    assert exit_info.value.code == INTERRUPTED_EXIT == 130
    assert capsys.readouterr().err.splitlines() == [line]


def test_ctrl_c_inside_a_constructor_still_prints_one_line():
    """Ctrl-C that lands while an object is being built (a tqdm bar, say) leaves it half-built; its finaliser then
    fails when it is collected at exit, and Python would print that traceback under our one line."""
    script = ("import os; os.environ.pop('CBBL_TRACEBACK', None)\n"
              "from utils.options import cli_main\n"
              "class Bar:\n"
              "    def __init__(self):\n"
              "        raise KeyboardInterrupt\n"
              "    def __del__(self):\n"
              "        self.position  # set in __init__ after the interrupt: AttributeError\n"
              "cli_main(Bar, 'prog.py')\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == INTERRUPTED_EXIT
    assert done.stderr.splitlines() == ["prog.py: interrupted"], done.stderr
