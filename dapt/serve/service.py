"""One worker's service: its model (loaded and warmed in the background while /healthz already answers), the
micro-batcher in front of it, and the drain on SIGTERM: new requests answer 503, the requests in flight
finish, then uvicorn's own shutdown runs."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from dapt.serve import logs, metrics
from dapt.serve.batcher import MicroBatcher, run_sorted
from dapt.serve.settings import Settings

#: Exit status of a worker whose model does not load (uvicorn's STARTUP_FAILURE: its supervisor then stops
#: instead of restarting the worker again and again).
LOAD_FAILED = 3
WARM_UP = ["a short text", "a somewhat longer text to warm up the model " * 64]


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def model_threads(s: Settings) -> int:
    """--threads, or this machine's cores shared by the workers."""
    return s.threads or max(1, cores() // s.workers)


class Service:
    def __init__(self, settings: Settings, token: str | None) -> None:
        self.settings = settings
        self.token_digest = hashlib.sha256(token.encode()).digest() if token else None
        path = Path(settings.model).resolve()
        self.model_name = path.parent.name if path.is_file() else path.name  # the export's folder
        self.predictor = None
        self.ready = False
        self.draining = False
        self.in_flight = 0
        self.load_seconds: float | None = None
        self.batcher = MicroBatcher(self._run, settings.max_batch, settings.max_wait_ms / 1000, settings.max_queue)

    @property
    def labels(self) -> list[str]:
        return self.predictor.labels

    def _run(self, texts: list[str]) -> np.ndarray:
        return run_sorted(self.predictor, texts, self.settings.batch_tokens)

    async def start(self) -> None:
        metrics.forget_dead_workers()
        metrics.READY.set(0)
        self.batcher.start()
        loop = asyncio.get_running_loop()
        self._loading = loop.create_task(self._load())
        hook_signals(self, loop)

    async def stop(self) -> None:
        metrics.READY.set(0)
        await self.batcher.stop()
        if os.environ.get(metrics.MULTIPROC_ENV):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())

    async def predict(self, texts: list[str]) -> np.ndarray:
        """The texts' probabilities from the next batch (`QueueFull` at once if they do not fit)."""
        return await self.batcher.submit(texts)

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.batcher.executor, self._load_blocking)
        except Exception as err:  # noqa: BLE001  (any failure: one line, and the worker stops)
            logs.event("the model did not load", logging.ERROR, error=str(err).splitlines()[0][:500])
            print(f"error: {str(err).splitlines()[0][:500]}", file=sys.stderr, flush=True)
            os._exit(LOAD_FAILED)
        if not self.draining:
            self.ready = True
            metrics.READY.set(1)
        logs.event("ready", model=self.settings.model, load_seconds=round(self.load_seconds, 3))

    def _load_blocking(self) -> None:
        from dapt.deploy.predict import Predictor, choose_reading

        start = time.perf_counter()
        threads = model_threads(self.settings)
        predictor = Predictor(self.settings.model, threads, self.settings.reading["max_length"])
        reading, line = choose_reading(argparse.Namespace(**self.settings.reading), predictor)
        predictor.use(reading)
        predictor.predict_proba(WARM_UP, batch_size=2)  # first-call allocations and lazy initialisation
        self.predictor = predictor
        self.load_seconds = time.perf_counter() - start
        metrics.LOAD_SECONDS.set(self.load_seconds)
        logs.event(
            "model loaded",
            model=self.settings.model,
            format="onnx" if predictor.onnx else "pytorch",
            labels=predictor.labels,
            threads=threads,
            reading=line.split(": ", 1)[-1],
        )

    def begin_drain(self) -> None:
        """Called in the event loop: /readyz and new predictions answer 503, the batcher stops waiting."""
        self.draining = True
        self.ready = False
        metrics.READY.set(0)
        self.batcher.flush = True
        self.batcher.wake()

    async def drain_then(self, exit_now) -> None:
        """Wait for the requests in flight (at most --drain-timeout, at least --drain-delay), then `exit_now()`."""
        self.begin_drain()
        start = time.monotonic()
        logs.event("draining", in_flight=self.in_flight)
        while self.in_flight and time.monotonic() - start < self.settings.drain_timeout:
            await asyncio.sleep(0.02)
        rest = self.settings.drain_delay - (time.monotonic() - start)
        if rest > 0:
            await asyncio.sleep(rest)
        logs.event("drained", in_flight=self.in_flight, seconds=round(time.monotonic() - start, 3))
        exit_now()


def hook_signals(service: Service, loop: asyncio.AbstractEventLoop) -> None:
    """Put a drain in front of uvicorn's SIGTERM/SIGINT handler (installed before the app starts, restored
    after it stops): the first signal drains, then hands the signal to uvicorn; a second goes to uvicorn at
    once (SIGINT twice forces the exit)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            uvicorn_handler = signal.getsignal(sig)
            if not callable(uvicorn_handler):
                continue

            def handler(signum, frame, forward=uvicorn_handler):
                if service.draining:
                    forward(signum, frame)
                    return
                service.draining = True  # only plain assignments here: the loop may be mid-callback
                exit_now = lambda: forward(signum, None)
                loop.call_soon_threadsafe(lambda: loop.create_task(service.drain_then(exit_now)))

            signal.signal(sig, handler)
        except ValueError:  # not the main thread (an embedding test client): no drain
            return
