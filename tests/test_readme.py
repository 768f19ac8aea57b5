"""README.md's main-job block, walked command by command as a newcomer types it.

Each command runs as written, with three additions so the walk is fast and writes nothing into the
repository: `--project` (and the paths that name runs/) point into a temporary folder, training runs 1 epoch,
and every image size is 64. The commands must follow each other as printed: the second finds the first's
`runs/train/exp/weights/best.pt`.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

FAST = {"train.py": ["--epochs", "1", "--img", "64", "--noplots", "--workers", "0"],
        "val.py": ["--img", "64", "--workers", "0"], "detect.py": ["--img", "64"]}


def main_job_commands() -> list[list[str]]:
    """The shell commands of the first ```bash block under '## The main job' (comments dropped)."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## The main job", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line.split("#", 1)[0]) for line in block.splitlines() if line.split("#", 1)[0].strip()]


@pytest.mark.slow
def test_readme_main_job_block_runs_in_order(tmp_path: Path):
    commands = main_job_commands()
    assert [command[:2] for command in commands][:3] == [["python", "train.py"], ["python", "val.py"],
                                                         ["python", "detect.py"]]
    runs = tmp_path / "runs"
    for command in commands:
        script = command[1]
        argv = [arg.replace("runs/", f"{runs}/") for arg in command[2:]]
        argv += ["--project", str(runs / script.removesuffix(".py")), *FAST[script]]
        done = subprocess.run([sys.executable, str(REPO_ROOT / script), *argv], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, f"{shlex.join(command)}:\n{done.stderr[-1500:]}"
    assert (runs / "train" / "exp" / "weights" / "best.pt").is_file()
    assert sorted(p.name for p in (runs / "train").iterdir()) == ["cbbl", "exp", "tph"]
    assert (runs / "val" / "exp" / "results.json").is_file() and any((runs / "detect" / "exp").glob("*.jpg"))
