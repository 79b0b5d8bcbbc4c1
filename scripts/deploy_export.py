"""Deploy step 1: pick a run (the best validation score among the candidates), export it as a plain
Hugging Face folder, and to ONNX, ONNX fused by ONNX Runtime's transformer optimizer and int8 ONNX (quantized
from the plain graph, or from the fused one where `dapt.deploy.fusion.INT8_FROM_FUSED` says so and it fused)
as asked; all in one atomic output folder."""

import json

from dapt.core.errors import UserError, diverged, run_main
from dapt.runtime import cli


def choose(candidates: list[dict]) -> dict:
    """The candidate with the best validation score (train.json's best_validation); ties: the first."""
    from pathlib import Path

    from dapt.core.files import read_json

    best, best_score = None, None
    for c in candidates:
        info = read_json(c["train_json"]) if Path(c["train_json"]).is_file() else None
        if info is not None and diverged(info):  # recorded as failed: no weights to export
            continue
        if info is None or not (Path(c["artifact"]) / "method.json").is_file():
            raise UserError(
                str(c["artifact"]),
                "not a fine-tuned run (no train.json / method.json)",
                "fine-tune the run first (snakemake results/finetune/<run>/model)",
            )
        score = info.get("best_validation", float("-inf"))
        if best is None or score > best_score:
            best, best_score = c, score
    if best is None:
        raise UserError(
            str(candidates[0]["train_json"]),
            f"all {len(candidates)} candidate runs diverged in training",
            "lower the learning rate, or leave this method out of deploy.methods",
        )
    return {**best, "validation_score": best_score, "n_candidates": len(candidates)}


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument(
        "--candidates", type=json.loads, required=True, help='JSON list of {"artifact", "train_json", "base", "run"}'
    )
    p.add_argument("--tokenized", required=True, help="tokenized task folder (labels.json)")
    p.add_argument("--formats", default="pytorch,onnx,onnx_fused,onnx_int8")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    cli.limit_threads(args.threads)
    cli.quiet_progress_bars()
    from pathlib import Path

    from dapt.core.files import atomic_path, read_json, write_json
    from dapt.deploy.export import export_run
    from dapt.deploy.formats import write_formats
    from dapt.study.defaults import DEPLOY_FORMATS as FORMATS

    formats = [f for f in args.formats.split(",") if f]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise UserError("deploy.formats", f"unknown format(s) {unknown}", f"choose from {list(FORMATS)}")
    if not args.candidates:
        raise UserError("deploy.runs", "no run selected for this task and method")
    chosen = choose(args.candidates)
    labels = read_json(Path(args.tokenized) / "labels.json")
    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        meta = export_run(
            chosen["artifact"], chosen["base"], labels, tmp / "pytorch", chosen.get("run"), tokenized_dir=args.tokenized
        )
        info = {
            "run": chosen.get("run", {}),
            "validation_score": chosen["validation_score"],
            "n_candidates": chosen["n_candidates"],
            "method": meta["method"],
            "formats": formats,
            "train_json": chosen["train_json"],
        }
        info.update(write_formats(tmp, formats, args.opset))
        write_json(tmp / "deploy.json", info)
    print(f"exported {json.dumps(info.get('run'))} (validation {chosen['validation_score']:.4f}) as {formats}")


if __name__ == "__main__":
    run_main(main)
