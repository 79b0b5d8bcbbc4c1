"""Robustness, for a study with `robustness:` (dapt.data.augment): every run's task metric on each perturbed
copy of the test split beside its clean score on the same documents, mean ± sample std over seeds
(robustness.csv / .md), and the drop per method and variant (robustness.png).

Each run's evaluate job writes robustness.json (dapt.finetune.evaluation.score_perturbed). The perturbed texts
are one file per task and perturbation, the same for every run, so rows differ only by the model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from dapt.core.errors import UserError
from dapt.core.files import read_json
from dapt.report.design import ordered
from dapt.report.formatting import DASH, fmt_score, md_table
from dapt.study import layout

ROBUSTNESS_COLUMNS = [
    "task",
    "metric",
    "model",
    "variant",
    "method",
    "perturbation",
    "rate",
    "n_docs",
    "changed",
    "n_seeds",
    "clean_mean",
    "clean_std",
    "mean",
    "std",
    "drop_mean",
    "drop_std",
]
ROBUSTNESS_INTRO = (
    "# Robustness\n\n"
    "Test-set task metric ×100 under seeded perturbations of the test texts (mean ± sample standard "
    "deviation over seeds), beside the clean score on the same documents; *drop* is clean minus "
    "perturbed, per seed, then averaged (positive: the perturbation hurts). Every run reads the same "
    "perturbed files (results/data/perturbed/); *changed* counts the texts a perturbation altered. "
    "A perturbation that changes no token (e.g. case changes under an uncased tokenizer) scores as clean.\n"
)


def read_robustness(paths: Sequence[str | os.PathLike]) -> dict[str, dict]:
    """Each run's robustness.json, by its run key (layout.run_key)."""
    out = {}
    for path in paths:
        record = read_json(path)
        try:
            out[layout.run_key(record)] = record
        except KeyError as err:
            raise UserError(str(path), f"missing field {err}", "written by scripts/evaluate.py --robustness") from None
    return out


def robustness_table(results: pd.DataFrame, records: Mapping[str, dict], config: Mapping) -> pd.DataFrame:
    """One row per (task, model, variant, method, perturbation) of the reported runs, in config order."""
    rates = (config.get("robustness") or {}).get("perturbations") or {}
    rows = []
    for rec in results.to_dict("records"):
        run = {**rec, "method": rec.get("run_method") or rec["method"]} if "run_method" in rec else rec
        scores = records.get(layout.run_key(run))
        if not scores or not scores.get("perturbations"):
            continue
        metric = rec["metric"]
        for name, s in scores["perturbations"].items():
            rows.append(
                {
                    "task": rec["task"],
                    "metric": metric,
                    "model": rec["model"],
                    "variant": rec["variant"],
                    "method": rec["method"],
                    "seed": rec["seed"],
                    "perturbation": name,
                    "rate": rates.get(name),
                    "n_docs": s["n"],
                    "changed": s["changed"],
                    "clean": scores["clean"][metric],
                    "score": s[metric],
                }
            )
    if not rows:
        return pd.DataFrame(columns=ROBUSTNESS_COLUMNS)
    runs = pd.DataFrame(rows)
    out = []
    keys = ["task", "model", "variant", "method", "perturbation"]
    for key, g in runs.groupby(keys, sort=False):
        clean, score = 100 * g["clean"].astype(float), 100 * g["score"].astype(float)
        drop = clean - score
        out.append(
            {
                **dict(zip(keys, key)),
                "metric": g["metric"].iloc[0],
                "rate": g["rate"].iloc[0],
                "n_docs": int(g["n_docs"].iloc[0]),
                "changed": int(g["changed"].iloc[0]),
                "n_seeds": len(g),
                "clean_mean": clean.mean(),
                "clean_std": _std(clean),
                "mean": score.mean(),
                "std": _std(score),
                "drop_mean": drop.mean(),
                "drop_std": _std(drop),
            }
        )
    table = pd.DataFrame(out)
    sections = {
        "task": config.get("tasks"),
        "model": config.get("models"),
        "method": config.get("methods"),
        "variant": config.get("variants"),
        "perturbation": rates,
    }
    order = {
        col: {name: i for i, name in enumerate(ordered(table[col], names or {}))} for col, names in sections.items()
    }
    recs = table.to_dict("records")
    rank = [tuple(order[c][r[c]] for c in ("task", "model", "method", "variant", "perturbation")) for r in recs]
    table = table.iloc[sorted(range(len(recs)), key=rank.__getitem__)].reset_index(drop=True)
    return table[ROBUSTNESS_COLUMNS]


