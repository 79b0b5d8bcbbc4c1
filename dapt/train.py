"""Pieces both training loops share: runtime set-up, optimizer and schedule, resumable checkpoints.

Checkpoints live outside the rule's declared outputs (Snakemake deletes those of an incomplete job),
hold everything needed to continue bit-for-bit on CPU (weights, optimizer, schedule, RNG states,
data position), and are written atomically, so a SIGKILL at any moment leaves either the previous
checkpoint or the new one. Tensors load with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dapt.devices import choose_precision, dist_info, init_distributed, pick_device, set_deterministic


@dataclass
class Runtime:
    device: torch.device
    precision: dict
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        dtype = self.precision.get("autocast_dtype")
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def describe(self) -> dict:
        return {"device": self.precision.get("device_name", str(self.device)), "precision": self.precision["precision"],
                "world_size": self.world_size, "threads": torch.get_num_threads(),
                "deterministic": torch.are_deterministic_algorithms_enabled()}


def setup_runtime(seed: int, precision: str = "auto", threads: int | None = None, deterministic: bool = False) -> Runtime:
    if threads:
        torch.set_num_threads(threads)
    rank, world_size, _ = dist_info()
    device = pick_device()
    init_distributed(device.type)
    set_deterministic(deterministic)
    torch.manual_seed(seed)
    return Runtime(device=device, precision=choose_precision(precision, device), rank=rank, world_size=world_size)


def make_optimizer(params: list[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW without decay on biases and LayerNorm weights, as in the HF example scripts."""
    decay = [p for n, p in params if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in params if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel over all parameters; ~6x faster than the default loop on CPU, where the
    # step over MiniLM's 11.7M-parameter embedding otherwise costs a third of a fine-tuning step
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, fused=True)


def linear_schedule(optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def trainable_state(model: torch.nn.Module, only_trainable: bool = False) -> dict[str, torch.Tensor]:
    """A copy safe for safetensors (tied weights share storage, which safetensors refuses)."""
    named = dict(unwrap(model).named_parameters())
    state = unwrap(model).state_dict()
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()
            if not only_trainable or (k in named and named[k].requires_grad)}


def save_checkpoint(ckpt_dir: str | Path, model: torch.nn.Module, optimizer, scheduler, state: dict,
                    generator: torch.Generator | None = None, scaler=None) -> None:
    """Write ``last/`` (model.safetensors + trainer.pt). The previous ``last`` is renamed to ``prev``
    before the new one is renamed into place, so a kill at any moment leaves one whole checkpoint."""
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
    for folder in (Path(ckpt_dir) / "last", Path(ckpt_dir) / "prev"):
        if not _complete(folder):
            continue
        try:
            return load_file(str(folder / "model.safetensors")), torch.load(folder / "trainer.pt", weights_only=True)
        except Exception as err:  # unreadable: fall back to the older one, or start afresh
            print(f"ignoring unreadable checkpoint {folder}: {type(err).__name__}: {err}", flush=True)
    return None


def load_checkpoint(ckpt_dir: str | Path, model: torch.nn.Module, optimizer, scheduler,
                    generator: torch.Generator | None = None, scaler=None) -> dict | None:
    """Restore the last checkpoint if there is one; returns its training state or None."""
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


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    params = list(unwrap(model).parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.start


def check_finite(loss: torch.Tensor, where: str, step: int) -> None:
    if not math.isfinite(loss.item()):
        from dapt.errors import UserError

        raise UserError(where, f"loss is {loss.item()} at step {step}: training diverged",
                        "lower lr, the learning rate, in the config, or use precision: fp32")


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false", "False")
