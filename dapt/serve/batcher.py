"""Dynamic micro-batching: the texts of concurrent requests are gathered into one batch (up to `max_batch`
texts, waiting at most `max_wait` after the oldest arrived), run by one model thread, and handed back to each
request. While the model runs one batch the next one gathers, so under load batches fill by themselves and
at low load a request waits at most `max_wait`. A request that would take the waiting texts past
`max_queue` is refused at once (`QueueFull`: the service answers 503 with Retry-After).

`run_sorted` is what the model thread runs: the batch's texts sorted by token length and cut into model
calls of at most `batch_tokens` padded tokens, so short texts are not padded to a long one's length.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

import numpy as np

from dapt.serve import metrics


class ModelThread(Executor):
    """One daemon thread that runs everything the model does (load, warm-up, batches): the predictor is
    never used by two threads, and a process stopped while its model still loads exits at once."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._work, name="dapt-model", daemon=True).start()

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        self._jobs.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args, kwargs = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as err:  # noqa: BLE001  (handed to the waiting request)
                    future.set_exception(err)


class QueueFull(Exception):
    """The waiting texts would exceed the queue's limit."""


@dataclass
class _Item:
    texts: list[str]
    future: asyncio.Future
    since: float = field(default_factory=time.monotonic)


class MicroBatcher:
    def __init__(self, run: Callable[[list[str]], np.ndarray], max_batch: int, max_wait_s: float, max_queue: int):
        self.run, self.max_batch, self.max_wait, self.max_queue = run, max_batch, max_wait_s, max_queue
        self.executor = ModelThread()
        self.pending: deque[_Item] = deque()
        self.queued = 0
        self.flush = False  # set while draining: no more waiting for a batch to fill
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.executor.shutdown(wait=False)

    def submit(self, texts: list[str]) -> asyncio.Future:
        """A future of the texts' probabilities; `QueueFull` at once if they do not fit the queue."""
        if self.queued + len(texts) > self.max_queue:
            raise QueueFull(f"{self.queued} texts are waiting, at most {self.max_queue}")
        item = _Item(texts, asyncio.get_running_loop().create_future())
        self.pending.append(item)
        self.queued += len(texts)
        metrics.QUEUE.set(self.queued)
        self._wake.set()
        return item.future

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _wait(self, timeout: float | None) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def _take(self) -> list[_Item]:
        """Whole requests, oldest first, up to `max_batch` texts (a bigger request runs alone)."""
        items = [self.pending.popleft()]
        n = len(items[0].texts)
        while self.pending and n + len(self.pending[0].texts) <= self.max_batch:
            items.append(self.pending.popleft())
            n += len(items[-1].texts)
        self.queued -= n
        metrics.QUEUE.set(self.queued)
        return items

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.pending:
                await self._wait(None)
            deadline = self.pending[0].since + self.max_wait
            while self.queued < self.max_batch and not self.flush and time.monotonic() < deadline:
                await self._wait(deadline - time.monotonic())
            items = [i for i in self._take() if not i.future.cancelled()]
            texts = [t for item in items for t in item.texts]
            if not texts:
                continue
            try:
                probs = await loop.run_in_executor(self.executor, self.run, texts)
            except Exception as err:  # noqa: BLE001  (each waiting request answers with it)
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(err)
                continue
            start = 0
            for item in items:
                if not item.future.done():
                    item.future.set_result(probs[start : start + len(item.texts)])
                start += len(item.texts)


def run_sorted(predictor, texts: list[str], batch_tokens: int) -> np.ndarray:
    """Probabilities of `texts` (in their order) by a `dapt.deploy.predict.Predictor`, reading each text as
    it does. head: tokenized once, sorted by length, model calls of at most `batch_tokens` padded tokens;
    head_tail and windows: sorted by characters, handed to the predictor's own long-text reading."""
    start = time.perf_counter()
    if predictor.long_text is not None:
        order = np.argsort([len(t) for t in texts], kind="stable")
        rows = max(1, batch_tokens // predictor.max_length)
        probs = np.empty((len(texts), len(predictor.labels)), dtype=np.float32)
        probs[order] = predictor.predict_proba([texts[i] for i in order], rows)
        _observe(len(texts), start)
        return probs
    from dapt.deploy.measure import pad
    from dapt.deploy.onnx import softmax

    ids = predictor.tokenizer(texts, truncation=True, max_length=predictor.max_length, verbose=False)["input_ids"]
    lengths = np.asarray([len(x) for x in ids])
    order = np.argsort(lengths, kind="stable")
    pad_id = predictor.tokenizer.pad_token_id or 0
    probs = np.empty((len(texts), len(predictor.labels)), dtype=np.float32)
    i = 0
    while i < len(order):
        j = i + 1  # sorted ascending: the chunk's width is its last text's length
        while j < len(order) and (j + 1 - i) * lengths[order[j]] <= batch_tokens:
            j += 1
        chunk = order[i:j]
        probs[chunk] = softmax(predictor.logits(*pad([np.asarray(ids[k]) for k in chunk], pad_id)))
        i = j
    _observe(len(texts), start)
    return probs


def _observe(n: int, start: float) -> None:
    metrics.BATCH_TEXTS.observe(n)
    metrics.BATCH_SECONDS.observe(time.perf_counter() - start)
    metrics.TEXTS.inc(n)
