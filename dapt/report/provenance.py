"""provenance.json: what made these numbers (code version, packages, hardware, config, the runs'
devices). Deliberately no environment variables: they may hold hub tokens."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import importlib.util
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from dapt.core.redact import redact_config

PROVENANCE_PACKAGES = (
    "torch",
    "transformers",
    "datasets",
    "peft",
    "accelerate",
    "snakemake",
    "pandas",
    "scikit-learn",
    "numpy",
    "scipy",
    "matplotlib",
    "tokenizers",
    "huggingface-hub",
    "onnx",
    "onnxruntime",  # the deploy stage's runtimes (rules/deploy.smk)
)


def package_versions(packages: Sequence[str] = PROVENANCE_PACKAGES) -> dict:
    """Installed versions (None when absent), read from metadata so nothing heavy is imported."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def hardware() -> dict:
    """Platform, CPUs, memory and GPUs of the machine that made the report."""
    from dapt.runtime.precision import cpu_model

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
    }
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        info["memory_gb"] = None
    info["gpus"] = []
    if importlib.util.find_spec("torch") is not None:
        try:
            import torch

            info["torch_cuda"] = torch.version.cuda
            info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
            if torch.cuda.is_available():
                info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        except Exception as err:  # a broken CUDA set-up must not stop the report
            info["gpu_error"] = f"{type(err).__name__}: {err}"
    return info


def git_info(where: str | os.PathLike | None = None) -> dict:
    """Commit and dirty flag of the workflow's repository (no remote URL: it may embed a token)."""
    where = Path(where or Path(__file__).resolve().parents[2])
    try:
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=20, check=True
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout.strip()
            != ""
        )
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def provenance(config: Mapping, results: pd.DataFrame, inputs: Mapping[str, int]) -> dict:
    """What made these numbers: code version, packages, hardware, config, the runs' devices.

    Deliberately no environment variables: they may hold hub tokens.
    """
    runs = {}
    for col in ("device", "precision", "precision_reason"):
        if col in results:
            runs[f"{col}s"] = sorted(str(x) for x in results[col].dropna().unique())
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_info(),
        "packages": package_versions(),
        "hardware": hardware(),
        "runs": {"count": int(len(results)), **runs},
        "inputs": dict(inputs),
        "config": redact_config(config),
    }
