"""The main table as numbers: one row per (task, model, method) for the seed mean and std, one for
the seed ensemble, and one majority-class and one classical-baseline row per task; per variant
(config order) the columns `{v}_mean`, `{v}_std` (×100, NaN where absent) and `{v}_n` (runs behind
the cell). A study that sweeps hyperparameters also has `chosen`: the settings its seeds rows rest on.

Renderers (render.py, latex.py) format these numbers; nothing here is display text except the
footing columns (n_seeds, finetune_steps, n_train, n_validation, n_test), which are ranges over runs
such as '2–3'.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dapt.report.design import baseline_variant, ordered_by, task_metric_from_results
from dapt.report.formatting import DASH, SCORE_DIGITS, finite, range_text

ROW_KINDS = ("seeds", "ensemble", "majority", "baseline")
#: Rows that train no transformer: one score, in the first variant column, compared with nothing.
FIXED_ROWS = ("majority", "baseline")
SPLITS = ("n_train", "n_validation", "n_test")
COST_COLUMNS = ["trainable_pct", "trainable_params", "finetune_wall_s", "peak_memory_mb"]


def value_columns(variants: Sequence[str]) -> list[str]:
    return [f"{v}_{s}" for v in variants for s in ("mean", "std", "n")]


def compared_variants(variants: Sequence[str], base: str | None) -> list[str]:
    """The variants that get a p-value against the baseline."""
    return [v for v in variants if v != base] if base else []


def best_variants(rec: Mapping[str, Any], variants: Sequence[str], digits: int = SCORE_DIGITS) -> list[str]:
    """Variants whose score is the best of the row *as displayed* (so visible ties are all bold);
    none on the majority and baseline rows, which compare nothing."""
    if rec.get("row") in FIXED_ROWS:
        return []
    shown = {v: round(rec[f"{v}_mean"], digits) for v in variants if finite(rec.get(f"{v}_mean"))}
    top = max(shown.values(), default=None)
    return [v for v, x in shown.items() if x == top]


def _numeric(df: pd.DataFrame, col: str) -> pd.Series:
    """A column as floats; all-NaN when the runs do not report it."""
    if col not in df:
        return pd.Series(np.nan, index=df.index, dtype=float)
    return pd.to_numeric(df[col], errors="coerce").astype(float)


def _seed_cells(g: pd.DataFrame, variants: Sequence[str]) -> dict:
    """Mean, sample std (ddof=1; NaN for one seed) and count of the seeds' scores per variant."""
    row: dict[str, Any] = {}
    for v in variants:
        s = g.loc[g["variant"] == v, "score"].astype(float)
        mean = float(s.mean()) if len(s) else math.nan
        std = float(s.std(ddof=1)) if len(s) > 1 else math.nan
        row[f"{v}_mean"], row[f"{v}_std"], row[f"{v}_n"] = 100 * mean, 100 * std, len(s)
    return row


def _p_values(sig: pd.DataFrame, task: str, model: str, method: str, others: Sequence[str]) -> dict:
    row = {}
    for v in others:
        hit = (
            sig[(sig["task"] == task) & (sig["model"] == model) & (sig["method"] == method) & (sig["variant"] == v)]
            if len(sig)
            else sig
        )
        row[f"p_{v}"] = float(hit["p_value"].iloc[0]) if len(hit) else math.nan
    return row


def _method_costs(g: pd.DataFrame) -> dict:
    """Trainable %, parameters, mean fine-tune wall time, peak memory, seeds and steps of a method.

    Trainable % comes from the parameter counts when the runs report them (unambiguous), else from
    the runs' own trainable_pct."""
    pct = _numeric(g, "trainable_pct_computed")
    return {
        "trainable_pct": float((pct if pct.notna().any() else _numeric(g, "trainable_pct")).mean()),
        "trainable_params": float(_numeric(g, "trainable_params").mean()),
        "finetune_wall_s": float(_numeric(g, "finetune_wall_s").mean()),
        "peak_memory_mb": float(_numeric(g, "peak_memory_mb").max()),
        "n_seeds": range_text(g.groupby("variant")["seed"].nunique()),
        "finetune_steps": range_text(g["train_steps"]) if "train_steps" in g else DASH,
    }


