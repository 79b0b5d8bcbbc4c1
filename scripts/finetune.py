"""Fine-tune one run (task, model, variant, method, seed) and keep its best epoch."""

import os

from dapt.core.errors import diverged, run_main
from dapt.runtime import cli
from dapt.runtime.checkpoints import guard_checkpoints, job_identity


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--base", required=True, help="checkpoint folder to fine-tune (base model or a pretrained variant)")
    p.add_argument("--pretrain-summary", default="", help="summary.json of the variant's last MLM stage, if any")
    p.add_argument("--tokenized", required=True, help="tokenized task folder")
    p.add_argument("--checkpoints", required=True, help="folder for resumable checkpoints (kept across reruns)")
    p.add_argument("--out", required=True, help="output folder: model/, log.csv, train.json")
    p.add_argument("--augmented", default="", help="augmented training rows to add (the run's augment: setting)")
    p.add_argument(
        "--on-divergence",
        choices=["record", "fail"],
        default="fail",
        help="a loss that is no longer finite: record the run as failed, or fail the job",
    )
    args = p.parse_args()
    if "LOCAL_RANK" not in os.environ:  # once per job, before any rank reads the checkpoints
        guard_checkpoints(
            args.checkpoints,
            job_identity(vars(args), [args.base, args.tokenized, args.pretrain_summary, args.augmented]),
        )
    runtime = cli.start(args, model_dir=args.base)

    from dapt.core.files import read_json
    from dapt.finetune.fine_tuning import finetune

    pretrain_info = read_json(args.pretrain_summary) if args.pretrain_summary else {}
    pretrain_info = {
        "chain": pretrain_info.get("chain", ""),
        "steps": pretrain_info.get("total_steps", 0),
        "tokens": pretrain_info.get("total_tokens", 0),
    }
    summary = finetune(
        args.base,
        args.tokenized,
        args.out,
        args.checkpoints,
        args.params,
        args.seed,
        runtime,
        pretrain_info,
        args.augmented or None,
        args.on_divergence,
    )
    if diverged(summary):
        print(f"done: diverged at step {summary['diverged_step']}, recorded as a failed run")
    else:
        print(
            f"done: {summary['train_steps']} steps, best epoch {summary['best_epoch']}, "
            f"validation {summary['best_validation']:.4f}"
        )


if __name__ == "__main__":
    run_main(main)
