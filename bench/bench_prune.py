"""Structured pruning with distillation, measured as the deploy stage measures it: the example study
`config/examples/prune.yaml` (the default study's model, data and task; base, seed 1, full fine-tuning;
`deploy.prune`) run through Snakemake to its deploy report from an empty folder, and the report's rows
(`results/report/deploy.csv`: every format of the unpruned export, of the pruned + distilled model and of
the same pruned model fine-tuned on the hard labels alone; each format measured in a fresh process)
written into one record (bench/record.py).

    .venv/bin/python bench/bench_prune.py --json bench/results/prune.json
    .venv/bin/python bench/bench_prune.py --config my_prune.yaml --workdir /tmp/prune --json /tmp/prune.json

Targets (issue 24; batch-1 speed = 1 / p50 latency at batch 1, against the unpruned ONNX fp32 graph; F1
against the unpruned PyTorch fp32 model): pruned + distilled ONNX fp32 >= 1.8x at <= 1.5 points macro-F1
below; pruned + distilled int8 ONNX >= 4x at <= 2 points. Last line:
``pruned_speedup= pruned_f1_drop= pruned_int8_speedup= pruned_int8_f1_drop= hard_f1_drop=`` (F1 drops in
points, positive = worse; `hard`: the pruned model without distillation, ONNX fp32).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import record  # noqa: E402
from study_measure import measure  # noqa: E402

NUMERIC = ("macro_f1", "latency_p50_ms", "latency_p95_ms", "throughput_per_s", "size_mb", "params", "layers")


def read_rows(csv_path: Path) -> list[dict]:
    """deploy.csv's rows, numbers as numbers (empty cells as None)."""
    rows = []
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            out: dict = {}
            for k, v in row.items():
                try:
                    out[k] = None if v == "" else float(v)
                except ValueError:
                    out[k] = v
            rows.append(out)
    return rows


def summarize(rows: list[dict]) -> dict:
    """Speed-ups and F1 drops of the pruned models against the unpruned export of the same run."""
    at = {(r["pruning"], r["format"]): r for r in rows}
    base_onnx, base_pt = at.get(("none", "onnx")), at.get(("none", "pytorch"))
    if not (base_onnx and base_pt):
        raise SystemExit("deploy.csv: no unpruned pytorch and onnx rows (is deploy.formats missing one?)")

    def speedup(pruning: str, fmt: str) -> float | None:
        r = at.get((pruning, fmt))
        return round(base_onnx["latency_p50_ms"] / r["latency_p50_ms"], 2) if r else None

    def drop(pruning: str, fmt: str) -> float | None:
        r = at.get((pruning, fmt))
        return round(100 * (base_pt["macro_f1"] - r["macro_f1"]), 2) if r else None

    s = {
        "pruned_speedup": speedup("distilled", "onnx"),
        "pruned_f1_drop": drop("distilled", "onnx"),
        "pruned_int8_speedup": speedup("distilled", "onnx_int8"),
        "pruned_int8_f1_drop": drop("distilled", "onnx_int8"),
        "hard_speedup": speedup("hard", "onnx"),
        "hard_f1_drop": drop("hard", "onnx"),
        "unpruned_int8_speedup": speedup("none", "onnx_int8"),
        "unpruned_int8_f1_drop": drop("none", "onnx_int8"),
        "unpruned_macro_f1": round(100 * base_pt["macro_f1"], 2),
    }
    s["target_pruned"] = bool(s["pruned_speedup"] and s["pruned_speedup"] >= 1.8 and s["pruned_f1_drop"] <= 1.5)
    s["target_pruned_int8"] = bool(
        s["pruned_int8_speedup"] and s["pruned_int8_speedup"] >= 4.0 and s["pruned_int8_f1_drop"] <= 2.0
    )
    return s


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "config" / "examples" / "prune.yaml"))
    p.add_argument("--workdir", default=str(REPO / "results" / "bench" / "prune"), help="emptied first")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--json", required=True, help="the run's record (bench/record.py)")
    args = p.parse_args(argv)
    run = record.Run("bench_prune", threads=args.cores, argv=[sys.argv[0], *(argv or sys.argv[1:])])
    work = Path(args.workdir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    cmd = [snakemake, "-s", str(REPO / "Snakefile"), "--configfile", str(Path(args.config).resolve())]
    cmd += ["--cores", str(args.cores), "deploy"]
    print(f"{' '.join(cmd)} (in {work}) ...", flush=True)
    side = measure(cmd, work, work / "bench_prune.log")
    rows = read_rows(work / "results" / "report" / "deploy.csv")
    summary = summarize(rows)
    keep = ("task", "method", "pruning", "format", "layers", "ffn_width", "params", "threads", *NUMERIC[:5])
    results = {"config": args.config, "run": side, "rows": [{k: r.get(k) for k in keep} for r in rows]}
    results["summary"] = summary
    run.write(args.json, results)
    for r in results["rows"]:
        print(r)
    keys = ("pruned_speedup", "pruned_f1_drop", "pruned_int8_speedup", "pruned_int8_f1_drop", "hard_f1_drop")
    print(" ".join(f"{k}={summary[k]}" for k in keys))
    return results


if __name__ == "__main__":
    main()
