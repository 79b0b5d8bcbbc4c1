"""One JSON per benchmark run, so a number in the docs can be traced to the run that printed it: the
command, the commit, the machine (CPU model, the flags that decide kernels, cores), the load before and
after, the package versions, and every measured number."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
#: CPU flags that change which kernels run (bf16 and int8 paths above all).
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")
PACKAGES = ("torch", "transformers", "onnxruntime", "onnx", "peft", "datasets", "snakemake", "fastapi", "uvicorn")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> dict[str, bool]:
    """Which of FLAGS the first processor lists (all False where /proc/cpuinfo has no flags line)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        text = ""
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    have = set(line.partition(":")[2].split())
    return {flag: flag in have for flag in FLAGS}


def machine() -> dict[str, Any]:
    from dapt.runtime.precision import cpu_model

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "flags": cpu_flags(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "arch": platform.machine(),
        "python": platform.python_version(),
    }


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def commit() -> str:
    """HEAD's id, with '+dirty' when the tracked files differ from it (the number may not be the commit's)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=REPO).returncode != 0
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Run:
    """Start it before measuring (it reads the load then); `record(results)` after."""

    def __init__(self, name: str, threads: int | None = None, argv: list[str] | None = None):
        self.name, self.threads = name, threads
        self.argv = list(sys.argv if argv is None else argv)
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.load_before = os.getloadavg()

    def record(self, results: dict[str, Any]) -> dict[str, Any]:
        return {
            "bench": self.name,
            "command": " ".join(["python", *self.argv]),
            "commit": commit(),
            "date": self.started.isoformat(timespec="seconds"),
            "seconds": (datetime.datetime.now(datetime.timezone.utc) - self.started).total_seconds(),
            "machine": machine(),
            "threads": self.threads,
            "load_before": list(self.load_before),
            "load_after": list(os.getloadavg()),
            "versions": versions(),
            "results": results,
        }

    def write(self, path: str | Path, results: dict[str, Any]) -> dict[str, Any]:
        rec = self.record(results)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(rec, indent=2, default=float, sort_keys=False) + "\n")
        return rec
