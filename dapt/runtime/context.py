"""Pieces both training loops share: runtime set-up, optimizer and schedule, model bookkeeping."""

from __future__ import annotations

import contextlib
import math
import resource
import time
from dataclasses import dataclass

import torch

from dapt.runtime.distributed import dist_info, init_distributed, pick_device
from dapt.runtime.precision import choose_precision, set_deterministic


@dataclass
class Runtime:
    """Where and how a job computes: device, number format, place among data-parallel processes."""

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
        """What results record about the run's hardware and number format (and why that format)."""
        out = {
            "device": self.precision.get("device_name", str(self.device)),
            "precision": self.precision["precision"],
            "precision_reason": self.precision.get("reason", ""),
            "world_size": self.world_size,
            "threads": torch.get_num_threads(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
        }
        probe = self.precision.get("probe")
        if probe:
            out["precision_probe"] = {k: probe[k] for k in ("fp32_gflops", "bf16_gflops") if k in probe}
        return out


def setup_runtime(
    seed: int,
    precision: str = "auto",
    threads: int | None = None,
    deterministic: bool = False,
    model_dir: str | None = None,
) -> Runtime:
    """Threads, device, process group, determinism, seed and number format (probed on `model_dir`'s
    shapes on a CPU, see `dapt.runtime.precision`)."""
    if threads:
        torch.set_num_threads(threads)
    rank, world_size, _ = dist_info()
    device = pick_device()
    init_distributed(device.type)
    set_deterministic(deterministic)
    torch.manual_seed(seed)
    chosen = choose_precision(precision, device, model_dir)
    return Runtime(device=device, precision=chosen, rank=rank, world_size=world_size)


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
    return {
        k: v.detach().to("cpu", copy=True).contiguous()
        for k, v in state.items()
        if not only_trainable or (k in named and named[k].requires_grad)
    }


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


def check_finite(loss: torch.Tensor | float, where: str, step: int) -> None:
    value = loss.item() if isinstance(loss, torch.Tensor) else float(loss)
    if not math.isfinite(value):
        from dapt.core.errors import Diverged

        raise Diverged(
            where,
            f"loss is {value} at step {step}: training diverged",
            "lower lr, the learning rate, in the config, or use precision: fp32",
            step=step,
        )
