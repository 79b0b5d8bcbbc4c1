"""Two fine-tuning jobs side by side on a small machine: thread pools limited to each job's share of
the cores (what the workflow does: `--threads 1` on 2 cores) against no limit (`--threads 0`: torch
and every other pool take all cores, so the two jobs oversubscribe them).

Needs a finished default study in the working directory (its model and tokenized task):

    .venv/bin/python bench/bench_threads.py [--rounds 2]

Prints the wall time of each pair and, last, ``threads_limited_speedup=X.XX`` (unlimited / limited).
Run it on a quiet machine: the two modes take turns, but each pair fills every core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def finetune_command(seed: int, threads: int, out: Path, precision: str) -> list[str]:
    from dapt.study import config as study

    config = study.read_yaml(REPO / "config" / "config.yaml")
    params = study.finetune_params(config, "rt_polarity", "full")
    return [
        sys.executable,
        str(REPO / "scripts" / "finetune.py"),
        "--base",
        "results/models/minilm",
        "--tokenized",
        f"results/tokenized/minilm/tasks/rt_polarity.L{params['max_length']}",
        "--params",
        json.dumps(params),
        "--seed",
        str(seed),
        "--threads",
        str(threads),
        "--precision",
        precision,
        "--checkpoints",
        str(out / f"ckpt{seed}"),
        "--out",
        str(out / f"run{seed}"),
    ]


def pair(threads: int, precision: str) -> float:
    """Wall seconds until two concurrent fine-tuning jobs (seeds 1 and 2) have both finished."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        procs = [
            subprocess.Popen(
                finetune_command(seed, threads, Path(tmp), precision),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for seed in (1, 2)
        ]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise SystemExit(f"a fine-tuning job failed: exit codes {codes}")
        return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--precision", default="auto")
    args = p.parse_args()
    if not Path("results/models/minilm").is_dir():
        raise SystemExit("run the default study first (results/models/minilm is missing)")
    print(f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; precision {args.precision}")
    times: dict[str, list[float]] = {"limited": [], "unlimited": []}
    for _ in range(args.rounds):  # the two modes take turns, so slow drift hits both
        for mode, threads in (("limited", 1), ("unlimited", 0)):
            seconds = pair(threads, args.precision)
            times[mode].append(seconds)
            print(f"{mode:9s} (--threads {threads}): two jobs in {seconds:.1f} s", flush=True)
    best = {mode: min(values) for mode, values in times.items()}
    print(f"threads_limited_speedup={best['unlimited'] / best['limited']:.2f}")


if __name__ == "__main__":
    main()
