"""Snakemake's own cost, paid before any job runs."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def bench_workflow(timeout: float = 60.0) -> dict:
    """Snakemake's own cost: a dry run of the default study's whole DAG in an empty folder."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-wf-") as d:
        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            d,
            "--configfile",
            str(REPO / "config" / "config.yaml"),
            "-n",
            "--quiet",
            "rules",
            "--cores",
            "2",
        ]
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": "timed out"}
        out["dry_run_seconds"] = time.perf_counter() - t
        if proc.returncode != 0:
            return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
        text = proc.stdout + proc.stderr
        for line in text.splitlines():
            parts = line.split()
            if parts[:1] == ["total"] and len(parts) > 1 and parts[1].isdigit():
                out["jobs"] = int(parts[1])
    return out
