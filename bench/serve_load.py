"""bench/bench_serve.py's load generator: keep-alive HTTP clients on asyncio sending single-text requests,
and the summary of a run (throughput, latency percentiles, answers by status)."""

from __future__ import annotations

import asyncio
import time

import numpy as np


async def read_answer(reader) -> tuple[int, bool]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    fields = dict((k.strip().lower(), v.strip()) for k, _, v in (h.partition(":") for h in head[1:] if h))
    await reader.readexactly(int(fields.get("content-length", "0")))
    return int(head[0].split()[1]), fields.get("connection", "").lower() == "close"


async def load(
    port: int, bodies: list[bytes], token: str, clients: int, n: int, seconds: float, timeout: float, stamps=False
):
    """(latency s, status) of each request, with `stamps` (sent at, latency s, status) on the perf_counter
    clock; status 0: no answer (connection error or --timeout)."""
    done: list[tuple[float, int]] = []
    sent, deadline = [0], time.monotonic() + seconds
    head = f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
    head += "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n"

    async def client() -> None:
        reader = writer = None
        while sent[0] < n and time.monotonic() < deadline:
            body = bodies[sent[0] % len(bodies)]
            sent[0] += 1
            start, close = time.perf_counter(), True
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(head.format(len(body)).encode() + body)
                status, close = await asyncio.wait_for(read_answer(reader), timeout)
            except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                status = 0
            latency = time.perf_counter() - start
            done.append((start, latency, status) if stamps else (latency, status))
            if close and writer is not None:
                writer.close()
                writer = None

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return done, time.perf_counter() - start


def summarize(done: list, wall: float) -> dict:
    ok = np.asarray([t for t, s in done if s == 200]) * 1000
    pct = {f"p{q}_ms": round(float(np.percentile(ok, q)), 2) if len(ok) else None for q in (50, 95, 99)}
    statuses: dict[str, int] = {}
    for _, s in done:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    return {
        "requests": len(done),
        "throughput_per_s": round(len(ok) / wall, 1),
        **pct,
        "max_ms": round(max(t for t, _ in done) * 1000, 2) if done else None,
        "errors": len(done) - len(ok),
        "statuses": statuses,
        "seconds": round(wall, 2),
    }
