"""Sides of a comparison take strict turns, so load from other processes falls on all of them alike."""

from __future__ import annotations

import statistics
import threading
import time

import torch


class TurnTaker:
    """Run jobs in threads that strictly take turns: a job computes until it calls `tick()`, then
    the next job runs. Each job's time is the sum of its own turns; so two jobs see the same
    machine, whatever else runs on it. Also counts, per job and per turn, the real tokens and
    examples entering a word embedding and the rows entering a vocabulary projection."""

    def __init__(self, vocab_size: int, pad_id: int | None, training_only: bool = False):
        self.training_only = training_only  # training benchmarks: count no validation/inference pass
        self.cond = threading.Condition()
        self.local = threading.local()
        self.order: list[str] = []
        self.active: list[str] = []
        self.turn: str | None = None
        self.vocab_size = vocab_size
        self.pad_id = pad_id
        self.turns: dict[str, list[dict]] = {}
        self.tails: dict[str, float] = {}
        self.results: dict = {}
        self.errors: dict = {}

    # -- counting, from a global forward pre-hook: fires for every module call in every thread
    def _count(self, module, args):
        name = getattr(self.local, "name", None)
        if name is None or not args or not isinstance(args[0], torch.Tensor):
            return
        # a training loop's own validation (ours: every epoch) runs in eval mode without gradients:
        # its examples are not training examples, though its time stays in the step it delays
        if self.training_only and not (module.training and torch.is_grad_enabled()):
            return
        if isinstance(module, torch.nn.Embedding) and module.num_embeddings == self.vocab_size:
            ids = args[0]
            c = self.local.counts
            c["examples"] += ids.shape[0] if ids.dim() > 1 else 1
            c["tokens"] += int((ids != self.pad_id).sum()) if self.pad_id is not None else ids.numel()
            c["positions"] += ids.numel()
            c["width"] = max(c["width"], ids.shape[-1])
        elif isinstance(module, torch.nn.Linear) and module.out_features == self.vocab_size:
            self.local.counts["vocab_rows"] += args[0].numel() // args[0].shape[-1]

    @staticmethod
    def _zero() -> dict:
        return {"examples": 0, "tokens": 0, "positions": 0, "vocab_rows": 0, "width": 0}

    def tick(self, *_args, **_kwargs) -> None:
        name = getattr(self.local, "name", None)
        if name is None:
            return
        now = time.perf_counter()
        self.turns[name].append({"seconds": now - self.local.start, **self.local.counts})
        self.local.counts = self._zero()
        with self.cond:
            self._pass(name)
            self.cond.wait_for(lambda: self.turn == name)
        self.local.start = time.perf_counter()

    def _pass(self, name: str) -> None:
        live = [n for n in self.order if n in self.active]
        if not live:
            self.turn = None
        else:
            i = self.order.index(name)
            nxt = [n for n in self.order[i + 1 :] + self.order[: i + 1] if n in live]
            self.turn = nxt[0]
        self.cond.notify_all()

    def _thread(self, name: str, fn, threads: int | None) -> None:
        if threads:
            torch.set_num_threads(threads)  # OpenMP's thread count is per calling thread
        with self.cond:
            self.cond.wait_for(lambda: self.turn == name)
        self.local.name = name
        self.local.counts = self._zero()
        self.local.start = time.perf_counter()
        try:
            self.results[name] = fn()
        except BaseException as err:  # reported by run(); the other jobs go on alone meanwhile
            self.errors[name] = err
        finally:
            self.tails[name] = time.perf_counter() - self.local.start
            self.local.name = None
            with self.cond:
                self.active.remove(name)
                self._pass(name)

    def running(self, name: str) -> bool:
        with self.cond:
            return name in self.active

    def run(self, jobs: dict, threads: int | None = None) -> dict:
        self.order = list(jobs)
        self.active = list(jobs)
        self.turn = self.order[0]
        for name in jobs:
            self.turns[name] = []
        hooks = [torch.nn.modules.module.register_module_forward_pre_hook(self._count)]
        workers = [
            threading.Thread(target=self._thread, args=(n, fn, threads), name=f"bench-{n}") for n, fn in jobs.items()
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        for h in hooks:
            h.remove()
        if self.errors:
            name, err = next(iter(self.errors.items()))
            raise RuntimeError(f"benchmark job {name!r} failed: {type(err).__name__}: {err}") from err
        return self.results


def steady(turns: list[dict], skip: int = 1) -> dict:
    """Totals over turns skip+1.. (the first holds one-off set-up), and the median turn."""
    part = turns[skip:] if len(turns) > skip else turns
    total = {k: sum(t[k] for t in part) for k in ("seconds", "examples", "tokens", "positions", "vocab_rows")}
    total["turns"] = len(part)
    total["median_seconds"] = statistics.median(t["seconds"] for t in part) if part else float("nan")
    total["width"] = max((t["width"] for t in part), default=0)
    return total


def totals(turns: list[dict], tail: float = 0.0) -> dict:
    total = {k: sum(t[k] for t in turns) for k in ("seconds", "examples", "tokens", "positions", "vocab_rows")}
    total["seconds"] += tail
    total["turns"] = len(turns)
    return total


def run_ticked(tt: TurnTaker, jobs: dict, threads: int | None) -> dict:
    """Run training jobs that pass the turn at every optimizer step: ours and the Trainer's alike,
    so neither side needs a change to be interleaved."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: tt.tick())
    try:
        return tt.run(jobs, threads)
    finally:
        handle.remove()
