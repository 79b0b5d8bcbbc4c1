"""Continue MLM pretraining of a checkpoint on packed blocks (one DAPT or TAPT stage)."""

import os

from dapt.core.errors import run_main
from dapt.runtime import cli
from dapt.runtime.checkpoints import guard_checkpoints, job_identity


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--parent", required=True, help="checkpoint folder to continue from")
    p.add_argument(
        "--parent-summary", default="", help="summary.json of the parent stage, if the parent was pretrained"
    )
    p.add_argument("--blocks", required=True, help="packed blocks parquet from the tokenize step")
    p.add_argument("--stage", default="", help="stage name, for logs (e.g. dapt-imdb)")
    p.add_argument("--checkpoints", required=True, help="folder for resumable checkpoints (kept across reruns)")
    p.add_argument("--out", required=True, help="output folder: model/, loss.csv, summary.json")
    p.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="nodes of a SLURM allocation to spread the --gpus processes over (the rule's resources.nodes)",
    )
    args = p.parse_args()
    if "LOCAL_RANK" not in os.environ:  # once per job, before any rank reads the checkpoints
        guard_checkpoints(
            args.checkpoints,
            job_identity(
                vars(args), [args.parent, args.blocks, args.parent_summary], ignore=("gpus", "threads", "nodes")
            ),
        )
    runtime = cli.start(args, model_dir=args.parent)

    from dapt.pretrain.pretraining import pretrain

    summary = pretrain(
        args.parent,
        args.blocks,
        args.out,
        args.checkpoints,
        args.params,
        args.seed,
        runtime,
        args.stage,
        args.parent_summary,
    )
    print(f"done: {summary['steps']} steps, loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f}")


if __name__ == "__main__":
    run_main(main)
