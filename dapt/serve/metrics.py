"""Prometheus metrics (prometheus_client). With several workers the parent sets PROMETHEUS_MULTIPROC_DIR
before any worker starts: each worker writes its samples there and `/metrics`, whichever worker answers,
sums them all (gauges of live workers only: a dead worker's are dropped when its replacement starts)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Paths with their own label; anything else is counted as "other" (no label per scanned URL).
PATHS = ("/v1/predict", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

REQUESTS = Counter("dapt_serve_requests", "HTTP requests answered, by path and status", ["path", "status"])
LATENCY = Histogram(
    "dapt_serve_request_seconds", "Time from request to response, by path", ["path"], buckets=LATENCY_BUCKETS
)
BATCH_TEXTS = Histogram("dapt_serve_batch_texts", "Texts per model batch", buckets=BATCH_BUCKETS)
BATCH_SECONDS = Histogram(
    "dapt_serve_batch_seconds", "Model time per batch (tokenize, run, softmax)", buckets=LATENCY_BUCKETS
)
TEXTS = Counter("dapt_serve_texts", "Texts labelled")
QUEUE = Gauge("dapt_serve_queue_texts", "Texts waiting for a batch", multiprocess_mode="livesum")
IN_FLIGHT = Gauge(
    "dapt_serve_in_flight_requests", "Predict requests admitted, not yet answered", multiprocess_mode="livesum"
)
READY = Gauge("dapt_serve_ready_workers", "Workers with their model loaded and warm", multiprocess_mode="livesum")
LOAD_SECONDS = Gauge(
    "dapt_serve_model_load_seconds", "Seconds a worker took to load and warm its model", multiprocess_mode="liveall"
)


def path_label(path: str) -> str:
    return path if path in PATHS else "other"


def forget_dead_workers() -> None:
    """Drop the live gauges of worker processes that no longer run (killed, replaced)."""
    folder = os.environ.get(MULTIPROC_ENV)
    if not folder:
        return
    from prometheus_client import multiprocess

    for f in Path(folder).glob("gauge_live*_*.db"):
        m = re.search(r"_(\d+)\.db$", f.name)
        if m and not _alive(int(m.group(1))):
            multiprocess.mark_process_dead(int(m.group(1)), folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def exposition() -> tuple[bytes, str]:
    """The text of /metrics and its content type."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
