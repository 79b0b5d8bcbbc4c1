"""Deploy step 2: measure each exported format on the test split (quality vs PyTorch, size, peak
memory, batch-1 latency, batch-32 throughput), each format in its own fresh process."""

import json

from dapt.core.errors import UserError, run_main
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
    p.add_argument("--formats", default="pytorch,onnx,onnx_int8")
    p.add_argument("--latency-texts", type=int, default=200)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    cli.limit_threads(args.threads)
    cli.quiet_progress_bars()
    from pathlib import Path

    from dapt.core.files import read_json, write_json
    from dapt.deploy.measure import measure_all

    export = Path(args.export)
    info = read_json(export / "deploy.json")
    model = info["run"].get("model")
    if model not in args.tokenized:
        raise UserError(
            str(export / "deploy.json"), f"run model '{model}' has no tokenized task among {sorted(args.tokenized)}"
        )
    formats = ["pytorch"] + [f for f in args.formats.split(",") if f and f != "pytorch"]
    paths = {f: export / f for f in formats}
    threads = args.threads or 1
    rows = measure_all(
        paths,
        args.tokenized[model],
        threads,
        args.latency_texts,
        context={**info["run"], "validation_score": info["validation_score"]},
    )
    measured = [r for r in rows if r["format"] in args.formats.split(",")]
    write_json(
        args.out,
        {
            "run": info["run"],
            "int8": info.get("int8"),
            "opset": info.get("opset"),
            "rows": measured,
            "runtime": runtime_versions(),
        },
    )
    for r in measured:
        print(
            f"{r['format']}: macro_f1 {r['macro_f1']:.4f} size {r['size_mb']:.1f} MB p50 {r['latency_p50_ms']:.2f} ms "
            f"{r['throughput_per_s']:.1f}/s at 32 peak {r['peak_rss_mb']:.0f} MB"
        )


if __name__ == "__main__":
    run_main(main)
