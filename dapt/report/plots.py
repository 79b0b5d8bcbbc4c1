"""The report's figures (PNG): scores per variant and method, MLM loss, fine-tuning curves, and score
against trainable parameters. matplotlib is imported on first use, with the Agg backend, so the
report runs without a display and the rest of the package does not pay for it."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np
import pandas as pd

from dapt.core import files
from dapt.report.design import ordered_by
from dapt.report.inputs import GROUP_KEYS


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int, width: float = 5.5, height: float = 4.0):
    plt = _plt()
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _panels(frame: pd.DataFrame, config: Mapping) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """Variants and methods in config order, and one panel per (task, model)."""
    return (
        ordered_by(frame, "variant", config),
        ordered_by(frame, "method", config),
        list(frame.groupby(["task", "model"], sort=False).groups),
    )


def _empty_figure(message: str):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12)
    return fig


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """Save a figure atomically (PNG) and free it."""
    plt = _plt()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")
    plt.close(fig)


def plot_scores(results: pd.DataFrame, config: Mapping):
    """Bar chart per (task, model): variants on x, one bar per method, seed std as error bars."""
    variants, methods, panels = _panels(results, config)
    fig, axes = _grid(len(panels))
    width = 0.8 / max(1, len(methods))
    for ax, (task, model) in zip(axes, panels):
        g = results[(results["task"] == task) & (results["model"] == model)]
        stats = g.groupby(["variant", "method"])["score"].agg(["mean", "std"])
        for j, method in enumerate(methods):
            means = [100 * stats["mean"].get((v, method), np.nan) for v in variants]
            stds = [100 * stats["std"].get((v, method), np.nan) for v in variants]
            x = np.arange(len(variants)) + (j - (len(methods) - 1) / 2) * width
            ax.bar(x, means, width, yerr=np.nan_to_num(stds), capsize=3, label=method)
        spread = stats["std"].fillna(0)
        lo, hi = 100 * (stats["mean"] - spread).min(), 100 * (stats["mean"] + spread).max()
        ax.set_ylim(max(0.0, lo - 10), min(105.0, hi + 3))  # not from 0: small gaps stay visible
        ax.set_xticks(np.arange(len(variants)), variants)
        ax.set_xlabel("variant")
        ax.set_ylabel(f"{g['metric'].iloc[0]} ×100 (mean ± std over seeds)")
        ax.set_title(f"{task} — {model}")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(
            title="method",
            fontsize=9,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.2),
            ncol=min(len(methods), 4),
            frameon=False,
        )
    fig.tight_layout()
    return fig


def plot_mlm_loss(pretrain_logs: pd.DataFrame):
    """MLM loss per step, one line per pretraining chain, one panel per model."""
    logs = pretrain_logs.dropna(subset=["step", "loss"])
    if logs.empty:
        return _empty_figure("no MLM pretraining logs in this study")
    models = list(dict.fromkeys(logs["model"]))
    fig, axes = _grid(len(models), 6.5, 4.2)
    for ax, model in zip(axes, models):
        g = logs[logs["model"] == model]
        for chain in sorted(g["chain"].unique()):
            c = g[g["chain"] == chain].sort_values("step")
            ax.plot(c["step"], c["loss"], marker="." if len(c) < 40 else None, label=chain)
        _label(ax, "MLM optimizer step", "MLM loss", f"MLM pretraining — {model}", "chain")
    fig.tight_layout()
    return fig


def _label(ax, xlabel: str, ylabel: str, title: str, legend: str) -> None:
    """Axis labels, title, a light grid and a titled legend: every line plot's frame."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(title=legend, fontsize=8)


def plot_finetune_curves(logs: pd.DataFrame, config: Mapping):
    """Validation macro-F1 per epoch (mean over seeds; last logged value per epoch) per
    variant/method, one panel per (task, model)."""
    logs = logs.dropna(subset=["epoch", "val_macro_f1"])
    if logs.empty:
        return _empty_figure("no fine-tuning logs given")
    last = logs.groupby([*GROUP_KEYS, "seed", "epoch"], sort=False)["val_macro_f1"].last().reset_index()
    curves = last.groupby([*GROUP_KEYS, "epoch"])["val_macro_f1"].agg(["mean", "std"]).reset_index()
    variants, methods, panels = _panels(curves, config)
    fig, axes = _grid(len(panels))
    from matplotlib.ticker import MaxNLocator

    colors = _plt().rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    for ax, (task, model) in zip(axes, panels):
        for i, v in enumerate(variants):
            for j, m in enumerate(methods):
                c = curves[
                    (curves["task"] == task)
                    & (curves["model"] == model)
                    & (curves["variant"] == v)
                    & (curves["method"] == m)
                ].sort_values("epoch")
                if c.empty:
                    continue
                ax.plot(
                    c["epoch"],
                    100 * c["mean"],
                    styles[j % len(styles)],
                    marker="o",
                    color=colors[i % len(colors)],
                    label=f"{v} / {m}",
                )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _label(ax, "epoch", "validation macro-F1 ×100 (mean over seeds)", f"{task} — {model}", "variant / method")
    fig.tight_layout()
    return fig


def plot_f1_vs_params(results: pd.DataFrame, config: Mapping):
    """Task metric against trainable parameters (log x): what each method buys per parameter.

    One marker per method, one colour per variant; variants of a method share x, so they are spread
    by a small multiplicative offset to stay readable."""
    if "trainable_params" not in results or results["trainable_params"].isna().all():
        return _empty_figure("runs report no trainable_params")
    variants, methods, panels = _panels(results, config)
    fig, axes = _grid(len(panels), 6.0, 4.2)
    colors = _plt().rcParams["axes.prop_cycle"].by_key()["color"]
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    for ax, (task, model) in zip(axes, panels):
        g = results[(results["task"] == task) & (results["model"] == model)]
        stats = (
            g.groupby(["method", "variant"])
            .agg(params=("trainable_params", "mean"), mean=("score", "mean"), std=("score", "std"))
            .reset_index()
        )
        for j, m in enumerate(methods):
            for i, v in enumerate(variants):
                s = stats[(stats["method"] == m) & (stats["variant"] == v)]
                if s.empty or not np.isfinite(s["params"].iloc[0]) or s["params"].iloc[0] <= 0:
                    continue
                x = s["params"].iloc[0] * 1.06 ** (i - (len(variants) - 1) / 2)
                ax.errorbar(
                    x,
                    100 * s["mean"].iloc[0],
                    yerr=np.nan_to_num(100 * s["std"].iloc[0]),
                    fmt=markers[j % len(markers)],
                    color=colors[i % len(colors)],
                    capsize=3,
                    markersize=7,
                    label=f"{v} / {m}",
                )
            ms = stats[stats["method"] == m]
            if len(ms) and np.isfinite(ms["params"].max()):
                ax.annotate(
                    m,
                    (ms["params"].mean(), 100 * ms["mean"].max()),
                    textcoords="offset points",
                    xytext=(0, 10),
                    ha="center",
                    fontsize=9,
                )
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_ylabel(f"{g['metric'].iloc[0]} ×100 (mean ± std over seeds)")
        ax.set_title(f"{task} — {model}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(title="variant / method", fontsize=8)
    fig.tight_layout()
    return fig
