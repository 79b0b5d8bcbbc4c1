"""Resumable jobs: checkpoints and whose they are.

Checkpoints live outside the rule's declared outputs (Snakemake deletes those of an incomplete job),
hold everything needed to continue bit-for-bit on CPU (weights, optimizer, schedule, loss scaler,
RNG states, data position), and are written atomically, so a SIGKILL at any moment leaves either the
previous checkpoint or the new one. Tensors load with ``weights_only=True``. A checkpoint records the
job it belongs to (`job_identity`); a job with other arguments or inputs discards it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dapt.core.files import write_json

if TYPE_CHECKING:  # torch is imported where it is used: the scripts call guard_checkpoints before
    import torch  # they claim their GPUs, which must happen before torch is loaded


def save_checkpoint(
    ckpt_dir: str | Path,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    state: dict,
    generator: torch.Generator | None = None,
    scaler=None,
) -> None:
    """Write ``last/`` (model.safetensors + trainer.pt). The previous ``last`` is renamed to ``prev``
    before the new one is renamed into place, so a kill at any moment leaves one whole checkpoint."""
    import torch
    from safetensors.torch import save_file

    from dapt.runtime.context import trainable_state

    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    last, prev = ckpt_dir / "last", ckpt_dir / "prev"
    tmp = Path(tempfile.mkdtemp(prefix=".last.", suffix=".tmp", dir=ckpt_dir))
    try:
        new = tmp / "last"
        new.mkdir()
        save_file(trainable_state(model), str(new / "model.safetensors"))
        extra: dict[str, Any] = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "state": state,
            "torch_rng": torch.get_rng_state(),
            "generator": generator.get_state() if generator is not None else None,
        }
        if torch.cuda.is_available():
            extra["cuda_rng"] = torch.cuda.get_rng_state_all()
        if scaler is not None:
            extra["scaler"] = scaler.state_dict()
        torch.save(extra, new / "trainer.pt")
        if _complete(last):
            shutil.rmtree(prev, ignore_errors=True)
            os.replace(last, prev)
        else:
            shutil.rmtree(last, ignore_errors=True)
        os.replace(new, last)
        shutil.rmtree(prev, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _complete(folder: Path) -> bool:
    return (folder / "trainer.pt").is_file() and (folder / "model.safetensors").is_file()


def _read_latest(ckpt_dir: str | Path) -> tuple[dict, dict] | None:
    """(weights, trainer state) of the newest whole checkpoint: ``last``, else ``prev`` (a kill
    between the two renames of `save_checkpoint`); None if there is none."""
    import torch
    from safetensors.torch import load_file

    for folder in (Path(ckpt_dir) / "last", Path(ckpt_dir) / "prev"):
        if not _complete(folder):
            continue
        try:
            return load_file(str(folder / "model.safetensors")), torch.load(folder / "trainer.pt", weights_only=True)
        except Exception as err:  # unreadable: fall back to the older one, or start afresh
            print(f"ignoring unreadable checkpoint {folder}: {type(err).__name__}: {err}", flush=True)
    return None


def load_checkpoint(
    ckpt_dir: str | Path,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    generator: torch.Generator | None = None,
    scaler=None,
) -> dict | None:
    """Restore the last checkpoint if there is one; returns its training state or None."""
    import torch

    from dapt.runtime.context import unwrap

    latest = _read_latest(ckpt_dir)
    if latest is None:
        return None
    weights, extra = latest
    unwrap(model).load_state_dict(weights, strict=False)
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["torch_rng"])
    if generator is not None and extra.get("generator") is not None:
        generator.set_state(extra["generator"])
    if "cuda_rng" in extra and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(extra["cuda_rng"])
    if scaler is not None and "scaler" in extra:
        scaler.load_state_dict(extra["scaler"])
    return extra["state"]


def checkpoint_step(ckpt_dir: str | Path) -> int | None:
    latest = _read_latest(ckpt_dir)
    return latest[1]["state"]["step"] if latest is not None else None


def clear_checkpoints(ckpt_dir: str | Path) -> None:
    shutil.rmtree(ckpt_dir, ignore_errors=True)


def job_identity(args: dict, inputs: list[str], ignore: tuple[str, ...] = ("gpus", "threads")) -> dict:
    """What a job's checkpoints belong to: its arguments and the size and mtime of every input file.

    A rerun of the same job (same arguments, untouched inputs) resumes; one with changed
    hyperparameters or re-made inputs (Snakemake reruns downstream jobs) must not.
    """
    args = {k: v for k, v in args.items() if k not in ignore}  # resources, not the computation
    files = {}
    for root in filter(None, inputs):  # "" (an optional input not given) is no folder to list
        root = Path(root)
        for f in sorted([root] if root.is_file() else root.rglob("*") if root.is_dir() else []):
            if f.is_file():
                st = f.stat()
                files[str(f)] = [st.st_size, st.st_mtime_ns]
    return json.loads(json.dumps({"args": args, "inputs": files}, sort_keys=True, default=str))


def guard_checkpoints(ckpt_dir: str | Path, identity: dict) -> None:
    """Discard checkpoints of a different job (see `job_identity`), then record this job's identity.

    Call once per job, before any rank reads the checkpoints (multi-GPU: in the launching process).
    Checkpoints live outside the job's declared outputs, which Snakemake deletes before a rerun.
    """
    ckpt_dir = Path(ckpt_dir)
    record = ckpt_dir / "job.json"
    if ckpt_dir.exists():
        try:
            same = json.loads(record.read_text(encoding="utf-8")) == identity
        except (OSError, ValueError):
            same = False
        if not same:
            if any(p.name != "job.json" for p in ckpt_dir.iterdir()):
                print(
                    f"discarding checkpoints in {ckpt_dir}: they belong to a run with other arguments or inputs",
                    flush=True,
                )
            shutil.rmtree(ckpt_dir, ignore_errors=True)
    write_json(record, identity)
