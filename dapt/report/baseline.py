"""The classical baseline (dapt.finetune.tfidf_baseline: TF-IDF + logistic regression, one metrics.json per task)
as the report reads it: baseline.csv, and the *baseline* row of every results table."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import pandas as pd

from dapt.core.errors import UserError
from dapt.finetune.metrics import METRICS
from dapt.report.design import task_metric
from dapt.report.inputs import read_json_object

BASELINE_COLUMNS = [
    "task",
    "metric",
    "method",
    "C",
    "score",
    *METRICS,
    "best_validation",
    "validation",
    "n_train",
    "n_validation",
    "n_test",
    "n_features",
    "seconds",
    "path",
]
REQUIRED = ("task", "C", "validation", "n_test", *METRICS)


def baseline_label(c: float) -> str:
    """The baseline's name in the tables, with its chosen C."""
    return f"TF-IDF + LR (C={c:g})"


def _read(path: str | os.PathLike) -> dict:
    data = read_json_object(path, "baseline metrics", "baseline")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise UserError(str(path), f"baseline metrics lack keys {missing}", "re-run the baseline rule")
    for k in METRICS:
        if not isinstance(data[k], (int, float)) or isinstance(data[k], bool) or not 0.0 <= data[k] <= 1.0:
            raise UserError(str(path), f"{k}={data[k]!r} is not a fraction in [0, 1]")
    return data


def read_baselines(paths: Sequence[str | os.PathLike], results: pd.DataFrame, config: Mapping) -> pd.DataFrame:
    """One row per task (baseline.csv), scored with the task's metric; its test split must be the
    size of the runs' (same examples: both read the task's prepared test split)."""
    rows = []
    for path in paths:
        data = _read(path)
        task = str(data["task"])
        metric = task_metric(config, task)
        runs = results[results["task"] == task] if len(results) else results
        if "n_test" in runs and len(runs) and (pd.to_numeric(runs["n_test"], errors="coerce") != data["n_test"]).any():
            raise UserError(
                str(path),
                f"scored on {data['n_test']} test examples, the runs of {task} on {sorted(set(runs['n_test']))}",
                "re-run the baseline rule on the same data",
            )
        rows.append(
            {
                **{k: data.get(k) for k in BASELINE_COLUMNS},
                "task": task,
                "metric": metric,
                "method": baseline_label(float(data["C"])),
                "score": float(data[metric]),
                "validation": json.dumps(data["validation"]),
                "path": str(path),
            }
        )
    table = pd.DataFrame(rows, columns=BASELINE_COLUMNS)
    if table["task"].duplicated().any():
        raise UserError("--baseline", f"tasks {sorted(set(table.loc[table['task'].duplicated(), 'task']))} given twice")
    return table
