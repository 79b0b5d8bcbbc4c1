"""ruff (configured in pyproject.toml) finds nothing over the Python code and the formatter would change
nothing, so style never drifts between contributors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

PATHS = ["dapt", "scripts", "bench", "tests"]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_is_clean(command):
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "--no-cache", *PATHS], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
