"""Load test of the HTTP service (`python -m dapt.serve`) against the service a user writes in twenty lines.

    .venv/bin/python bench/bench_serve.py --out results/bench/serve.json      # after bench/bench_deploy.py
    .venv/bin/python bench/bench_serve.py --export results/deploy/rt_polarity/full/export \
        --pruned results/deploy/rt_polarity/full/pruned --out serve.json
    .venv/bin/python bench/bench_serve.py --tiny --requests 40 --long-requests 100 --out /tmp/serve.json  # smoke

The model: an export folder holding `pytorch/`, `onnx/` and `onnx_int8/` (as the deploy stage and
bench/bench_deploy.py write them; default: bench_deploy's MiniLM run), with --pruned a pruned model's export
folder (its `onnx_int8/`), or with --tiny a random 2-layer BERT (to check this script only: its numbers say
nothing). Servers, all on loopback, --threads T each (bench/serve_servers.py):
* ours, fp32 ONNX, int8 ONNX and pruned int8 ONNX: `python -m dapt.serve` with its defaults
  (micro-batching, a bearer token, JSON access logs), one worker;
* the peer: FastAPI + `transformers.pipeline("text-classification")` of `pytorch/` (PyTorch fp32), one
  request at a time (a lock), torch.set_num_threads(T): `serve_servers.peer_serve` is the whole of it.
The load generator (bench/serve_load.py: this process, asyncio, one keep-alive connection per client; it
shares the CPU with the servers) sends single-text requests, the same texts (tests/data/rt_sample.csv) to
every server, at concurrency 1, 8, 32 and 64, --requests N each (at most --max-seconds per run); the servers
take turns at each concurrency. Per run: throughput (answers 200 per second), p50/p95/p99 latency, errors
(not 200), the server's peak memory (VmHWM). Then, against ours int8: --long-requests at concurrency 32 (must
all be 200); overload, 256 clients against ours (int8, --max-queue 64) and the peer: every request must get
200 or 503 within 2 s; a worker killed: ours int8 with --workers 2 under load at concurrency 8, one worker
SIGKILLed, the seconds until the service answers 200 again and until a new worker runs.

Last line: `serve_speedup=` (ours int8 over the peer in throughput at concurrency 32) `serve_speedup_pruned=`
(ours pruned int8 over the peer, same) `p99_ms=` (ours int8 at concurrency 8; `b1_p50_ms=` its concurrency-1
p50) `errors=` (ours' non-200 answers in the runs and the long run, plus its overload answers other than
200/503 or slower than 2 s) `worker_back_s=`, and `pruned_speedup= pruned_f1_drop=` copied from the
bench/bench_prune.py record given with --prune-record. --out: one JSON record (bench/record.py).
"""

import argparse
import asyncio
import json
import os
import secrets
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import record  # noqa: E402
from serve_load import load, summarize  # noqa: E402
from serve_servers import Server, peer_serve, tiny_export  # noqa: E402


def run_load(s: Server, bodies, token, clients, n, args, within: float | None = None) -> dict:
    """One run against one server; with `within`, also the answers other than 200/503 or slower than that."""
    done, wall = asyncio.run(load(s.port, bodies, token, clients, n, args.max_seconds, args.timeout))
    row = {"server": s.name, "concurrency": clients, **summarize(done, wall), "peak_rss_mb": s.peak_rss_mb()}
    if within is not None:
        row["not_200_or_503_within_s"] = within
        row["late_or_failed"] = sum(1 for t, st in done if st not in (200, 503) or t > within)
        row["ok"] = row["late_or_failed"] == 0
    return row


