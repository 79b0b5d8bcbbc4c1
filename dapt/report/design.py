"""The study's design as the report needs it: the order of names, each task's metric, the baseline.

Tables and plots list tasks, variants and methods in the order the config gives them (the order the
study was designed in), so that order is decided once, here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

from dapt.core.errors import UserError
from dapt.finetune.metrics import METRICS

DEFAULT_METRIC = "macro_f1"
BASELINE_VARIANT = "base"


def task_metric(config: Mapping, task: str) -> str:
    """The metric a task is scored by (macro-F1 unless the task's config says otherwise)."""
    metric = ((config.get("tasks") or {}).get(task) or {}).get("metric", DEFAULT_METRIC)
    if metric not in METRICS:
        raise UserError(f"config tasks.{task}.metric", f"unknown metric {metric!r}", f"use one of {list(METRICS)}")
    return metric


def task_metric_from_results(results: pd.DataFrame, task: str) -> str:
    """The metric the results of a task were scored by (one per task, set by build_results)."""
    return str(results.loc[results["task"] == task, "metric"].iloc[0])


def ordered(present: Iterable[str], config_order: Iterable[str]) -> list[str]:
    """Names in config order first (the order the study was designed in), then any others sorted."""
    present = list(dict.fromkeys(str(x) for x in present))
    config_order = [str(x) for x in config_order]
    return [x for x in config_order if x in present] + sorted(x for x in present if x not in config_order)


def ordered_by(frame: pd.DataFrame, column: str, config: Mapping) -> list[str]:
    """The names in a results column (task, model, variant, method) in the config's order."""
    section = {"task": "tasks", "model": "models", "variant": "variants", "method": "methods"}[column]
    return ordered(frame[column], config.get(section) or {})


def baseline_variant(config: Mapping, variants: Sequence[str]) -> str | None:
    """The variant every other is compared with: `base`, else the first with no pretraining chain."""
    if BASELINE_VARIANT in variants:
        return BASELINE_VARIANT
    for name, chain in (config.get("variants") or {}).items():
        if not chain and name in variants:
            return name
    return None
