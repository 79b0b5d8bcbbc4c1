"""The paper-style report of a study: `write_report` turns the per-run outputs into the files of
`dapt.study.layout.REPORT_FILES` (tables, notes, ensembles, significance, runtime, plots, provenance).

The report is the only place where runs meet, so it is also where the study is checked for
consistency (same test set for every run of a task, one result per run, scores in [0, 1]) and where
each number is tied to what it rests on. Modules, in the order the data flows:

* inputs      reading and validating metrics, predictions, logs, benchmarks (errors name the file)
* design      the study's order of names, each task's metric, the baseline variant
* results     one row per run (results.csv), with the cost of its jobs
* selection   a swept study: the combination chosen on validation per cell, sweep.md/csv
* failures    runs without scores (diverged in fine-tuning, or missing): named in the notes and the sweep
* baseline    the classical baseline (TF-IDF + logistic regression) per task, baseline.csv
* curves      a study with training-set sizes: learning_curve.md/csv/png
* ensembles   seed ensembles and the majority-class baseline
* stats       paired bootstrap significance against the baseline
* table       the main table as numbers
* formatting  how numbers are shown; render (Markdown, CSV) and latex (two LaTeX tables) use it
* notes, knn, robustness, runtime, plots, provenance   the other files

Conventions: scores are fractions in [0, 1] in the inputs and shown ×100 with one decimal, as in
Gururangan et al. (2020); "± std" is the sample standard deviation over seeds (ddof=1), blank for a
single seed; metrics are computed by dapt.finetune.metrics, as in evaluation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from dapt.core import files
from dapt.core.errors import UserError
from dapt.core.redact import scrub, secret_values
from dapt.finetune.metrics import METRICS, score, score_confusion
from dapt.report.baseline import read_baselines
from dapt.report.curves import curve_table, plot_curves, render_curves
from dapt.report.design import baseline_variant, ordered, task_metric
from dapt.report.ensembles import (
    build_ensembles,
    ensemble_predictions,
    group_labels,
    load_run_predictions,
    majority_baselines,
)
from dapt.report.failures import failed_notes, mark_failed, missing_notes, missing_runs, split_failed, without_failed
from dapt.report.inputs import read_benchmarks, read_finetune_logs, read_metrics, read_pretrain_logs
from dapt.report.knn import knn_notes
from dapt.report.latex import render_latex, render_paper_latex
from dapt.report.notes import NOTES_TITLE, build_notes
from dapt.report.plots import plot_f1_vs_params, plot_finetune_curves, plot_mlm_loss, plot_scores, save_figure
from dapt.report.provenance import provenance
from dapt.report.render import render_markdown, table_csv
from dapt.report.results import build_results, labels_by_run
from dapt.report.robustness import plot_robustness, read_robustness, render_robustness, robustness_table
from dapt.report.runtime import render_runtime, runtime_table
from dapt.report.selection import render_sweep, select_runs, sweep_csv, view_logs
from dapt.report.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, paired_bootstrap, significance
from dapt.report.table import build_table
from dapt.study import grid

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "METRICS",
    "baseline_variant",
    "build_ensembles",
    "build_report",
    "build_results",
    "build_table",
    "ensemble_predictions",
    "majority_baselines",
    "ordered",
    "paired_bootstrap",
    "render_latex",
    "render_markdown",
    "render_paper_latex",
    "score",
    "score_confusion",
    "significance",
    "task_metric",
    "write_report",
]

Content = str | pd.DataFrame | Callable[[], Any]  # text, a CSV table, or a function making a figure


def _predictions_of(
    metrics_paths: Sequence[str | os.PathLike], prediction_paths: Sequence[str | os.PathLike] | None
) -> dict[str, str]:
    """predictions.csv of each run, keyed by its metrics path (default: the file next to it)."""
    if prediction_paths is None:
        prediction_paths = [Path(p).parent / "predictions.csv" for p in metrics_paths]
    if len(prediction_paths) != len(metrics_paths):
        raise UserError(
            "--predictions",
            f"{len(prediction_paths)} files for {len(metrics_paths)} metrics files",
            "give one predictions.csv per metrics.json, in the same order",
        )
    return {str(m): str(p) for m, p in zip(metrics_paths, prediction_paths)}


def build_report(
    metrics_paths: Sequence[str | os.PathLike],
    config: Mapping | None = None,
    log_paths: Sequence[str | os.PathLike] = (),
    pretrain_log_paths: Sequence[str | os.PathLike] = (),
    benchmark_paths: Sequence[str | os.PathLike] = (),
    prediction_paths: Sequence[str | os.PathLike] | None = None,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    bootstrap_seed: int = BOOTSTRAP_SEED,
    baseline_paths: Sequence[str | os.PathLike] = (),
    knn_paths: Sequence[str | os.PathLike] = (),
    robustness_paths: Sequence[str | os.PathLike] = (),
) -> dict[str, Content]:
    """Read every input and compute every report file's content, keyed by file name.

    A study that sweeps hyperparameters or has training-set sizes is first reduced to the runs of
    the combinations chosen on validation (selection.py), named by method (and size); every table
    and plot below then reads those as it reads an unswept study's runs."""
    config = dict(config or {})
    if not metrics_paths:
        raise UserError("--metrics", "no metrics files given", "the report needs at least one evaluated run")
    pred_map = _predictions_of(metrics_paths, prediction_paths)
    metrics, failed = split_failed([(str(p), read_metrics(p)) for p in metrics_paths])
    missing = missing_runs(config, [m for _, m in metrics] + failed.to_dict("records"))
    benchmarks = read_benchmarks(benchmark_paths)
    all_results = build_results(metrics, benchmarks, config)
    ft_logs = without_failed(read_finetune_logs(log_paths), failed)
    swept, sized = grid.has_sweeps(config), grid.has_sizes(config)
    results, view = all_results, config
    if swept or sized:
        results, selection, all_results = select_runs(all_results, ft_logs, config)
        selection = mark_failed(selection, failed, config)
        ft_logs = view_logs(ft_logs, results)
        view = {**config, "methods": dict.fromkeys(_display_order(config, results))}
    baseline = read_baselines(baseline_paths, all_results, config)
    run_labels = labels_by_run(metrics)
    predictions = load_run_predictions(results, pred_map, run_labels)
    ensembles, ens_preds = build_ensembles(results, predictions, group_labels(results, run_labels))
    majority = majority_baselines(results, ens_preds)
    sig = significance(results, ens_preds, view, n_resamples, bootstrap_seed)
    table, variants = build_table(results, ensembles, majority, sig, view, baseline)
    notes = build_notes(results, view) + failed_notes(failed) + missing_notes(missing)
    runtime = runtime_table(benchmarks)
    runtime_md = render_runtime(runtime)
    pt_logs = read_pretrain_logs(pretrain_log_paths)
    prov = provenance(
        config,
        all_results,
        {
            "metrics": len(metrics_paths),
            "failed_runs": len(failed),
            "missing_runs": len(missing),
            "finetune_logs": len(log_paths),
            "pretrain_logs": len(pretrain_log_paths),
            "benchmarks": len(benchmarks),
            "bootstrap_resamples": n_resamples,
            "bootstrap_seed": bootstrap_seed,
        },
    )
    contents = {
        "table.md": render_markdown(
            table, variants, baseline_variant(config, variants), notes, runtime_md, n_resamples, bootstrap_seed
        ),
        "table.csv": table_csv(table, variants),
        "table.tex": render_latex(table, variants, n_resamples, bootstrap_seed),
        "table_paper.tex": render_paper_latex(table, variants, view),
        "results.csv": all_results,
        "notes.md": NOTES_TITLE + notes + knn_notes(knn_paths),
        "ensemble.csv": ensembles,
        "majority.csv": majority,
        "baseline.csv": baseline,
        "significance.csv": sig,
        "runtime.csv": runtime,
        "runtime.md": runtime_md,
        "scores.png": lambda: plot_scores(results, view),
        "mlm_loss.png": lambda: plot_mlm_loss(pt_logs),
        "finetune_curves.png": lambda: plot_finetune_curves(ft_logs, view),
        "f1_vs_params.png": lambda: plot_f1_vs_params(results, view),
        "provenance.json": json.dumps(prov, indent=2, sort_keys=True, default=files._json_default) + "\n",
    }
    if swept:
        sweep = sweep_csv(selection)
        contents.update({"sweep.csv": sweep, "sweep.md": render_sweep(sweep)})
    if config.get("robustness"):
        robust = robustness_table(results, read_robustness(robustness_paths), view)
        contents.update(
            {
                "robustness.csv": robust,
                "robustness.md": render_robustness(robust),
                "robustness.png": lambda: plot_robustness(robust),
            }
        )
    if sized:
        curves = curve_table(results, config)
        contents.update(
            {
                "learning_curve.csv": curves,
                "learning_curve.md": render_curves(curves),
                "learning_curve.png": lambda: plot_curves(curves),
            }
        )
    return contents


