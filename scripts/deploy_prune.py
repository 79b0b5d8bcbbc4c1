"""Deploy step 1b (deploy.prune): a pruned copy of the exported run. Prune its PyTorch folder (encoder layers
dropped, feed-forward neurons kept by importance on the validation split; dapt.deploy.prune), fine-tune the
pruned model on the training split, distilled from the unpruned export or on the hard labels only
(dapt.finetune.distill), and export it as the run was: transformers folder, ONNX, fused ONNX, int8 ONNX."""

import json
import os

from dapt.core.errors import run_main
from dapt.runtime import cli
from dapt.runtime.checkpoints import guard_checkpoints, job_identity


def train_params(run_params: dict, distill: dict) -> dict:
    """The pruned model's fine-tuning: a `full` run with the deployed run's settings (batch size, warm-up,
    accumulation, metric, ...) and the distillation block's epochs, learning rate (and batch size)."""
    from dapt.study.defaults import FINETUNE_DEFAULTS

    params = {k: run_params[k] for k in (*FINETUNE_DEFAULTS, "metric") if k in run_params}
    params.update(kind="full", epochs=distill["epochs"], lr=distill["lr"])
    if distill.get("batch_size"):
        params["batch_size"] = distill["batch_size"]
    return params


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--export", required=True, help="the deploy_export folder of the run")
    p.add_argument("--tokenized", type=json.loads, required=True, help="JSON {model: tokenized task folder}")
    p.add_argument("--settings", type=json.loads, required=True, help="the resolved deploy.prune block (JSON)")
    p.add_argument("--pruning", choices=["distilled", "hard"], required=True)
    p.add_argument("--formats", default="pytorch,onnx,onnx_fused,onnx_int8")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--checkpoints", required=True, help="folder for the pruned model and resumable checkpoints")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    from pathlib import Path

    from dapt.core.files import read_json
    from dapt.deploy.formats import export_and_task

    export = Path(args.export)
    info, tokenized = export_and_task(export, args.tokenized)
    args.seed = int(info["run"].get("seed", args.seed))  # the deployed run's seed
    if "LOCAL_RANK" not in os.environ:
        guard_checkpoints(args.checkpoints, job_identity(vars(args), [str(export / "pytorch"), tokenized]))
    runtime = cli.start(args, model_dir=str(export / "pytorch"))

    from dapt.core.files import atomic_path, write_json
    from dapt.deploy.export import export_run
    from dapt.deploy.formats import write_formats
    from dapt.deploy.prune import prune_folder
    from dapt.finetune.distill import distill
    from dapt.finetune.task_data import load_task
    from dapt.runtime.checkpoints import clear_checkpoints

    settings, ckpt = args.settings, Path(args.checkpoints)
    d = settings["distill"]
    student = ckpt / "pruned"
    if (student / "prune.json").is_file():  # a resumed job: the pruned start it trained from
        record = read_json(student / "prune.json")
    else:
        data = load_task(tokenized, export / "pytorch")
        record = prune_folder(export / "pytorch", student, data.val, data.pad_id, settings)
    print(f"pruned: {json.dumps({k: record[k] for k in ('before', 'after', 'layers_kept')})}", flush=True)
    run_params = read_json(info["train_json"])["params"] if Path(info.get("train_json", "")).is_file() else {}
    alpha = d["alpha"] if args.pruning == "distilled" else 0.0
    formats = [f for f in args.formats.split(",") if f]
    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        summary = distill(
            student,
            export / "pytorch",
            tokenized,
            tmp / "train",
            ckpt / "train",
            train_params(run_params, d),
            args.seed,
            runtime,
            d["temperature"],
            alpha,
        )
        labels = read_json(Path(tokenized) / "labels.json")
        export_run(tmp / "train" / "model", str(student), labels, tmp / "pytorch", info["run"], tokenized_dir=tokenized)
        write_json(tmp / "prune.json", record)  # importance and what was kept, beside the formats
        clear_checkpoints(tmp / "train" / "model")  # the weights are pytorch/'s; train.json and log.csv stay
        out = {
            "run": info["run"],
            "validation_score": summary["best_validation"],
            "unpruned_validation_score": info["validation_score"],
            "method": {"kind": "full"},
            "formats": formats,
            "pruning": {
                "variant": args.pruning,
                "layers_kept": record["layers_kept"],
                "before": record["before"],
                "after": record["after"],
                "ffn_keep": settings["ffn_keep"],
                "distill": summary["distill"],
                "epochs_run": summary["epochs_run"],
                "train_steps": summary["train_steps"],
            },
        }
        out.update(write_formats(tmp, formats, args.opset))
        write_json(tmp / "deploy.json", out)
    clear_checkpoints(ckpt)
    print(
        f"pruned ({args.pruning}): {record['after']['layers']} layers, ffn {record['after']['intermediate_size']}, "
        f"{record['after']['params']:,} parameters (from {record['before']['params']:,}); "
        f"validation {summary['best_validation']:.4f} (unpruned {info['validation_score']:.4f})"
    )


if __name__ == "__main__":
    run_main(main)
