"""How numbers are shown: one place for the report's display rules, shared by every renderer.

Scores are stored ×100 (as in Gururangan et al., 2020) and shown with one decimal; a missing value is
an en dash, the table's sign for "not in the grid".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

DASH = "–"
SCORE_DIGITS = 1
METRIC_NAMES = {"macro_f1": "macro-F1", "micro_f1": "micro-F1", "accuracy": "accuracy"}


def finite(x: Any) -> bool:
    """Whether x is a real number (not None, NaN or text)."""
    return isinstance(x, (int, float, np.integer, np.floating)) and bool(np.isfinite(x))


def fmt_score(mean: float, std: float | None = None, digits: int = SCORE_DIGITS) -> str:
    """A score ×100 with its seed spread: '77.5 ± 0.8' ('77.5' without a spread)."""
    if not finite(mean):
        return DASH
    text = f"{mean:.{digits}f}"
    if finite(std):
        text += f" ± {std:.{digits}f}"
    return text


def fmt_num(x: float, fmt: str = "{:.0f}") -> str:
    return fmt.format(x) if finite(x) else DASH


def fmt_pct(x: float) -> str:
    """A percentage with three significant digits ('0.649', '100')."""
    if not finite(x):
        return DASH
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def fmt_p(p: float) -> str:
    """A p-value; blank when there is none (the baseline has no p against itself)."""
    if not finite(p):
        return ""
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def range_text(values: pd.Series, fmt: str = "{:.0f}") -> str:
    """The range of a count over runs: '3', or '2–3' when runs differ."""
    vals = pd.to_numeric(values, errors="coerce").dropna()
    if vals.empty:
        return DASH
    lo, hi = vals.min(), vals.max()
    return fmt.format(lo) if lo == hi else f"{fmt.format(lo)}–{fmt.format(hi)}"


def join_words(words: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured markdown table ('l'/'r' alignment per column)."""
    align = align or ["l"] * len(header)
    sep = [":--" if a == "l" else "--:" for a in align]
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(md_escape(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|")


def tex_escape(text: Any) -> str:
    """Text safe inside a LaTeX table cell."""
    text = str(text)
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("$", r"\$"),
        ("#", r"\#"),
        ("_", r"\_"),
        ("{", r"\{"),
        ("}", r"\}"),
        ("~", r"\textasciitilde{}"),
        ("^", r"\^{}"),
    ):
        text = text.replace(a, b) if a != "\\" else text.replace(a, "\0")
    return text.replace("\0", r"\textbackslash{}")