def _ensemble_cells(ensembles: pd.DataFrame, task: str, model: str, method: str, variants: Sequence[str]) -> dict:
    row: dict[str, Any] = {}
    for v in variants:
        e = ensembles[
            (ensembles["task"] == task)
            & (ensembles["model"] == model)
            & (ensembles["method"] == method)
            & (ensembles["variant"] == v)
        ]
        row[f"{v}_mean"] = 100 * float(e["score"].iloc[0]) if len(e) else math.nan
        row[f"{v}_std"] = math.nan
        row[f"{v}_n"] = int(e["n_seeds"].iloc[0]) if len(e) else 0
    return row


def _majority_row(head: dict, majority: pd.DataFrame, variants: Sequence[str], sizes: dict) -> dict | None:
    """The majority-class row of a task: its score in the first variant column (no training)."""
    mj = majority[majority["task"] == head["task"]]
    if not len(mj) or not variants:
        return None
    row = {**head, "model": DASH, "method": "majority class", "row": "majority"}
    row.update({f"{v}_mean": 100 * float(mj["score"].iloc[0]) if i == 0 else math.nan for i, v in enumerate(variants)})
    return {**row, "n_seeds": DASH, **sizes}  # no training, no seeds


def _baseline_row(head: dict, baseline: pd.DataFrame | None, variants: Sequence[str], sizes: dict) -> dict | None:
    """The classical baseline's row of a task (TF-IDF + LR with its chosen C), like the majority row."""
    b = baseline[baseline["task"] == head["task"]] if baseline is not None and len(baseline) else None
    if b is None or not len(b) or not variants:
        return None
    row = {**head, "model": DASH, "method": b["method"].iloc[0], "row": "baseline"}
    row.update({f"{v}_mean": 100 * float(b["score"].iloc[0]) if i == 0 else math.nan for i, v in enumerate(variants)})
    return {**row, "n_seeds": DASH, **sizes}


def _chosen(g: pd.DataFrame, variants: Sequence[str]) -> str:
    """The swept settings a seeds row rests on: one text if every variant chose the same, else per variant."""
    per = {
        v: "; ".join(sorted(set(g.loc[g["variant"] == v, "setting"]))) for v in variants if (g["variant"] == v).any()
    }
    if len(set(per.values())) <= 1:
        return next(iter(per.values()), "")
    return "; ".join(f"{v}: {s}" for v, s in per.items())


def build_table(
    results: pd.DataFrame,
    ensembles: pd.DataFrame,
    majority: pd.DataFrame,
    sig: pd.DataFrame,
    config: Mapping,
    baseline: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """The table (numbers, see the module docstring) and the variant order."""
    swept = "setting" in results and bool((results["setting"] != "").any())
    variants = ordered_by(results, "variant", config)
    others = compared_variants(variants, baseline_variant(config, variants))
    rows = []
    for task in ordered_by(results, "task", config):
        head = {"task": task, "metric": task_metric_from_results(results, task)}
        t = results[results["task"] == task]
        sizes = {c: range_text(t[c]) if c in t else DASH for c in SPLITS}
        for model in ordered_by(results, "model", config):
            for method in ordered_by(results, "method", config):
                g = t[(t["model"] == model) & (t["method"] == method)]
                if g.empty:
                    continue
                key = {**head, "model": model, "method": method}
                seeds = {
                    **key,
                    "row": "seeds",
                    **_seed_cells(g, variants),
                    **_p_values(sig, task, model, method, others),
                    **_method_costs(g),
                    **sizes,
                    **({"chosen": _chosen(g, variants)} if swept else {}),
                }
                rows.append(seeds)
                rows.append(
                    {
                        **key,
                        "row": "ensemble",
                        **_ensemble_cells(ensembles, task, model, method, variants),
                        "n_seeds": seeds["n_seeds"],
                        **sizes,
                    }
                )
        majority_row = _majority_row(head, majority, variants, sizes)
        if majority_row:
            rows.append(majority_row)
        baseline_row = _baseline_row(head, baseline, variants, sizes)
        if baseline_row:
            rows.append(baseline_row)
    columns = [
        "task",
        "metric",
        "model",
        "method",
        "row",
        *[f"p_{v}" for v in others],
        *COST_COLUMNS,
        "n_seeds",
        "finetune_steps",
        *SPLITS,
        *(["chosen"] if swept else []),
        *value_columns(variants),
    ]
    return pd.DataFrame(rows).reindex(columns=columns), variants
