"""Measuring one side of bench/bench_study.py: a command run to its end, with its wall time, the CPU
seconds of the whole process tree, and its peak memory.

- CPU seconds: user + system time of the command and every descendant, from the resource usage
  ``os.wait4`` returns for it (a process's time joins its parent's when it is waited for: Snakemake
  waits for its jobs, bash for each python, so nothing is missed or counted twice, and nothing the
  benchmark ran before, the other side included, is counted).
- Peak memory, two numbers: ``peak_rss_mb``, the largest resident set any single process of the tree
  reached (``ru_maxrss`` of the same ``wait4`` usage: the kernel's own high-water mark, exact);
  ``peak_tree_rss_mb``, the largest sum of the RSS of all processes alive at once, sampled with psutil
  every 0.2 s (jobs running side by side add up; a peak shorter than a sample can be missed).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path


class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process and all its descendants until stopped."""

    def __init__(self, pid: int, every: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak_bytes = 0
        self.peak_procs = 0
        self._halt = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._halt.is_set():
            total, n = 0, 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for p in procs:
                try:
                    total += p.memory_info().rss
                    n += 1
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak_bytes = max(self.peak_bytes, total)
            self.peak_procs = max(self.peak_procs, n)
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def measure(cmd: list[str], cwd: Path, log: Path, env: dict | None = None) -> dict:
    """Run `cmd` in `cwd` (stdout and stderr to `log`); raise if it fails. Returns wall_s, cpu_s,
    peak_rss_mb, peak_tree_rss_mb, load average before and after."""
    log.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's usage, its waited-for descendants included
        wall = time.perf_counter() - t0
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
        sampler.stop()
    if rc != 0:
        tail = "\n".join(Path(log).read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {rc}) in {cwd}; log {log}:\n{tail}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # kilobytes on Linux
        "peak_tree_rss_mb": sampler.peak_bytes / 2**20,
        "peak_processes": sampler.peak_procs,
        "load_before": list(load_before),
        "load_after": list(os.getloadavg()),
    }
