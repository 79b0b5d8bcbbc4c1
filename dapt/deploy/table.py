"""The deployment table (Markdown, CSV, LaTeX) and a plot of macro-F1 against batch-1 latency."""

from __future__ import annotations

from pathlib import Path

from dapt.core.files import atomic_path, read_json, write_text

FORMAT_NAMES = {
    "pytorch": "PyTorch fp32",
    "pytorch_bf16": "PyTorch bf16",
    "onnx": "ONNX fp32",
    "onnx_fused": "ONNX fp32 fused",
    "onnx_int8": "ONNX int8",
}
#: The fp32 peers each row's speed is stated against (batch-1 p50 latency, batch-32 throughput).
PEERS = ("pytorch", "onnx", "onnx_fused")
COLUMNS = [  # (key, header, format)
    ("task", "task", "{}"),
    ("method", "method", "{}"),
    ("variant", "variant", "{}"),
    ("seed", "seed", "{}"),
    ("format", "format", "{}"),
    ("macro_f1", "macro-F1", "{:.1f}"),
    ("f1_diff_vs_pytorch", "Δ F1", "{:+.2f}"),
    ("accuracy", "accuracy", "{:.1f}"),
    ("agreement_vs_pytorch", "same label", "{:.1%}"),
    ("size_mb", "size MB", "{:.1f}"),
    ("size_ratio_vs_pytorch", "size ratio", "{:.0%}"),
    ("peak_rss_mb", "peak MB", "{:.0f}"),
    ("latency_p50_ms", "p50 ms (b1)", "{:.2f}"),
    ("latency_p95_ms", "p95 ms (b1)", "{:.2f}"),
    ("throughput_per_s", "texts/s (b32)", "{:.1f}"),
    ("speedup_b1_vs_pytorch", "× PyTorch (b1)", "{:.2f}"),
    ("speedup_b1_vs_onnx", "× ONNX fp32 (b1)", "{:.2f}"),
    ("speedup_b1_vs_onnx_fused", "× fused fp32 (b1)", "{:.2f}"),
    ("threads", "threads", "{}"),
]
PERCENT_POINTS = ("macro_f1", "accuracy", "f1_diff_vs_pytorch", "f1_diff_vs_unpruned")
#: Columns added after `format` when a study prunes (deploy.prune): the model's shape and what pruning cost
#: and bought against the unpruned run (its PyTorch fp32 macro-F1, its ONNX fp32 batch-1 latency).
PRUNE_COLUMNS = [
    ("pruning", "pruning", "{}"),
    ("layers", "layers", "{}"),
    ("ffn_width", "FFN", "{}"),
    ("params", "params M", "{:.1f}"),
    ("f1_diff_vs_unpruned", "Δ F1 vs unpruned", "{:+.2f}"),
    ("speedup_b1_vs_unpruned_onnx", "× unpruned ONNX fp32 (b1)", "{:.2f}"),
]
PRUNING_NAMES = {"none": "unpruned", "distilled": "pruned + distilled", "hard": "pruned, no distillation"}


def unpruned_ratios(rows: list[dict]) -> list[dict]:
    """Each row with `f1_diff_vs_unpruned` (against the unpruned run's PyTorch fp32 macro-F1) and
    `speedup_b1_vs_unpruned_onnx` / `speedup_b32_vs_unpruned_onnx` (against its ONNX fp32 graph), the unpruned
    run found by task, method, model, variant and seed."""

    def key(r):
        return tuple(r.get(k) for k in ("task", "method", "model", "variant", "seed"))

    ref = {(key(r), r["format"]): r for r in rows if r.get("pruning", "none") == "none"}
    out = []
    for r in rows:
        r = dict(r)
        pt, onnx = ref.get((key(r), "pytorch")), ref.get((key(r), "onnx"))
        if pt is not None:
            r["f1_diff_vs_unpruned"] = r["macro_f1"] - pt["macro_f1"]
        if onnx is not None:
            r["speedup_b1_vs_unpruned_onnx"] = onnx["latency_p50_ms"] / r["latency_p50_ms"]
            r["speedup_b32_vs_unpruned_onnx"] = r["throughput_per_s"] / onnx["throughput_per_s"]
        out.append(r)
    return out