def _display_order(config: Mapping, results: pd.DataFrame) -> list[str]:
    """The tables' method names in config order, each method's training sizes smallest first."""
    methods = list(config.get("methods") or {})
    names = results.drop_duplicates("method")
    rank = {
        m: (methods.index(b) if b in methods else len(methods), -1 if pd.isna(n) else int(n))
        for m, b, n in zip(names["method"], names["base_method"], names["train_size"])
    }
    return sorted(rank, key=rank.get)


def write_report(
    metrics_paths: Sequence[str | os.PathLike], out: str | os.PathLike, config: Mapping | None = None, **inputs: Any
) -> dict[str, Path]:
    """Read every input, then write all report files into `out` (each atomically); `inputs` are
    build_report's keyword arguments.

    Everything is read and computed before the first file is written, so a bad input (a UserError
    naming it) leaves no half-updated report behind. Text is scrubbed of secret values on the way out.
    """
    contents = build_report(metrics_paths, config, **inputs)
    config = dict(config or {})
    names = [f.name for f in grid.report_list(config)]
    if set(contents) != set(names):  # the rule declares the same layout.report_list as outputs
        raise AssertionError(f"report files {sorted(contents)} differ from {sorted(names)}")
    secrets = secret_values()
    paths = {}
    for name in names:
        content, paths[name] = contents[name], Path(out) / name
        if isinstance(content, pd.DataFrame):
            content = content.to_csv(index=False)
        if isinstance(content, str):
            files.write_text(paths[name], scrub(content, secrets))
        else:
            save_figure(content(), paths[name])
    return paths
