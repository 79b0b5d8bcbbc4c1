"""Hyperparameter selection on validation, for a study that sweeps (`dapt.study.grid`).

Per (task, model, variant, method, training size) the swept combination with the best mean
**validation** score over seeds is chosen, and only its runs go into the tables; the test scores of
the others are shown in sweep.md, never used to choose. Rules, said in sweep.md too:

* a run's validation score is the best epoch's validation score of the task metric in its
  fine-tuning log.csv (the epoch fine-tuning kept: train.json's `best_validation`);
* a combination competes only when every seed of the grid has a run with a finite validation score:
  a failed or missing run would compare means over other seeds; such a combination is listed as
  incomplete and never chosen (a group with no complete combination is left out of the tables);
* ties (means within TIE_TOLERANCE) go to the combination listed first in the config (the product
  order of the swept lists, keys in alphabetical order), so the choice is deterministic.

`select` reads only the validation table it is given (no test score is in it); tests check this
with a fake study whose test scores are adversarial.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from dapt.core.errors import UserError
from dapt.study import grid

VAL_COLUMNS = {"macro_f1": "val_macro_f1", "accuracy": "val_accuracy", "micro_f1": "val_accuracy"}
TIE_TOLERANCE = 1e-9
GROUP = ["task", "model", "variant", "base_method", "size_key"]
COMBINATION = [*GROUP, "setting", "setting_rank"]


def display_method(spec: grid.RunSpec) -> str:
    """The method as the tables name it: 'lora', or 'lora n=100' for a learning-curve size."""
    return spec.method if spec.train_size is None else f"{spec.method} n={spec.train_size}"


def _spec(config: Mapping, task: str, name: str) -> grid.RunSpec:
    try:
        return grid.run_spec(config, task, name)
    except (UserError, KeyError, TypeError):  # a run outside the config's grid stands for itself
        return grid.RunSpec(name, name)


def annotate(results: pd.DataFrame, config: Mapping) -> pd.DataFrame:
    """results with each run's method folder read back: `run_method` (the folder), `base_method`,
    `setting` ('lr=0.001, r=16'), `setting_rank`, `train_size`, and `method` as the tables show it."""
    out = results.copy()
    specs = [_spec(config, t, str(m)) for t, m in zip(out["task"], out["method"])]
    out["run_method"] = out["method"].astype(str)
    out["base_method"] = [s.method for s in specs]
    out["setting"] = [s.label() for s in specs]
    out["setting_rank"] = [s.rank for s in specs]
    out["train_size"] = pd.array([s.train_size for s in specs], dtype="Int64")
    out["size_key"] = [s.train_size or 0 for s in specs]
    out["method"] = [display_method(s) for s in specs]
    return out


def validation_scores(runs: pd.DataFrame, logs: pd.DataFrame) -> pd.Series:
    """Each run's validation score (NaN where its log is missing or has no value): the maximum over
    epochs of the task metric's validation column of its log.csv."""
    best: dict[tuple, dict] = {}
    if len(logs):
        logs = logs.assign(seed=pd.to_numeric(logs["seed"], errors="coerce"))
        cols = [c for c in set(VAL_COLUMNS.values()) if c in logs]
        for key, g in logs.groupby(["task", "model", "variant", "method", "seed"], sort=False):
            best[tuple(str(k) for k in key[:4]) + (int(key[4]),)] = {c: g[c].max() for c in cols}
    values = []
    for rec in runs.to_dict("records"):
        key = (str(rec["task"]), str(rec["model"]), str(rec["variant"]), str(rec["run_method"]), int(rec["seed"]))
        values.append(float(best.get(key, {}).get(VAL_COLUMNS.get(rec["metric"], ""), math.nan)))
    return pd.Series(values, index=runs.index, dtype=float)