def speed_ratios(rows: list[dict]) -> list[dict]:
    """One run's rows, each with `speedup_b1_vs_<peer>` (the peer's batch-1 p50 over the row's) and
    `speedup_b32_vs_<peer>` (the row's batch-32 throughput over the peer's) for every other fp32 peer
    measured: int8 against PyTorch fp32, ONNX Runtime fp32 and the fused fp32 graph."""
    by_format = {r["format"]: r for r in rows}
    out = []
    for r in rows:
        r = {k: v for k, v in r.items() if not k.startswith(("speedup_b1_vs_", "speedup_b32_vs_"))}
        for peer in PEERS:
            ref = by_format.get(peer)
            if ref is not None and peer != r["format"]:
                r[f"speedup_b1_vs_{peer}"] = ref["latency_p50_ms"] / r["latency_p50_ms"]
                r[f"speedup_b32_vs_{peer}"] = r["throughput_per_s"] / ref["throughput_per_s"]
        out.append(r)
    return out


def load_rows(paths: list[str | Path]) -> tuple[list[dict], list[dict]]:
    """Rows (one per run and format, with their speed ratios) and each file's int8 settings, fusion,
    formats not measured and runtime versions."""
    rows, settings = [], []
    for p in paths:
        m = read_json(p)
        rows += speed_ratios(m["rows"])
        settings.append(
            {
                **m["run"],
                "int8": m.get("int8"),
                "fusion": m.get("fusion"),
                "skipped": m.get("skipped", []),
                "runtime": m.get("runtime", {}),
                "opset": m.get("opset"),
                "pruning": m.get("pruning"),
            }
        )
    if any(r.get("pruning", "none") != "none" for r in rows):
        rows = unpruned_ratios(rows)
    return rows, settings


def cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    if key in PERCENT_POINTS:
        value = 100 * value
    if key == "format":
        value = FORMAT_NAMES.get(value, value)
    if key == "pruning":
        value = PRUNING_NAMES.get(value, value)
    if key == "params":
        value = value / 1e6
    return fmt.format(value)


def columns(rows: list[dict]) -> list[tuple[str, str, str]]:
    """The table's columns: the pruning ones after `format` when some row is a pruned model."""
    if not any(r.get("pruning", "none") != "none" for r in rows):
        return COLUMNS
    at = [k for k, _, _ in COLUMNS].index("format") + 1
    return COLUMNS[:at] + PRUNE_COLUMNS + COLUMNS[at:]


