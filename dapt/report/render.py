"""The main table as text: table.md (Markdown) and table.csv (the numbers with their display
strings beside them, so a reader of the CSV sees both). LaTeX is in latex.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from dapt.report.formatting import DASH, finite, fmt_num, fmt_p, fmt_pct, fmt_score, md_table
from dapt.report.table import FIXED_ROWS, best_variants, compared_variants, value_columns

SIGNIFICANCE_TEXT = (
    "p: two-sided paired bootstrap test of the variant against `{base}` (same task, model and "
    "method) over the test examples: {n:,} resamples of the test set with a fixed seed ({seed}), "
    "both systems scored on the same resample with the task metric, using the seed-ensemble "
    "predictions (class probabilities averaged over seeds, then argmax); "
    "p = (1 + #{{|δ* − δ| ≥ |δ|}}) / (B + 1)."
)
TABLE_INTRO = (
    "Test-set task metric ×100. Row *seeds*: mean ± sample standard deviation (ddof=1) over the "
    "fine-tuning seeds; row *ensemble*: the seed ensemble (class probabilities averaged over "
    "seeds, argmax); row *majority*: always predicting the most frequent test label. "
    "**Bold**: best variant of the row. Trainable %, fine-tune wall time (mean per run, from "
    "the Snakemake benchmark of the finetune rule) and peak memory (max over runs, as reported "
    "by the run) are per method.\n"
)
BASELINE_TEXT = (
    "Row *baseline*: TF-IDF (word 1–2-grams) + logistic regression (scikit-learn) trained on the same "
    "training split, C chosen on the validation split (named in the row), scored on the same test split.\n"
)
CHOSEN_TEXT = (
    "Swept hyperparameters: each cell rests on the combination with the best mean validation score over "
    "seeds, never on test scores (column *chosen*; every combination and the rule: sweep.md).\n"
)


def cell_text(rec: Mapping[str, Any], variant: str) -> str:
    """A variant's cell: 'mean ± std' (×100); '–' for a variant not in the grid; the majority and
    baseline rows fill only their first cell and leave the others blank."""
    mean = rec.get(f"{variant}_mean")
    if not finite(mean):
        return "" if rec.get("row") in FIXED_ROWS else DASH
    return fmt_score(mean, rec.get(f"{variant}_std"))


def table_csv(table: pd.DataFrame, variants: Sequence[str]) -> pd.DataFrame:
    """table.csv: the display cells and best variants first, then every number they come from."""
    out = table.copy()
    records = table.to_dict("records")
    for v in variants:
        out[v] = [cell_text(rec, v) for rec in records]
    out["best"] = [" ".join(best_variants(rec, variants)) for rec in records]
    numbers = value_columns(variants)
    lead = ["task", "metric", "model", "method", "row", *variants, "best"]
    return out[lead + [c for c in table.columns if c not in lead and c not in numbers] + numbers]


def _markdown_row(rec: Mapping[str, Any], variants: Sequence[str], others: Sequence[str], chosen: bool) -> list[str]:
    best = set(best_variants(rec, variants))
    cells = [f"{rec['task']} ({rec['metric']})", rec["model"], rec["method"], rec["row"]]
    for v in variants:
        c = cell_text(rec, v)
        cells.append(f"**{c}**" if v in best and c not in ("", DASH) else c)
    is_seeds = rec["row"] == "seeds"
    cells += [fmt_p(rec.get(f"p_{v}")) if is_seeds else "" for v in others]
    cells += [
        fmt_pct(rec.get("trainable_pct")) if is_seeds else "",
        fmt_num(rec.get("finetune_wall_s"), "{:.1f}") if is_seeds else "",
        fmt_num(rec.get("peak_memory_mb")) if is_seeds else "",
        str(rec.get("n_seeds")) if rec["row"] not in FIXED_ROWS else "",
    ]
    return cells + ([str(rec.get("chosen") or "") if is_seeds else ""] if chosen else [])


def render_markdown(
    table: pd.DataFrame,
    variants: Sequence[str],
    base: str | None,
    notes: str,
    runtime_md: str,
    n_resamples: int,
    seed: int,
) -> str:
    """table.md: the main table (best per row in bold), the footing of each number, runtime."""
    others = compared_variants(variants, base)
    chosen = "chosen" in table
    header = [
        "task (metric)",
        "model",
        "method",
        "row",
        *variants,
        *[f"p {v} vs {base}" for v in others],
        "trainable %",
        "fine-tune wall (s)",
        "peak mem (MB)",
        "n seeds",
        *(["chosen (validation)"] if chosen else []),
    ]
    align = ["l", "l", "l", "l", *["r"] * (len(header) - 4 - chosen), *(["l"] if chosen else [])]
    rows = [_markdown_row(rec, variants, others, chosen) for rec in table.to_dict("records")]
    parts = [
        "# Results\n",
        TABLE_INTRO + (BASELINE_TEXT if (table["row"] == "baseline").any() else "") + (CHOSEN_TEXT if chosen else ""),
        SIGNIFICANCE_TEXT.format(base=base, n=n_resamples, seed=seed) + "\n" if others else "",
        md_table(header, rows, align),
        "\n" + notes,
        "\n" + runtime_md if runtime_md else "",
    ]
    return "\n".join(p for p in parts if p)
