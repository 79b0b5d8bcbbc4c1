"""notes.md: what each number rests on (examples per split, pretraining per variant, fine-tuning
steps, data caveats). A score means little without its footing: a 3-point gain from 60 MLM steps on
1k examples is not the paper's 12.5k steps, so this is printed under the table and saved alone."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from dapt.report.design import ordered_by
from dapt.report.formatting import DASH, md_table, range_text

NOTES_TITLE = "# Footing of the results\n\n"


def _range(g: pd.DataFrame, col: str, fmt: str = "{:.0f}") -> str:
    """Range over runs of a column the runs may not report ('–' then)."""
    return range_text(g[col], fmt) if col in g else DASH


def _example_rows(results: pd.DataFrame, tasks: Sequence[str]) -> list[list[str]]:
    rows = []
    for task in tasks:
        t = results[results["task"] == task]
        rows.append(
            [
                task,
                *[_range(t, c) for c in ("n_train", "n_validation", "n_test")],
                str(t["seed"].nunique()),
                str(len(t)),
            ]
        )
    return rows


def _pretrain_rows(results: pd.DataFrame, tasks: Sequence[str], variants: Sequence[str]) -> list[list[str]]:
    rows = []
    for (task, model, variant), g in results.groupby(["task", "model", "variant"], sort=False):
        chain = g["pretrain.chain"].fillna("").astype(str).unique() if "pretrain.chain" in g else [""]
        rows.append(
            [
                task,
                model,
                variant,
                " / ".join(c or "(none)" for c in chain),
                _range(g, "pretrain.steps"),
                _range(g, "pretrain.tokens"),
            ]
        )
    return sorted(rows, key=lambda r: (tasks.index(r[0]), r[1], variants.index(r[2])))


def _finetune_rows(
    results: pd.DataFrame, tasks: Sequence[str], variants: Sequence[str], methods: Sequence[str]
) -> list[list[str]]:
    rows = []
    for (task, model, method, variant), g in results.groupby(["task", "model", "method", "variant"], sort=False):
        rows.append(
            [
                task,
                model,
                method,
                variant,
                _range(g, "train_steps"),
                _range(g, "epochs_run", "{:g}"),
                _range(g, "best_epoch", "{:g}"),
                " ".join(str(s) for s in sorted(g["seed"])),
            ]
        )
    return sorted(rows, key=lambda r: (tasks.index(r[0]), r[1], methods.index(r[2]), variants.index(r[3])))


def _data_rows(results: pd.DataFrame, tasks: Sequence[str]) -> list[list[str]]:
    """Counted, not errors: texts cut at max_length, texts that occur in two splits."""
    rows = []
    for task in tasks:
        t = results[results["task"] == task]
        truncated = [_range(t, f"truncated.{s}") for s in ("train", "validation", "test")]
        shared = [c for c in t.columns if c.startswith("texts_shared_across_splits.")]
        shared_text = ", ".join(f"{c.split('.', 1)[1]}: {range_text(t[c])}" for c in sorted(shared)) or DASH
        rows.append([task, *truncated, shared_text])
    return rows


def build_notes(results: pd.DataFrame, config: Mapping) -> str:
    """The footing tables as Markdown (a section of table.md, and the body of notes.md)."""
    tasks = ordered_by(results, "task", config)
    variants = ordered_by(results, "variant", config)
    methods = ordered_by(results, "method", config)
    return "\n".join(
        [
            "## What each number rests on\n",
            "Examples per split (the test split is what every score and p-value is computed on):\n",
            md_table(["task", "train", "validation", "test", "seeds", "runs"], _example_rows(results, tasks), "lrrrrr"),
            "Pretraining per variant (the chain of MLM stages, and its MLM steps and tokens as "
            "reported by each run's metrics.json `pretrain` field):\n",
            md_table(
                ["task", "model", "variant", "chain", "MLM steps", "MLM tokens"],
                _pretrain_rows(results, tasks, variants),
                "llllrr",
            ),
            "Fine-tuning per run (optimizer steps, epochs run, best epoch; ranges over seeds):\n",
            md_table(
                ["task", "model", "method", "variant", "steps", "epochs", "best epoch", "seeds"],
                _finetune_rows(results, tasks, variants, methods),
                "llllrrrl",
            ),
            "Data caveats (kept, not errors): texts truncated to the task's max_length per split (per "
            "tokenizer; ranges over models), and texts that occur in two splits:\n",
            md_table(
                ["task", "truncated train", "truncated validation", "truncated test", "texts shared across splits"],
                _data_rows(results, tasks),
                "lrrrl",
            ),
        ]
    )
