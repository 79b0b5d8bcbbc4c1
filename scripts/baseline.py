#!/usr/bin/env python
"""The classical baseline of one task: TF-IDF (word 1-2-grams) + logistic regression, C chosen on
validation, scored on test with the task metric.

Example:
    python scripts/baseline.py --task-dir results/data/tasks/rt_polarity --name rt_polarity \\
        --metric macro_f1 --out results/baseline/rt_polarity/metrics.json
"""

from __future__ import annotations

import argparse

from dapt.core.errors import run_main
from dapt.runtime.cli import limit_threads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--task-dir", required=True, help="prepared task folder (train/validation/test.parquet, labels.json)"
    )
    p.add_argument("--name", required=True, help="the task's name in the config")
    p.add_argument("--metric", default="macro_f1", help="the task metric: chooses C, and is reported")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for numpy/BLAS")
    p.add_argument("--out", required=True, help="metrics.json to write")
    args = p.parse_args()
    limit_threads(args.threads)
    from dapt.finetune.tfidf_baseline import write_baseline

    result = write_baseline(args.task_dir, args.name, args.metric, args.out)
    grid = ", ".join(f"C={c}: {v:.4f}" for c, v in result["validation"].items())
    print(f"validation {args.metric}: {grid}")
    print(
        f"chosen C={result['C']:g}; test {args.metric} {result['score']:.4f} "
        f"({result['n_features']} features, {result['seconds']:.2f} s)"
    )


if __name__ == "__main__":
    run_main(main)
