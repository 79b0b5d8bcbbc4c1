"""bench/bench_prune.py's summary: speed-ups against the unpruned ONNX fp32 graph at batch 1, F1 drops
against the unpruned PyTorch model, the targets, and its reading of deploy.csv."""

import csv
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import bench_prune  # noqa: E402


def row(pruning, fmt, f1, p50):
    return {"pruning": pruning, "format": fmt, "macro_f1": f1, "latency_p50_ms": p50}


ROWS = [
    row("none", "pytorch", 0.770, 16.0),
    row("none", "onnx", 0.770, 10.0),
    row("none", "onnx_int8", 0.765, 5.0),
    row("distilled", "onnx", 0.760, 5.0),
    row("distilled", "onnx_int8", 0.752, 2.0),
    row("hard", "onnx", 0.740, 5.0),
]


def test_summary_against_the_unpruned_onnx_and_pytorch_rows():
    s = bench_prune.summarize(ROWS)
    assert s["pruned_speedup"] == 2.0 and s["pruned_f1_drop"] == 1.0
    assert s["pruned_int8_speedup"] == 5.0 and s["pruned_int8_f1_drop"] == 1.8
    assert s["hard_f1_drop"] == 3.0 and s["unpruned_int8_speedup"] == 2.0
    assert s["target_pruned"] and s["target_pruned_int8"]
    worse = [r if r["pruning"] != "distilled" else {**r, "macro_f1": r["macro_f1"] - 0.01} for r in ROWS]
    s = bench_prune.summarize(worse)
    assert s["pruned_f1_drop"] == 2.0 and not s["target_pruned"] and s["pruned_int8_f1_drop"] == 2.8
    assert not s["target_pruned_int8"]


def test_summary_refuses_a_report_without_the_unpruned_rows():
    with pytest.raises(SystemExit, match="no unpruned"):
        bench_prune.summarize([r for r in ROWS if r["pruning"] != "none" or r["format"] != "onnx"])


def test_read_rows_types_numbers_and_empty_cells(tmp_path):
    path = tmp_path / "deploy.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["pruning", "format", "macro_f1", "latency_p50_ms", "speedup_b1_vs_onnx"])
        w.writeheader()
        w.writerow(
            {"pruning": "none", "format": "onnx", "macro_f1": "0.77", "latency_p50_ms": "10", "speedup_b1_vs_onnx": ""}
        )
    (r,) = bench_prune.read_rows(path)
    assert r == {
        "pruning": "none",
        "format": "onnx",
        "macro_f1": 0.77,
        "latency_p50_ms": 10.0,
        "speedup_b1_vs_onnx": None,
    }
