"""Learning curves, for a study with training-set sizes (`train_sizes` or a list in
`tasks.<t>.max_examples.train`; dapt.study.grid): the test score against the number of training examples
per variant and method, mean ± sample std over seeds (learning_curve.csv / .md / .png).

Each size fine-tunes on a nested subset of the training split (dapt.study.sweeps.nested_subset: a smaller
set is a subset of every larger one) and is validated and tested on the full validation and test
splits; where hyperparameters are swept, each size has its own choice on validation (selection.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from dapt.report.design import ordered
from dapt.report.formatting import fmt_score, md_table

CURVE_COLUMNS = [
    "task",
    "metric",
    "model",
    "variant",
    "method",
    "train_size",
    "n_train",
    "n_seeds",
    "mean",
    "std",
    "setting",
]
CURVE_INTRO = (
    "# Learning curves\n\n"
    "Test-set task metric ×100 (mean ± sample standard deviation over seeds) against the number of "
    "training examples. Each size fine-tunes on a nested, label-stratified subset of the training split "
    "(fixed by `split_seed`: a smaller set is a subset of every larger one); validation and test splits "
    "are the full ones, and TAPT, where a variant has it, pretrains on the whole training split's text. "
    "Where hyperparameters are swept, each size uses its own combination chosen on validation (sweep.md).\n"
)


def curve_table(selected: pd.DataFrame, config: Mapping) -> pd.DataFrame:
    """One row per (task, model, variant, method, size) of the chosen runs, in config order."""
    runs = selected[selected["train_size"].notna()]
    if runs.empty:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    n_train = runs["n_train"] if "n_train" in runs else runs["train_size"]
    runs = runs.assign(n_examples=pd.to_numeric(n_train, errors="coerce"), train_size=runs["train_size"].astype(int))
    rows = []
    keys = ["task", "model", "variant", "base_method", "train_size"]
    for key, g in runs.groupby(keys, sort=False):
        s = g["score"].astype(float)
        rows.append(
            {
                "task": key[0],
                "metric": g["metric"].iloc[0],
                "model": key[1],
                "variant": key[2],
                "method": key[3],
                "train_size": key[4],
                "n_train": g["n_examples"].max(),
                "n_seeds": len(g),
                "mean": 100 * s.mean(),
                "std": 100 * s.std(ddof=1) if len(s) > 1 else np.nan,
                "setting": "; ".join(sorted(set(g["setting"]) - {""})),
            }
        )
    table = pd.DataFrame(rows, columns=CURVE_COLUMNS)
    order = {
        col: {name: i for i, name in enumerate(ordered(table[col], config.get(section) or {}))}
        for col, section in (("task", "tasks"), ("model", "models"), ("method", "methods"), ("variant", "variants"))
    }
    recs = table.to_dict("records")
    rank = [
        (
            order["task"][r["task"]],
            order["model"][r["model"]],
            order["method"][r["method"]],
            order["variant"][r["variant"]],
            r["train_size"],
        )
        for r in recs
    ]
    return table.iloc[sorted(range(len(recs)), key=rank.__getitem__)].reset_index(drop=True)


def render_curves(table: pd.DataFrame) -> str:
    """learning_curve.md: per (task, model), a row per method and variant, a column per size."""
    parts = [CURVE_INTRO]
    for (task, model), g in table.groupby(["task", "model"], sort=False):
        sizes = sorted(g["train_size"].unique())
        header = ["method", "variant", *[f"n={n}" for n in sizes]]
        rows = []
        for (method, variant), c in g.groupby(["method", "variant"], sort=False):
            cells = {int(r["train_size"]): fmt_score(r["mean"], r["std"]) for r in c.to_dict("records")}
            rows.append([method, variant, *[cells.get(int(n), "–") for n in sizes]])
        parts.append(
            f"## {task} ({g['metric'].iloc[0]}), {model}\n\n" + md_table(header, rows, ["l", "l", *["r"] * len(sizes)])
        )
    return "\n".join(parts)


def plot_curves(table: pd.DataFrame):
    """Test score against training examples (log x), one colour per variant, one line style per
    method, seed std as error bars; one panel per (task, model)."""
    from dapt.report.plots import _empty_figure, _grid, _label, _plt

    if table.empty:
        return _empty_figure("no learning-curve runs in this study")
    panels = list(table.groupby(["task", "model"], sort=False).groups)
    fig, axes = _grid(len(panels), 6.0, 4.2)
    colors = _plt().rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    variants = list(dict.fromkeys(table["variant"]))
    methods = list(dict.fromkeys(table["method"]))
    for ax, (task, model) in zip(axes, panels):
        g = table[(table["task"] == task) & (table["model"] == model)]
        for (method, variant), c in g.groupby(["method", "variant"], sort=False):
            c = c.sort_values("n_train")
            ax.errorbar(
                c["n_train"],
                c["mean"],
                yerr=np.nan_to_num(c["std"].astype(float)),
                capsize=3,
                marker="o",
                linestyle=styles[methods.index(method) % len(styles)],
                color=colors[variants.index(variant) % len(colors)],
                label=f"{variant} / {method}",
            )
        ax.set_xscale("log")
        _label(
            ax,
            "training examples (log scale)",
            f"test {g['metric'].iloc[0]} ×100 (mean ± std over seeds)",
            f"{task} — {model}",
            "variant / method",
        )
    fig.tight_layout()
    return fig