def _std(values: pd.Series) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def render_robustness(table: pd.DataFrame) -> str:
    """robustness.md: per (task, model), a row per method and variant: clean, then each perturbation's
    score and its drop."""
    parts = [ROBUSTNESS_INTRO]
    if table.empty:
        return "\n".join(parts + ["No run has perturbed scores.\n"])
    for (task, model), g in table.groupby(["task", "model"], sort=False):
        perturbations = list(dict.fromkeys(g["perturbation"]))
        first = g.drop_duplicates("perturbation").set_index("perturbation")
        header = ["method", "variant", "clean", *[f"{p} ({first.at[p, 'rate']:g})" for p in perturbations]]
        rows = []
        for (method, variant), c in g.groupby(["method", "variant"], sort=False):
            by = c.set_index("perturbation")
            cells = [
                f"{fmt_score(by.at[p, 'mean'], by.at[p, 'std'])} (−{by.at[p, 'drop_mean']:.1f})"
                if p in by.index
                else DASH
                for p in perturbations
            ]
            rows.append([method, variant, fmt_score(c["clean_mean"].iloc[0], c["clean_std"].iloc[0]), *cells])
        changed = ", ".join(f"{p} {first.at[p, 'changed']}/{first.at[p, 'n_docs']}" for p in perturbations)
        parts.append(
            f"## {task} ({g['metric'].iloc[0]}), {model}\n\n"
            + md_table(header, rows, ["l", "l", *["r"] * (len(perturbations) + 1)])
            + f"\nTexts changed: {changed}.\n"
        )
    return "\n".join(parts)


def plot_robustness(table: pd.DataFrame):
    """The drop (clean − perturbed, ×100, mean ± std over seeds) per perturbation, one bar per
    method/variant; one panel per (task, model)."""
    from dapt.report.plots import _empty_figure, _grid, _label

    if table.empty:
        return _empty_figure("no robustness scores in this study")
    panels = list(table.groupby(["task", "model"], sort=False).groups)
    fig, axes = _grid(len(panels), 7.0, 4.2)
    for ax, (task, model) in zip(axes, panels):
        g = table[(table["task"] == task) & (table["model"] == model)]
        perturbations = list(dict.fromkeys(g["perturbation"]))
        groups = list(dict.fromkeys(zip(g["method"], g["variant"])))
        width = 0.8 / len(groups)
        for i, (method, variant) in enumerate(groups):
            c = g[(g["method"] == method) & (g["variant"] == variant)].set_index("perturbation")
            x = np.arange(len(perturbations)) + (i - (len(groups) - 1) / 2) * width
            ax.bar(
                x,
                [c.at[p, "drop_mean"] if p in c.index else np.nan for p in perturbations],
                width,
                yerr=[np.nan_to_num(c.at[p, "drop_std"]) if p in c.index else 0 for p in perturbations],
                capsize=2,
                label=f"{method} / {variant}",
            )
        ax.set_xticks(np.arange(len(perturbations)), perturbations)
        ax.axhline(0, color="black", linewidth=0.8)
        _label(
            ax,
            "perturbation",
            f"drop in test {g['metric'].iloc[0]} ×100 (clean − perturbed)",
            f"{task} — {model}",
            "method / variant",
        )
    fig.tight_layout()
    return fig
