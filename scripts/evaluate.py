"""Predict the test split with a fine-tuned run; write predictions and metrics."""

from dapt.core.errors import diverged, run_main
from dapt.runtime import cli


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--artifact", required=True, help="the run's saved model/ folder")
    p.add_argument("--base", required=True, help="checkpoint the run was fine-tuned from")
    p.add_argument("--tokenized", required=True, help="tokenized task folder")
    p.add_argument("--context", type=__import__("json").loads, default={}, help="task/model/variant/method/seed")
    p.add_argument("--train-json", required=True, help="the run's train.json (what its metrics rest on)")
    p.add_argument("--metrics", required=True)
    p.add_argument("--predictions", required=True)
    p.add_argument("--robustness", default="", help="robustness.json to write (scores on the perturbed test sets)")
    p.add_argument(
        "--perturbed", nargs="*", default=[], help="perturbed test sets, name=file (robustness: in the config)"
    )
    args = p.parse_args()
    if "eval_batch_size" not in args.params:
        p.error("--params must give eval_batch_size (the rule passes finetune.eval_batch_size)")
    runtime = cli.start(args, model_dir=args.base)

    from dapt.finetune.evaluation import evaluate_run

    result = evaluate_run(
        args.artifact,
        args.base,
        args.tokenized,
        args.train_json,
        args.metrics,
        args.predictions,
        runtime,
        {**args.context, "seed": args.seed},
        args.params["eval_batch_size"],
        dict(item.split("=", 1) for item in args.perturbed),
        args.robustness or None,
    )
    if diverged(result):
        print(f"not evaluated: the run diverged in training ({result['error']})")
    else:
        print(f"test accuracy {result['accuracy']:.4f} macro_f1 {result['macro_f1']:.4f}")


if __name__ == "__main__":
    run_main(main)