def kill_a_worker(s: Server, bodies, token, args) -> dict:
    """SIGKILL one of ours' two workers while 8 clients send requests: seconds to the next 200 answer sent
    after the kill, and to a replacement worker; the answers during the run by status."""
    import psutil

    deadline = time.monotonic() + 60
    while len(s.workers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    before = s.workers()
    out: dict = {}

    def loader() -> None:
        out["done"], out["wall"] = asyncio.run(load(s.port, bodies, token, 8, 10**9, 12, args.timeout, stamps=True))

    thread = threading.Thread(target=loader)
    thread.start()
    time.sleep(3)
    victim = min(before)
    psutil.Process(victim).kill()
    killed = time.perf_counter()
    replaced = None
    while time.perf_counter() - killed < 30 and replaced is None:
        if s.workers() - before:
            replaced = time.perf_counter() - killed
        time.sleep(0.05)
    thread.join()
    after = [(t0 - killed, lat, st) for t0, lat, st in out["done"] if t0 > killed]
    back = min((t0 + lat for t0, lat, st in after if st == 200), default=None)
    summary = summarize([(lat, st) for _, lat, st in out["done"]], out["wall"])
    return {
        "server": s.name,
        "workers": len(before),
        "killed_pid": victim,
        "answered_200_again_s": None if back is None else round(back, 3),
        "worker_replaced_s": None if replaced is None else round(replaced, 3),
        **{k: summary[k] for k in ("requests", "errors", "statuses")},
        "ok": back is not None and back <= 10 and replaced is not None and replaced <= 10,
    }


def pruned_numbers(prune_record: str | None) -> dict:
    """The pruned model's batch-1 speed-up over the unpruned ONNX fp32 graph and its macro-F1 drop (points),
    from bench/bench_prune.py's record of the same model (None without one)."""
    if not prune_record:
        return {"pruned_speedup": None, "pruned_f1_drop": None}
    summary = json.loads(Path(prune_record).read_text())["results"]["summary"]
    return {"pruned_speedup": summary["pruned_speedup"], "pruned_f1_drop": summary["pruned_f1_drop"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export", default=str(REPO / "results" / "bench" / "deploy" / "export"))
    p.add_argument("--pruned", help="a pruned model's export folder (its onnx_int8/ is served too)")
    p.add_argument("--prune-record", help="bench/bench_prune.py's record of that model (for the last line)")
    p.add_argument("--tiny", action="store_true", help="a random tiny model instead of --export (smoke test)")
    p.add_argument("--requests", type=int, default=2000, help="requests per run (each concurrency, each server)")
    p.add_argument("--long-requests", type=int, default=10000, help="requests of the long run (int8, conc. 32)")
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
    run = record.Run("bench_serve", threads=args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    export = tiny_export(work) if args.tiny else Path(args.export)
    pruned = Path(args.pruned) if args.pruned else None
    missing = [f for f in ("pytorch", "onnx", "onnx_int8") if not (export / f).is_dir()]
    if pruned and not (pruned / "onnx_int8").is_dir():
        missing.append(f"{pruned}/onnx_int8")
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
    if pruned:
        specs["ours_pruned_int8"] = [*ours, "--model", str(pruned / "onnx_int8")]
    servers = {name: Server(name, cmd, work / f"{name}.log", env) for name, cmd in specs.items()}
    rows, overload, long_run, kill = [], [], None, None
    try:
        for s in servers.values():
            s.wait_ready()
            asyncio.run(load(s.port, bodies, token, 4, 40, 60, args.timeout))  # warm-up, not counted
        for c in [int(x) for x in args.concurrency.split(",")]:
            for s in servers.values():
                rows.append(run_load(s, bodies, token, c, args.requests, args))
                print(json.dumps(rows[-1]), flush=True)
        if args.long_requests:
            long_run = run_load(servers["ours_onnx_int8"], bodies, token, 32, args.long_requests, args)
            print(json.dumps({"long_run": long_run}), flush=True)
        for s in servers.values():
            if s.name != "peer_pipeline_fp32":
                s.stop()  # the overload and kill runs get the cores
        small_queue = [*specs["ours_onnx_int8"], "--max-queue", str(args.overload_queue)]
        small = servers["small_queue"] = Server("ours_onnx_int8_small_queue", small_queue, work / "overload.log", env)
        small.wait_ready()
        for s in (small, servers["peer_pipeline_fp32"]):
            overload.append(run_load(s, bodies, token, args.overload_clients, args.requests, args, within=2.0))
            print(json.dumps(overload[-1]), flush=True)
        for s in servers.values():
            s.stop()
        two = [*ours[:-1], str(max(1, args.threads // 2)), "--workers", "2", "--model", str(export / "onnx_int8")]
        killed = servers["two_workers"] = Server("ours_onnx_int8_two_workers", two, work / "kill.log", env)
        killed.wait_ready()
        kill = kill_a_worker(killed, bodies, token, args)
        print(json.dumps({"kill": kill}), flush=True)
    finally:
        for s in servers.values():
            s.stop()
    at = {(r["server"], r["concurrency"]): r for r in rows}

    def speedup(name: str) -> float | None:
        ours32, peer32 = at.get((name, 32)), at.get(("peer_pipeline_fp32", 32))
        if not (ours32 and peer32 and peer32["throughput_per_s"]):
            return None
        return round(ours32["throughput_per_s"] / peer32["throughput_per_s"], 2)

    b1 = (at.get(("ours_onnx_int8", 1)) or {}).get("p50_ms")
    p99 = (at.get(("ours_onnx_int8", 8)) or {}).get("p99_ms")
    errors = sum(r["errors"] for r in rows if r["server"].startswith("ours"))
    errors += (long_run or {}).get("errors", 0) + overload[0]["late_or_failed"]
    summary = {
        "serve_speedup": speedup("ours_onnx_int8"),
        "serve_speedup_pruned": speedup("ours_pruned_int8"),
        "p99_ms": p99,
        "b1_p50_ms": b1,
        "p99_over_b1_p50": round(p99 / b1, 2) if p99 and b1 else None,
        "errors": errors,
        "long_run_errors": (long_run or {}).get("errors"),
        "overload_ok": all(r["ok"] for r in overload),
        "worker_back_s": kill and kill["answered_200_again_s"],
        "worker_replaced_s": kill and kill["worker_replaced_s"],
        **pruned_numbers(args.prune_record),
    }
    results = {
        "export": str(export),
        "pruned": str(pruned) if pruned else None,
        "tiny": args.tiny,
        "texts": len(texts),
        "requests": args.requests,
        "runs": rows,
        "long_run": long_run,
        "overload": overload,
        "kill": kill,
        "summary": summary,
    }
    run.write(args.out, results)
    keys = ("serve_speedup", "serve_speedup_pruned", "p99_ms", "b1_p50_ms", "errors", "worker_back_s")
    keys += ("pruned_speedup", "pruned_f1_drop")
    print(" ".join(f"{k}={summary[k]}" for k in keys))


if __name__ == "__main__":
    main()
