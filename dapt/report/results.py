"""One row per run (results.csv): every metrics field, the task metric as `score`, and the cost of
the run's jobs from their benchmarks, so cost sits next to score. The raw material of every table."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from dapt.core.errors import UserError
from dapt.finetune.metrics import METRICS
from dapt.report.design import task_metric
from dapt.study import layout

RUN_KEYS = list(layout.RUN_KEYS)
BENCHMARKED_RULES = ("finetune", "evaluate")


def flatten(obj: Mapping, prefix: str = "") -> dict:
    """Flatten nested dicts with '.'; lists become JSON text so one run stays one CSV row."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def _run_row(path: str, m: Mapping, config: Mapping) -> dict:
    """The results row of one run's metrics."""
    row = flatten(m)
    for k in ("task", "model", "variant", "method"):
        row[k] = str(m[k])
    row["seed"] = int(m["seed"])
    row["metric"] = task_metric(config, row["task"])
    row["score"] = float(m[row["metric"]])
    if m.get("trainable_params") and m.get("total_params"):
        row["trainable_pct_computed"] = 100.0 * m["trainable_params"] / m["total_params"]
    row["metrics_path"] = str(path)
    return row


def _attach_benchmarks(df: pd.DataFrame, benchmarks: pd.DataFrame) -> None:
    """Wall time and max RSS of each run's finetune and evaluate jobs, matched by wildcard path."""
    for rule in BENCHMARKED_RULES:
        bench = benchmarks[benchmarks["rule"] == rule] if len(benchmarks) else benchmarks
        by_key: dict[str, dict] = {}
        for rec in bench.to_dict("records"):
            by_key[rec["key"]] = rec
            # tolerate .../seed1/benchmark.tsv as well as .../seed1.tsv
            by_key.setdefault(rec["key"].rpartition("/")[0], rec)
        hits = [by_key.get(layout.run_key(rec)) for rec in df.to_dict("records")]
        df[f"{rule}_wall_s"] = [hit["wall_s"] if hit else math.nan for hit in hits]
        df[f"{rule}_max_rss_mb"] = [hit["max_rss_mb"] if hit else math.nan for hit in hits]


def build_results(metrics: Sequence[tuple[str, dict]], benchmarks: pd.DataFrame, config: Mapping) -> pd.DataFrame:
    """One row per run (sorted by run), refusing a run reported twice."""
    rows = []
    seen: dict[str, str] = {}
    for path, m in metrics:
        row = _run_row(path, m, config)
        key = layout.run_key(row)
        if key in seen:
            raise UserError(path, f"run {key} is reported twice (also in {seen[key]})")
        seen[key] = path
        rows.append(row)
    df = pd.DataFrame(rows)
    _attach_benchmarks(df, benchmarks)
    front = [*RUN_KEYS, "metric", "score", *METRICS]
    df = df[front + [c for c in df.columns if c not in front]]
    return df.sort_values(RUN_KEYS, kind="stable").reset_index(drop=True)


def labels_by_run(metrics: Sequence[tuple[str, dict]]) -> dict[str, list[str]]:
    """Each run's label list (as text, the way predictions.csv spells labels), keyed by the path of
    its metrics.json: taken from the metrics themselves, not from results.csv's JSON text."""
    return {str(path): [str(x) for x in m["labels"]] for path, m in metrics}
