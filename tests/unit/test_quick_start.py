"""The quick start stays two commands, and `make` re-installs .venv only when
pyproject.toml changed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_readme_quick_start_is_exactly_make_demo_and_make_test():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    assert block[1].splitlines() == ["make demo", "make test"]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_installs_on_first_use_and_again_only_after_pyproject_changes(tmp_path):
    venv = tmp_path / "venv"

    def planned(target: str) -> str:
        return subprocess.run(["make", "-n", "-C", str(ROOT), target, f"VENV={venv}"],
                              capture_output=True, text=True, check=True).stdout

    assert "-m venv" in planned("demo") and "pip install -q -e '.[dev]'" in planned("test")
    venv.mkdir()
    stamp = venv / ".installed"
    stamp.touch()
    pyproject_mtime = (ROOT / "pyproject.toml").stat().st_mtime
    os.utime(stamp, (pyproject_mtime + 10, pyproject_mtime + 10))
    assert "pip install" not in planned("demo"), "up to date: no re-install"
    assert "pgflow demo --data-dir .pgflow/demo" in planned("demo")
    os.utime(stamp, (pyproject_mtime - 10, pyproject_mtime - 10))
    assert "pip install -q -e '.[dev]'" in planned("test"), "pyproject.toml changed: re-install"
