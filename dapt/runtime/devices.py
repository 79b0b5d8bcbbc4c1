"""GPU claiming for the training scripts (several processes: `dapt.runtime.distributed`; number format:
`dapt.runtime.precision`).

Why this exists: Snakemake's ``--resources gpu=N`` caps how many GPUs are in use at once but
never says *which* ones (snakemake issue #281), so every concurrent job would land on cuda:0.
Each job therefore claims its own device ids with ``flock`` on one lock file per GPU. The kernel
drops an flock when the holding process exits for any reason (even SIGKILL), so a crashed job
can never leave a GPU marked busy; that is why these are locks and not pid files.

How a training script starts (before anything imports torch, so CUDA only ever sees the
claimed GPUs; `dapt.runtime.cli.start` does this)::

    claim_devices(args.gpus)                          # rule's resources.gpu, passed as --gpus
    maybe_relaunch_distributed(args.gpus, sys.argv)   # dapt.runtime.distributed: gpus > 1 re-runs this
                                                      # script under torch.distributed.run
    import torch                                      # then pick_device, init_distributed

Environment variables read here:

* ``DAPT_GPU_IDS``: comma list of device ids to share out; overrides detection. Tests use it to
  fake GPUs on a CPU-only machine.
* ``DAPT_GPU_SLOT_DIR``: where the lock files live (default ``/tmp/dapt-gpu-slots-<uid>``).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from dapt.core.errors import UserError

if TYPE_CHECKING:  # torch is imported lazily: claim_devices must run before torch is loaded
    pass

#: Seconds between attempts while waiting for free GPUs.
POLL_SECONDS = 1.0

_SLURM_GPU_VARS = ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS")

# Open lock files of the GPUs this process holds. Never closed on purpose: the locks must last
# as long as the process, and the kernel releases them when it ends.
_held: list[tuple[str, int]] = []
# What claim_devices last returned (None: not called), so the relaunch knows how many GPUs.
_assigned: list[str] | None = None


def _log(msg: str) -> None:
    """One line on stderr; logging is usually not configured yet this early in a script."""
    print(f"[dapt.runtime.devices] {msg}", file=sys.stderr, flush=True)


def _split_ids(value: str | None) -> list[str]:
    """Parse a comma list of device ids; "NoDevFiles" and negative ids mean no devices."""
    if not value:
        return []
    ids = [part.strip() for part in value.split(",") if part.strip()]
    if not ids or ids[0] == "NoDevFiles" or ids[0].startswith("-"):
        return []
    return ids


def _parse_nvidia_smi(text: str) -> list[str]:
    """Device ids from ``nvidia-smi -L``: GPU indices, or MIG UUIDs where GPUs are partitioned.

    MIG instances can only be selected by UUID in CUDA_VISIBLE_DEVICES, not by index.
    """
    gpus = re.findall(r"^GPU (\d+):", text, flags=re.MULTILINE)
    migs = re.findall(r"^\s+MIG .*\(UUID: (MIG-[^)\s]+)\)", text, flags=re.MULTILINE)
    return migs if migs else gpus


def _nvidia_smi_ids() -> list[str]:
    """Ask the driver which GPUs exist, without importing torch or initialising CUDA."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return _parse_nvidia_smi(out.stdout)


def _default_slot_dir() -> str:
    return os.environ.get("DAPT_GPU_SLOT_DIR") or f"/tmp/dapt-gpu-slots-{os.getuid()}"


