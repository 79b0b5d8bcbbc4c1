"""bench/bench_serve.py end to end on a random tiny model (its numbers mean nothing; the script's logic
does): every server answers, the long run, overload and killed-worker runs happen, the last line and
the JSON record carry what the docs quote."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_bench_serve_tiny_run_records_every_part(tmp_path):
    out = tmp_path / "serve.json"
    cmd = [sys.executable, str(REPO / "bench" / "bench_serve.py"), "--tiny", "--requests", "30"]
    cmd += ["--long-requests", "60", "--concurrency", "1,8,32", "--overload-clients", "96"]
    cmd += ["--threads", "1", "--work", str(tmp_path / "work"), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    fields = dict(kv.split("=") for kv in last.split())
    assert list(fields)[:6] == [
        "serve_speedup",
        "serve_speedup_pruned",
        "p99_ms",
        "b1_p50_ms",
        "errors",
        "worker_back_s",
    ]
    rec = json.loads(out.read_text())
    assert rec["bench"] == "bench_serve" and rec["machine"]["cpu"] and "load_after" in rec
    res = rec["results"]
    servers = {r["server"] for r in res["runs"]}
    assert servers == {"ours_onnx_fp32", "ours_onnx_int8", "peer_pipeline_fp32"}
    assert {r["concurrency"] for r in res["runs"]} == {1, 8, 32}
    assert all(r["requests"] == 30 for r in res["runs"])
    assert res["long_run"]["requests"] == 60 and res["long_run"]["concurrency"] == 32
    assert [r["concurrency"] for r in res["overload"]] == [96, 96]
    ours_overload = res["overload"][0]
    assert ours_overload["server"] == "ours_onnx_int8_small_queue"
    assert set(ours_overload["statuses"]) <= {"200", "503"} and ours_overload["late_or_failed"] == 0
    kill = res["kill"]
    assert kill["workers"] == 2 and kill["answered_200_again_s"] is not None and kill["worker_replaced_s"] is not None
    s = res["summary"]
    at = {(r["server"], r["concurrency"]): r for r in res["runs"]}
    want = at[("ours_onnx_int8", 32)]["throughput_per_s"] / at[("peer_pipeline_fp32", 32)]["throughput_per_s"]
    assert s["serve_speedup"] == round(want, 2) == float(fields["serve_speedup"])
    assert s["p99_ms"] == at[("ours_onnx_int8", 8)]["p99_ms"] and s["b1_p50_ms"] == at[("ours_onnx_int8", 1)]["p50_ms"]
    assert s["serve_speedup_pruned"] is None  # no --pruned given
