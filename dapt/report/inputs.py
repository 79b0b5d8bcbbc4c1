"""Reading a study's per-run files. Every failure names the file, so a broken upstream job is found
at once, and everything is validated here so the rest of the report can trust what it gets."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from dapt.core import files
from dapt.core.errors import UserError, diverged
from dapt.finetune.metrics import METRICS
from dapt.study import layout

REQUIRED_METRIC_KEYS = (*layout.RUN_KEYS, "labels", *METRICS)
BENCHMARK_COLUMNS = ("s", "max_rss")
LOG_COLUMNS = ("epoch", "val_macro_f1")
PRETRAIN_LOG_COLUMNS = ("step", "loss")
GROUP_KEYS = ["task", "model", "variant", "method"]


def read_json_object(path: str | os.PathLike, what: str, rule: str) -> dict:
    """A JSON object a rule wrote; a missing, unreadable or non-object file is one line naming it."""
    try:
        data = files.read_json(path)
    except FileNotFoundError:
        raise UserError(str(path), f"{what} file is missing", f"re-run the {rule} rule") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(str(path), f"cannot parse {what} JSON: {err}", f"re-run the {rule} rule") from None
    if not isinstance(data, dict):
        raise UserError(str(path), f"{what} JSON is not an object")
    return data


def read_metrics(path: str | os.PathLike) -> dict:
    """Read one run's metrics.json and check the keys the report depends on."""
    path = Path(path)
    data = read_json_object(path, "metrics", "evaluate")
    if diverged(data):  # a run recorded as failed (dapt.finetune.evaluation.record_diverged): no scores
        missing = [k for k in (*layout.RUN_KEYS, "error") if k not in data]
        if missing:
            raise UserError(str(path), f"failed-run metrics lack keys {missing}", "re-run the evaluate rule")
        return data
    missing = [k for k in REQUIRED_METRIC_KEYS if k not in data]
    if missing:
        raise UserError(str(path), f"metrics lack keys {missing}", "re-run the evaluate rule")
    for k in METRICS:
        v = data[k]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= float(v) <= 1.0:
            raise UserError(str(path), f"{k}={v!r} is not a fraction in [0, 1]")
    if not isinstance(data["labels"], list) or not data["labels"]:
        raise UserError(str(path), "'labels' must be a non-empty list")
    return data


def read_csv(path: str | os.PathLike, required: Sequence[str], what: str, **kwargs: Any) -> pd.DataFrame:
    """Read a CSV/TSV input; a missing file, a parse error or a missing column names the file."""
    path = Path(path)
    try:
        df = pd.read_csv(path, **kwargs)
    except FileNotFoundError:
        raise UserError(str(path), f"{what} is missing") from None
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise UserError(str(path), f"cannot parse {what}: {err}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise UserError(str(path), f"{what} lacks columns {missing} (has {list(df.columns)})")
    return df


def read_predictions(path: str | os.PathLike, labels: Sequence[str]) -> pd.DataFrame:
    """Read predictions.csv: id, gold, predicted and one p_<label> column per label (as str)."""
    labels = [str(x) for x in labels]
    prob_cols = [f"p_{lab}" for lab in labels]
    df = read_csv(
        path, ["id", "gold", "predicted", *prob_cols], "predictions", dtype={"id": str, "gold": str, "predicted": str}
    )
    if df.empty:
        raise UserError(str(path), "predictions are empty")
    if df["id"].duplicated().any():
        raise UserError(str(path), "duplicate ids in predictions")
    unknown = sorted(set(df["gold"]) - set(labels))
    if unknown:
        raise UserError(str(path), f"gold labels {unknown[:5]} are not in the run's labels {labels}")
    try:
        df[prob_cols] = df[prob_cols].astype(float)
    except ValueError as err:
        raise UserError(str(path), f"non-numeric probabilities: {err}") from None
    return df.sort_values("id", kind="stable").reset_index(drop=True)


def read_benchmark(path: str | os.PathLike) -> dict:
    """Read one Snakemake benchmark TSV; repeats (several rows) are averaged."""
    df = read_csv(path, BENCHMARK_COLUMNS, "benchmark", sep="\t")
    if df.empty:
        raise UserError(str(path), "benchmark file has no rows")
    s = pd.to_numeric(df["s"], errors="coerce")
    rss = pd.to_numeric(df["max_rss"], errors="coerce")  # "-"/"NA" when psutil could not measure
    return {"wall_s": float(s.mean()), "max_rss_mb": float(rss.max()) if rss.notna().any() else math.nan}


def expand_benchmarks(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Benchmark files; a folder (e.g. `results/benchmarks`) stands for every .tsv below it."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*.tsv") if q.is_file() and not q.name.startswith("."))
        else:
            out.append(p)
    return out


def read_benchmarks(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """All benchmark files (folders expanded) as one table: rule, key (wildcard path), wall_s,
    max_rss_mb, path."""
    rows = []
    for p in expand_benchmarks(paths):
        rule, parts = layout.benchmark_key(p)
        rows.append({"rule": rule, "key": "/".join(parts), "path": str(p), **read_benchmark(p)})
    return pd.DataFrame(rows, columns=["rule", "key", "path", "wall_s", "max_rss_mb"])


def _numeric_columns(frames: list[pd.DataFrame], cols: Sequence[str], numeric: Sequence[str]) -> pd.DataFrame:
    """Concatenate per-file logs; their value columns as numbers (NaN where unparseable)."""
    if not frames:
        return pd.DataFrame(columns=list(cols))
    out = pd.concat(frames, ignore_index=True)
    for c in numeric:
        out[c] = pd.to_numeric(out[c], errors="coerce")
    return out


def read_finetune_logs(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Fine-tuning logs (`.../{task}/{model}/{variant}/{method}/seed{seed}/log.csv`) as one table."""
    frames = []
    for p in paths:
        run = layout.run_of_file(p, "fine-tuning log")
        frames.append(read_csv(p, LOG_COLUMNS, "fine-tuning log").assign(**run))
    return _numeric_columns(frames, [*GROUP_KEYS, "seed", "epoch", "val_macro_f1"], LOG_COLUMNS)


def read_pretrain_logs(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """MLM loss logs (`.../pretrain/{model}/{chain}/loss.csv`) as one table."""
    frames = []
    for p in paths:
        model, chain = layout.chain_of_file(p, "pretraining log")
        frames.append(read_csv(p, PRETRAIN_LOG_COLUMNS, "pretraining log").assign(model=model, chain=chain))
    return _numeric_columns(frames, ["model", "chain", "step", "loss"], PRETRAIN_LOG_COLUMNS)
