#!/usr/bin/env python
"""Write the study report (tables, ensemble, significance, plots, runtime, provenance).

Example:
    python scripts/report.py --config-json results/config.json --out results/report \\
        --metrics results/evaluate/*/*/*/*/seed*/metrics.json \\
        --logs results/finetune/*/*/*/*/seed*/log.csv \\
        --pretrain-logs results/pretrain/*/*/loss.csv \\
        --baseline results/baseline/*/metrics.json \\
        --benchmarks results/benchmarks
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dapt import report  # noqa: E402
from dapt.core.errors import UserError, run_main  # noqa: E402


def load_config(value: str | None) -> dict:
    """The study config from a JSON file (or inline JSON text starting with '{')."""
    if not value:
        return {}
    if value.lstrip().startswith("{"):
        where, text = "--config-json", value
    else:
        where = value
        try:
            text = Path(value).read_text(encoding="utf-8")
        except OSError as err:
            raise UserError(value, f"cannot read config JSON: {err.strerror or err}") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(where, f"cannot parse config JSON: {err}") from None
    if not isinstance(config, dict):
        raise UserError(where, "config JSON is not an object")
    return config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metrics", nargs="+", required=True, help="metrics.json of every run")
    p.add_argument(
        "--predictions",
        nargs="+",
        default=None,
        help="predictions.csv per run, same order as --metrics (default: next to each metrics.json)",
    )
    p.add_argument("--logs", nargs="*", default=[], help="fine-tuning log.csv files")
    p.add_argument("--pretrain-logs", nargs="*", default=[], help="MLM pretraining loss.csv files")
    p.add_argument(
        "--baseline",
        nargs="*",
        default=[],
        help="metrics.json of the classical baseline (scripts/baseline.py), one per task",
    )
    p.add_argument("--knn", nargs="*", default=[], help="kNN-TAPT selection folders (selection.json), for the notes")
    p.add_argument(
        "--robustness", nargs="*", default=[], help="robustness.json of every run (a study with robustness:)"
    )
    p.add_argument(
        "--benchmarks", nargs="*", default=[], help="Snakemake benchmark .tsv files, or folders to search for them"
    )
    p.add_argument("--config-json", default=None, help="the study config as JSON (file, or inline text)")
    p.add_argument("--out", default="results/report", help="report folder (default: %(default)s)")
    p.add_argument(
        "--bootstrap-resamples",
        type=int,
        default=report.BOOTSTRAP_RESAMPLES,
        help="paired-bootstrap resamples (default: %(default)s)",
    )
    p.add_argument(
        "--bootstrap-seed",
        type=int,
        default=report.BOOTSTRAP_SEED,
        help="paired-bootstrap random seed (default: %(default)s)",
    )
    args = p.parse_args(argv)
    if args.bootstrap_resamples < 1:
        p.error("--bootstrap-resamples must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    paths = report.write_report(
        args.metrics,
        args.out,
        load_config(args.config_json),
        log_paths=args.logs,
        pretrain_log_paths=args.pretrain_logs,
        benchmark_paths=args.benchmarks,
        prediction_paths=args.predictions,
        n_resamples=args.bootstrap_resamples,
        bootstrap_seed=args.bootstrap_seed,
        baseline_paths=args.baseline,
        knn_paths=args.knn,
        robustness_paths=args.robustness,
    )
    print(f"report: {len(paths)} files in {args.out}")


if __name__ == "__main__":
    run_main(main)