def _lock_path(slot_dir: str, dev_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", dev_id)
    return os.path.join(slot_dir, f"gpu-{safe}.lock")


def _try_lock(path: str) -> int | None:
    """Open and exclusively lock `path` without blocking; the fd on success, else None."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _holder(path: str) -> str:
    """What the lock file says about its holder (pid and host), for the waiting message."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or "?"
    except OSError:
        return "?"


def _claim_from(pool: list[str], k: int, slot_dir: str) -> list[str]:
    """Lock k ids of `pool` in `slot_dir`, waiting until k are free at the same time.

    All-or-nothing per attempt: a job that cannot get all k gives back what it got before
    sleeping, so two jobs can never each hold half of what the other needs (deadlock).
    """
    os.makedirs(slot_dir, mode=0o700, exist_ok=True)
    started = time.monotonic()
    said_waiting = False
    while True:
        got: list[tuple[str, int]] = []
        busy: list[str] = []
        for dev_id in pool:
            if len(got) == k:
                break
            fd = _try_lock(_lock_path(slot_dir, dev_id))
            if fd is None:
                busy.append(dev_id)
            else:
                got.append((dev_id, fd))
        if len(got) == k:
            break
        for _, fd in got:
            os.close(fd)
        if not said_waiting:
            holders = ", ".join(f"{d} held by {_holder(_lock_path(slot_dir, d))}" for d in busy)
            _log(f"waiting for {k} free GPU(s) of {','.join(pool)} in {slot_dir} ({holders})")
            said_waiting = True
        time.sleep(POLL_SECONDS)

    note = f"pid {os.getpid()} on {socket.gethostname()}\n".encode()
    for _, fd in got:
        os.ftruncate(fd, 0)
        os.pwrite(fd, note, 0)
    _held.extend(got)
    ids = [dev_id for dev_id, _ in got]
    waited = f" after waiting {time.monotonic() - started:.0f}s" if said_waiting else ""
    _log(f"claimed GPU(s) {','.join(ids)}{waited} (locks in {slot_dir})")
    return ids


def claim_devices(n: int, slot_dir: str | None = None, visible: str | None = None) -> list[str]:
    """Give this job n GPUs of its own and export them as CUDA_VISIBLE_DEVICES.

    Call before torch is imported. Returns the device ids the job should use:

    * n == 0: nothing is claimed or changed; returns [].
    * Child of a distributed launch (LOCAL_RANK set): the parent already claimed; returns the
      inherited CUDA_VISIBLE_DEVICES ids.
    * Under SLURM (SLURM_JOB_ID plus CUDA_VISIBLE_DEVICES / SLURM_STEP_GPUS / SLURM_JOB_GPUS):
      the scheduler already chose; nothing is claimed and those ids are returned. Exception: a
      SLURM CUDA_VISIBLE_DEVICES with *more* than n ids means several Snakemake jobs share one
      allocation, so n are claimed among them (locks in a per-allocation sub-folder, because
      SLURM numbers GPUs inside each job's cgroup from 0).
    * Otherwise the pool is `visible` (comma list), else $DAPT_GPU_IDS, else
      $CUDA_VISIBLE_DEVICES, else the GPUs listed by ``nvidia-smi -L``. An empty pool means the
      job runs on CPU (logged; returns []). n ids are locked in `slot_dir` (else
      $DAPT_GPU_SLOT_DIR, else /tmp/dapt-gpu-slots-<uid>), waiting while fewer are free.

    A pool smaller than n can never satisfy the job, so that is a UserError rather than a hang.
    Calling again in the same process returns the ids already held.
    """
    global _assigned
    _assigned = _claim(n, slot_dir, visible)
    return list(_assigned)


def _claim(n: int, slot_dir: str | None, visible: str | None) -> list[str]:
    if n < 0:
        raise UserError("resources.gpu", f"must be 0 or more, got {n}")
    if n == 0:
        return []
    if _held:
        return [dev_id for dev_id, _ in _held]
    if "LOCAL_RANK" in os.environ:
        return _split_ids(os.environ.get("CUDA_VISIBLE_DEVICES"))

    if os.environ.get("SLURM_JOB_ID") and any(v in os.environ for v in _SLURM_GPU_VARS):
        slurm_ids = _split_ids(os.environ.get("CUDA_VISIBLE_DEVICES"))
        if len(slurm_ids) <= n:
            if not slurm_ids:
                slurm_ids = _split_ids(os.environ.get("SLURM_STEP_GPUS") or os.environ.get("SLURM_JOB_GPUS"))
            _log(
                f"SLURM job {os.environ['SLURM_JOB_ID']} assigned GPU(s) "
                f"{','.join(slurm_ids) or 'none'}; claiming nothing"
            )
            return slurm_ids
        base = slot_dir or _default_slot_dir()
        slot_dir = os.path.join(base, f"slurm-{os.environ['SLURM_JOB_ID']}")
        pool, source = slurm_ids, "SLURM allocation"
    elif visible is not None:
        pool, source = _split_ids(visible), "argument"
    else:
        pool, source = visible_gpus()

    if not pool:
        _log(f"asked for {n} GPU(s) but none are visible ({source}); running on CPU")
        return []
    if len(pool) < n:
        raise UserError(
            "resources.gpu",
            f"the job asks for {n} GPUs but only {len(pool)} exist ({','.join(pool)}, from {source})",
            "lower the rule's gpu resource or run on a machine with more GPUs",
        )
    if source in ("nvidia-smi", "DAPT_GPU_IDS"):
        # nvidia-smi numbers GPUs by PCI bus; CUDA's default order is "fastest first".
        os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    ids = _claim_from(pool, n, slot_dir or _default_slot_dir())
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    return ids


def visible_gpus() -> tuple[list[str], str]:
    """The GPUs a job started here could claim, and where that was read: $DAPT_GPU_IDS, else
    $CUDA_VISIBLE_DEVICES, else ``nvidia-smi -L`` (no torch import: the workflow asks this when it plans)."""
    if os.environ.get("DAPT_GPU_IDS") is not None:
        return _split_ids(os.environ["DAPT_GPU_IDS"]), "DAPT_GPU_IDS"
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return _split_ids(os.environ["CUDA_VISIBLE_DEVICES"]), "CUDA_VISIBLE_DEVICES"
    return _nvidia_smi_ids(), "nvidia-smi"


def release_devices() -> None:
    """Drop the locks this process holds. Scripts never need this (exit releases them)."""
    global _assigned
    while _held:
        _, fd = _held.pop()
        os.close(fd)
    _assigned = None