def write_tables(rows: list[dict], settings: list[dict], out: Path) -> None:
    import pandas as pd

    cols = columns(rows)
    text_cols = ("task", "method", "variant", "format", "pruning")

    with atomic_path(out / "deploy.csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    header = "| " + " | ".join(h for _, h, _ in cols) + " |"
    lines = [
        "# Deployment formats (test split)",
        "",
        header,
        "| " + " | ".join("---" if k in text_cols else "--:" for k, _, _ in cols) + " |",
    ]
    lines += ["| " + " | ".join(cell(r, k, f) for k, _, f in cols) + " |" for r in rows]
    lines += [
        "",
        "macro-F1, accuracy and Δ F1 (against the run's PyTorch export) in points ×100; size: the weight "
        "files on disk; peak MB: peak RSS of a fresh process serving only that format; latency: model call "
        "at batch 1 over the first test texts (same token ids for every format), throughput at batch 32 over "
        "the whole test split. × PyTorch / ONNX fp32 / fused fp32: batch-1 speed-up against PyTorch fp32 eager, "
        "ONNX Runtime fp32 on the plain graph and on the graph its transformer optimizer fused (each format in "
        "its own fresh process, same threads; batch-32 ratios in deploy.csv). PyTorch bf16 (measured only where "
        "the CPU runs bf16 natively) loads the fp32 folder and casts it, so its size is that folder's.",
    ]
    for s in settings:
        rt, q = s["runtime"], s["int8"]
        line = (
            f"{s.get('task')}/{s.get('method')} ({s.get('variant')}, seed {s.get('seed')}): "
            f"measured on {rt.get('cpu')}, "
            f"torch {rt.get('torch')}, transformers {rt.get('transformers')}, onnx {rt.get('onnx')}, "
            f"onnxruntime {rt.get('onnxruntime')}, opset {s.get('opset')}"
        )
        if q:
            line += (
                f"; int8: ONNX Runtime dynamic quantization for {q['isa']}, weights {q['weight_type']}, "
                f"per_channel={q['per_channel']}, reduce_range={q['reduce_range']}"
            )
            if q.get("decided_by") is not None:  # exports before the record named the deciding CPU flags lack it
                line += f" (decided by {q.get('machine')}: {', '.join(q['decided_by']) or 'no CPU flags'})"
            if q.get("source"):
                line += f", quantized from the {'fused' if q['source'] == 'onnx_fused' else 'plain'} fp32 graph"
        line += _fusion_note(s.get("fusion"))
        line += _pruning_note(s.get("pruning"))
        line += "".join(f"; {x['format']} not measured: {x['reason']}" for x in s.get("skipped") or [])
        lines.append(line + ".")
    write_text(out / "deploy.md", "\n".join(lines) + "\n")
    esc = lambda t: t.replace("%", r"\%").replace("_", r"\_").replace("Δ", r"$\Delta$").replace("×", r"$\times$")  # noqa: E731
    tex = [
        r"\begin{table}[t]",
        r"\centering\small",
        r"\begin{tabular}{" + "".join("l" if k in (*text_cols, "seed") else "r" for k, _, _ in cols) + "}",
        r"\toprule",
        " & ".join(esc(h) for _, h, _ in cols) + r" \\",
        r"\midrule",
    ]
    tex += [" & ".join(esc(cell(r, k, f)) for k, _, f in cols) + r" \\" for r in rows]
    tex += [
        r"\bottomrule",
        r"\end{tabular}",
        r"\caption{Deployment formats of the best run per task and method (test split): quality, size, "
        r"peak memory, latency at batch 1, throughput at batch 32, and the batch-1 speed-up against PyTorch "
        r"fp32, ONNX Runtime fp32 and its fused fp32 graph.}",
        r"\label{tab:deploy}",
        r"\end{table}",
    ]
    write_text(out / "deploy.tex", "\n".join(tex) + "\n")


def _pruning_note(pruning: dict | None) -> str:
    if not pruning:
        return ""
    b, a, d = pruning["before"], pruning["after"], pruning.get("distill") or {}
    how = (
        f"distilled from the unpruned export (T={d.get('temperature')}, alpha={d.get('alpha')})"
        if pruning["variant"] == "distilled"
        else "fine-tuned on the hard labels only"
    )
    return (
        f"; {PRUNING_NAMES.get(pruning['variant'], pruning['variant'])}: layers {pruning['layers_kept']} of "
        f"{b['layers']} kept, FFN {a['intermediate_size']} of {b['intermediate_size']} neurons per layer, "
        f"{a['params'] / 1e6:.1f}M of {b['params'] / 1e6:.1f}M parameters, {how}, {pruning.get('epochs_run')} epochs"
    )


def _fusion_note(fusion: dict | None) -> str:
    if not fusion:
        return ""
    if not fusion.get("applied"):
        return f"; no fused graph ({fusion.get('reason')})"
    ops = ", ".join(f"{k} ×{v}" for k, v in (fusion.get("fused_ops") or {}).items())
    return (
        f"; fused by onnxruntime.transformers.optimizer (model_type {fusion.get('model_type')}, "
        f"opt_level {fusion.get('opt_level')}: {ops}; max |Δ logit| vs plain {fusion.get('max_abs_diff', 0):.1g})"
    )


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    markers = {"pytorch": "o", "pytorch_bf16": "v", "onnx": "s", "onnx_fused": "D", "onnx_int8": "^"}
    rows = [  # a pruned model is a series of its own
        {**r, "method": f"{r['method']} ({PRUNING_NAMES[r['pruning']]})"} if r.get("pruning", "none") != "none" else r
        for r in rows
    ]
    methods = sorted({r["method"] for r in rows})
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    for r in rows:
        ax.scatter(
            r["latency_p50_ms"],
            100 * r["macro_f1"],
            marker=markers.get(r["format"], "x"),
            color=colors[r["method"]],
            s=20 + 3 * r["size_mb"] ** 0.8,
            alpha=0.8,
        )
    for m in methods:
        ax.scatter([], [], color=colors[m], label=m)
    for f, mk in markers.items():
        if any(r["format"] == f for r in rows):
            ax.scatter([], [], marker=mk, color="gray", label=FORMAT_NAMES[f])
    ax.set_xlabel("latency at batch 1, p50 (ms)")
    ax.set_ylabel("test macro-F1 ×100")
    ax.set_title("Deployment: quality vs latency (marker area ~ size on disk)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_deploy_report(measurements: list[str | Path], out: str | Path) -> list[dict]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, settings = load_rows(measurements)
    write_tables(rows, settings, out)
    plot(rows, out / "deploy.png")
    return rows
