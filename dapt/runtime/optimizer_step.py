"""The optimizer step both training loops take, its checkpoints, and the progress lines it logs.

One implementation of what pretraining and fine-tuning share, so that they cannot drift apart:
gradient accumulation over micro-batches (gradients all-reduced once, after the last), loss scaling
for fp16 (a GradScaler whose state is part of every checkpoint), unscaling before clipping, the
optimizer and schedule step (skipped with the scaler when gradients overflow), and when to write a
checkpoint. Each loop keeps only what is its own: how a micro-batch's loss is computed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from dapt.runtime.checkpoints import load_checkpoint, save_checkpoint
from dapt.runtime.context import Runtime, check_finite

#: A micro-batch's work: forward under autocast; returns (the objective to backpropagate, a value to log).
MicroStep = Callable[[Any], tuple[torch.Tensor, float]]


def split_micro(rows: Sequence, accum: int) -> list:
    """This rank's rows in `accum` micro-batches of near-equal size (fewer if there are fewer rows)."""
    size = -(-len(rows) // max(1, accum))
    return [rows[i : i + size] for i in range(0, len(rows), size)]


class Stepper:
    """Takes optimizer steps for one model; `optimizer`/`scheduler` may be replaced between steps
    (pretraining's head warm-up phase ends with a new optimizer)."""

    def __init__(
        self,
        runtime: Runtime,
        module: torch.nn.Module,
        params: Callable[[], Any],
        max_grad_norm: float,
        where: str,
        after_step: Callable[[int], None] | None = None,
        check_loss: bool = True,
    ):
        self.runtime, self.module, self.params, self.check_loss = runtime, module, params, check_loss
        self.max_grad_norm, self.where, self.after_step = max_grad_norm, where, after_step
        self.scaler = torch.amp.GradScaler(runtime.device.type) if runtime.precision.get("use_scaler") else None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None

    def use(self, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        self.optimizer, self.scheduler = optimizer, scheduler

    def _sync(self, last: bool):
        """Accumulate locally; all-reduce gradients only with the last micro-batch (DDP)."""
        if last or self.runtime.world_size == 1 or not hasattr(self.module, "no_sync"):
            return contextlib.nullcontext()
        return self.module.no_sync()

    def step(self, micro_batches: list, work: MicroStep, step: int) -> float:
        """Backpropagate every micro-batch, then clip and step; returns the sum of the logged values."""
        self.optimizer.zero_grad(set_to_none=True)
        logged = 0.0
        for i, part in enumerate(micro_batches):
            with self._sync(i == len(micro_batches) - 1):
                objective, value = work(part)
                if self.check_loss:  # else the caller checks (fine-tuning: the loss all ranks agree on)
                    check_finite(objective, self.where, step + 1)  # counted from 1, as the logs count
                (self.scaler.scale(objective) if self.scaler else objective).backward()
            logged += value
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params(), self.max_grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)  # skipped if the gradients overflowed; the scale then drops
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.after_step:
            self.after_step(step)
        self.scheduler.step()
        return logged

    @staticmethod
    def checkpoint_due(step: int, total: int, save_steps: int, end_of_epoch: bool = False) -> bool:
        """Every `save_steps` steps and at each epoch's end, never after the last step (the outputs
        are then written instead)."""
        return (end_of_epoch or step % save_steps == 0) and step < total

    def save(self, ckpt_dir: str | Path, state: dict, generator: torch.Generator | None = None) -> None:
        save_checkpoint(ckpt_dir, self.module, self.optimizer, self.scheduler, state, generator, self.scaler)

    def resume(self, ckpt_dir: str | Path, generator: torch.Generator | None = None) -> dict | None:
        return load_checkpoint(ckpt_dir, self.module, self.optimizer, self.scheduler, generator, self.scaler)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """A line per interval a person can read in a job log (no progress bars: unreadable in files):
    every `every` steps (but not within `min_gap` seconds of the last line, so short runs stay
    readable), at least every `seconds`, and at the last step."""

    def __init__(
        self,
        total: int,
        start_step: int,
        every: int,
        seconds: float = 30.0,
        unit: str = "examples",
        enabled: bool = True,
        min_gap: float = 2.0,
    ):
        self.total, self.every, self.seconds, self.unit, self.enabled = total, max(1, every), seconds, unit, enabled
        self.min_gap = min_gap
        self.start_step, self.started = start_step, time.perf_counter()
        self.last_print, self.count = self.started, 0

    def update(self, step: int, loss: float, count: int, extra: str = "") -> str | None:
        """Count `count` units for this step; print (and return) a line when one is due."""
        self.count += count
        now = time.perf_counter()
        since = now - self.last_print
        due = (step % self.every == 0 and since >= self.min_gap) or since >= self.seconds or step == self.total
        if not self.enabled or not due:
            return None
        self.last_print = now
        elapsed = now - self.started
        done = step - self.start_step
        rate = self.count / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) * elapsed / done if done else 0.0
        line = (
            f"step {step}/{self.total} loss {loss:.4f}{extra} | {rate:.1f} {self.unit}/s | "
            f"elapsed {_clock(elapsed)} | ETA {_clock(eta)}"
        )
        print(line, flush=True)
        return line
