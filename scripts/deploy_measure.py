"""Deploy step 2: measure each exported format on the test split (quality vs PyTorch, size, peak
memory, batch-1 latency, batch-32 throughput), each format in its own fresh process; PyTorch bf16 beside
them where the CPU runs bf16 natively (recorded as skipped, with the reason, elsewhere)."""

import json

from dapt.core.errors import run_main
from dapt.runtime import cli


def runtime_versions() -> dict:
    """Versions of what ran the formats, and the CPU (the int8 kernels depend on it)."""
    import importlib.metadata
    import platform

    out = {name: importlib.metadata.version(name) for name in ("torch", "transformers", "onnx", "onnxruntime")}
    from dapt.deploy.cpu import cpu_name

    return {**out, "cpu": cpu_name(), "machine": platform.machine()}


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--export", required=True, help="the deploy_export folder")
    p.add_argument("--tokenized", type=json.loads, required=True, help="JSON {model: tokenized task folder}")
    p.add_argument("--formats", help="comma-separated (default: all of dapt.study.defaults.DEPLOY_FORMATS)")
    p.add_argument("--latency-texts", type=int, default=200)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    cli.limit_threads(args.threads)
    cli.quiet_progress_bars()
    from pathlib import Path

    from dapt.core.files import write_json
    from dapt.deploy.formats import export_and_task
    from dapt.deploy.measure import measure_all, plan, shape_of
    from dapt.deploy.table import speed_ratios
    from dapt.study.defaults import DEPLOY_FORMATS

    export = Path(args.export)
    info, tokenized = export_and_task(export, args.tokenized)
    asked = [f for f in (args.formats or ",".join(DEPLOY_FORMATS)).split(",") if f]
    paths, skipped = plan(export, asked, info)
    threads = args.threads or 1
    rows = measure_all(
        paths,
        tokenized,
        threads,
        args.latency_texts,
        context={
            **info["run"],
            "validation_score": info["validation_score"],
            "pruning": (info.get("pruning") or {}).get("variant", "none"),
            **shape_of(export / "pytorch"),
        },
    )
    measured = [r for r in rows if r["format"] in asked or r["format"] == "pytorch_bf16"]
    write_json(
        args.out,
        {
            "run": info["run"],
            "int8": info.get("int8"),
            "fusion": info.get("fusion"),
            "opset": info.get("opset"),
            "pruning": info.get("pruning"),
            "rows": measured,
            "skipped": [s for s in skipped if s["format"] in asked or s["format"] == "pytorch_bf16"],
            "runtime": runtime_versions(),
        },
    )
    for r in speed_ratios(measured):
        against = " ".join(f"x{r[k]:.2f} vs {k[len('speedup_b1_vs_') :]}" for k in r if k.startswith("speedup_b1_vs_"))
        print(
            f"{r['format']}: macro_f1 {r['macro_f1']:.4f} size {r['size_mb']:.1f} MB p50 {r['latency_p50_ms']:.2f} ms "
            f"{r['throughput_per_s']:.1f}/s at 32 peak {r['peak_rss_mb']:.0f} MB (b1: {against})"
        )
    for s in skipped:
        print(f"{s['format']}: not measured: {s['reason']}")


if __name__ == "__main__":
    run_main(main)