def expected_runs(config: Mapping) -> pd.DataFrame | None:
    """Seeds the grid expects per combination (None when the config has no grid to expand)."""
    if not grid._complete(config):
        return None
    rows = pd.DataFrame(list(grid.runs(config)))
    if rows.empty:
        return None
    specs = {(t, m): _spec(config, t, m) for t, m in set(zip(rows["task"], rows["method"]))}
    spec = [specs[t, m] for t, m in zip(rows["task"], rows["method"])]
    rows = rows.assign(
        base_method=[s.method for s in spec],
        setting=[s.label() for s in spec],
        setting_rank=[s.rank for s in spec],
        size_key=[s.train_size or 0 for s in spec],
    )
    return rows.groupby(COMBINATION, sort=False).size().rename("n_expected").reset_index()


def select(validation: pd.DataFrame, expected: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per combination with its validation mean/std and runs, `chosen` and `status`.

    `validation`: one row per run with COMBINATION, `seed` and `val_score`, and nothing else is read.
    `expected`: COMBINATION and `n_expected` (expected_runs); without it a combination is expected to
    have every seed its group has."""
    val = validation[[*COMBINATION, "seed", "val_score"]]
    stats = (
        val.groupby(COMBINATION, sort=False)
        .agg(
            n_runs=("seed", "nunique"),
            n_valid=("val_score", lambda s: int(np.isfinite(s).sum())),
            val_mean=("val_score", "mean"),
            val_std=("val_score", lambda s: s.std(ddof=1)),
        )
        .reset_index()
    )
    if expected is not None:  # the grid's combinations in grid order, then any the grid does not expect
        stats = expected.assign(order=range(len(expected))).merge(stats, on=COMBINATION, how="outer")
        stats = stats.sort_values("order", kind="stable", na_position="last").drop(columns="order")
        stats[["n_runs", "n_valid"]] = stats[["n_runs", "n_valid"]].fillna(0)
        stats["n_expected"] = stats["n_expected"].fillna(stats["n_runs"])
    else:
        seeds = val.groupby(GROUP, sort=False)["seed"].nunique().rename("n_expected").reset_index()
        stats = stats.merge(seeds, on=GROUP, how="left")
    stats = stats.astype({"n_expected": int, "n_runs": int, "n_valid": int})
    parts = [_choose(g.sort_values("setting_rank", kind="stable")) for _, g in stats.groupby(GROUP, sort=False)]
    return pd.concat(parts, ignore_index=True) if parts else stats.assign(chosen=[], status=[])


def _choose(g: pd.DataFrame) -> pd.DataFrame:
    """Mark the chosen combination of one group and say why each other one was not."""
    g = g.copy()
    g["chosen"] = False
    incomplete = g["n_valid"] < g["n_expected"]
    g["status"] = [
        f"incomplete: {v} of {e} runs with a validation score (failed or missing)" if bad else "not best"
        for v, e, bad in zip(g["n_valid"], g["n_expected"], incomplete)
    ]
    if len(g) == 1:  # nothing to choose between: the only setting, complete or not
        g["chosen"], g["status"] = True, "only setting"
        return g
    eligible = g[~incomplete & np.isfinite(g["val_mean"])]
    if eligible.empty:
        return g
    top = eligible["val_mean"].max()
    tied = eligible[eligible["val_mean"] >= top - TIE_TOLERANCE]
    winner = tied.index[0]  # sorted by setting_rank: the first listed
    g.loc[winner, "chosen"] = True
    others = [s for s in tied["setting"] if s != g.loc[winner, "setting"]]
    g.loc[winner, "status"] = "chosen" + (f" (tied with {'; '.join(others)}: the first listed wins)" if others else "")
    return g


def select_runs(
    results: pd.DataFrame, logs: pd.DataFrame, config: Mapping
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(the runs of the chosen combinations; the selection table, with test scores added after
    choosing; every run annotated, with its validation score and whether it was selected)."""
    runs = annotate(results, config)
    runs["val_score"] = validation_scores(runs, logs)
    selection = select(runs[[*COMBINATION, "seed", "val_score"]], expected_runs(config))
    chosen = selection.loc[selection["chosen"], COMBINATION]
    selected = runs.merge(chosen, on=COMBINATION, how="inner")
    test = runs.groupby(COMBINATION, sort=False)["score"].agg(test_mean="mean", test_std=lambda s: s.std(ddof=1))
    selection = selection.merge(test.reset_index(), on=COMBINATION, how="left")
    runs["selected"] = runs["metrics_path"].isin(selected["metrics_path"])
    selected = selected.sort_values(["task", "model", "variant", "method", "seed"], kind="stable")
    return selected.reset_index(drop=True), selection, runs.drop(columns=["size_key", "setting_rank"])


def view_logs(logs: pd.DataFrame, selected: pd.DataFrame) -> pd.DataFrame:
    """The fine-tuning logs of the chosen runs, their method named as in the tables."""
    if not len(logs):
        return logs
    names = selected[["task", "model", "variant", "run_method", "method", "seed"]].astype({"seed": str})
    logs = logs.rename(columns={"method": "run_method"}).astype({"seed": str})
    return logs.merge(names, on=["task", "model", "variant", "run_method", "seed"], how="inner")


SWEEP_INTRO = (
    "# Hyperparameter sweep\n\n"
    "Every swept combination of every (task, model, variant, method{size}), its validation and test "
    "scores ×100 (mean ± sample std over seeds). The tables report the **chosen** combination only: "
    "the best mean validation score over seeds (each run's best epoch in its log.csv), among the "
    "combinations whose every seed has a run with a validation score (a failed or missing run makes a "
    "combination incomplete: listed, never chosen). Ties (within {tol:g}) go to the combination listed "
    "first in the config (the product of the swept lists, keys in alphabetical order). Test scores are "
    "shown here and were not used to choose.\n"
)
SWEEP_COLUMNS = [
    "task",
    "model",
    "variant",
    "method",
    "train_size",
    "setting",
    "chosen",
    "status",
    "val_mean",
    "val_std",
    "test_mean",
    "test_std",
    "n_valid",
    "n_runs",
    "n_expected",
    "setting_rank",
]


def sweep_csv(selection: pd.DataFrame) -> pd.DataFrame:
    """sweep.csv: one row per combination of a swept method (unswept methods have nothing to
    choose), scores ×100."""
    out = selection[selection["setting"] != ""].rename(columns={"base_method": "method"})
    out["train_size"] = out["size_key"].map(lambda n: n or "")
    for col in ("val_mean", "val_std", "test_mean", "test_std"):
        out[col] = 100 * out[col].astype(float)
    return out[SWEEP_COLUMNS]


def render_sweep(table: pd.DataFrame) -> str:
    """sweep.md: the rule, then every combination (the chosen one in bold) and groups left out."""
    from dapt.report.formatting import fmt_score, md_table

    sized = bool((table["train_size"] != "").any())
    header = [
        "task",
        "model",
        "variant",
        "method",
        *(["n train"] if sized else []),
        "setting",
        "validation",
        "test",
        "runs",
        "status",
    ]
    rows = []
    for rec in table.to_dict("records"):
        setting = f"**{rec['setting']}**" if rec["chosen"] else rec["setting"]
        rows.append(
            [
                rec["task"],
                rec["model"],
                rec["variant"],
                rec["method"],
                *([str(rec["train_size"])] if sized else []),
                setting or "(none)",
                fmt_score(rec["val_mean"], rec["val_std"]),
                fmt_score(rec["test_mean"], rec["test_std"]),
                f"{rec['n_valid']}/{rec['n_expected']}",
                rec["status"],
            ]
        )
    left_out = [
        " / ".join(str(x) for x in key)
        for key, g in table.groupby(["task", "model", "variant", "method", "train_size"], sort=False)
        if not g["chosen"].any()
    ]
    text = SWEEP_INTRO.format(size=", training size" if sized else "", tol=TIE_TOLERANCE) + "\n"
    text += md_table(header, rows, ["l"] * (len(header) - 4) + ["r", "r", "r", "l"])
    if left_out:
        text += "\nNo complete combination, so not in the tables: " + "; ".join(left_out) + ".\n"
    return text
