"""Turn the per-run outputs of a study into the paper-style report.

The report is the only place where runs meet, so it is also where the study is checked for
consistency (same test set for every run of a task, one result per run, scores in [0, 1]) and where
each number is tied to what it rests on (examples, pretraining and fine-tuning steps, seeds). All the
functions here are pure (inputs in, DataFrames/figures/text out) so that the tests can check every
number independently; reading files and writing outputs are kept in small, clearly named helpers.

Conventions:

* Scores are fractions in [0, 1] in the inputs and are shown ×100 with one decimal, as in
  Gururangan et al. (2020).
* "± std" is the sample standard deviation over seeds (ddof=1), the usual spread reported for seed
  variation; with a single seed it is left blank rather than shown as 0.
* The significance test is a paired bootstrap over test examples on the seed-ensemble predictions,
  because the seeds of a variant and of `base` share the test set and the ensemble is the single
  best estimate of each variant's predictions.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dapt import files
from dapt.errors import UserError
from dapt.redact import redact_config, scrub, secret_values

METRICS = ("accuracy", "macro_f1", "micro_f1")
DEFAULT_METRIC = "macro_f1"
RUN_KEYS = ["task", "model", "variant", "method", "seed"]
GROUP_KEYS = ["task", "model", "variant", "method"]
REQUIRED_METRIC_KEYS = ("task", "model", "variant", "method", "seed", "labels", *METRICS)
BENCHMARK_COLUMNS = ("s", "max_rss")
LOG_COLUMNS = ("epoch", "val_macro_f1")
PRETRAIN_LOG_COLUMNS = ("step", "loss")
PROVENANCE_PACKAGES = (
    "torch", "transformers", "datasets", "peft", "accelerate", "snakemake", "pandas",
    "scikit-learn", "numpy", "scipy", "matplotlib", "tokenizers", "huggingface-hub",
)
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
BASELINE_VARIANT = "base"
DASH = "–"

# Environment variables whose values must never reach an output, even by accident (e.g. a token
# pasted into a config URL). Nothing in the report reads the environment on purpose.


# --------------------------------------------------------------------------------------------
# Reading inputs: every failure names the file, so a broken upstream job is found at once.
# --------------------------------------------------------------------------------------------

def read_metrics(path: str | os.PathLike) -> dict:
    """Read one run's metrics.json and check the keys the report depends on."""
    path = Path(path)
    try:
        data = files.read_json(path)
    except FileNotFoundError:
        raise UserError(str(path), "metrics file is missing", "re-run the evaluate rule") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(str(path), f"cannot parse metrics JSON: {err}", "re-run the evaluate rule") from None
    if not isinstance(data, dict):
        raise UserError(str(path), "metrics JSON is not an object")
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
    df = read_csv(path, ["id", "gold", "predicted", *prob_cols], "predictions",
                  dtype={"id": str, "gold": str, "predicted": str})
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


def benchmark_key(path: str | os.PathLike) -> tuple[str, list[str]]:
    """Rule name and wildcard parts of `.../benchmarks/{rule}/{w1}/.../{wn}.tsv`.

    The path is the only place the benchmark names its job, so it must follow that layout.
    """
    parts = list(Path(path).with_suffix("").parts)
    idx = [i for i, p in enumerate(parts) if p == "benchmarks"]
    if not idx or idx[-1] == len(parts) - 1:
        raise UserError(str(path), "benchmark path is not results/benchmarks/{rule}/...tsv",
                        "benchmark files must live under a 'benchmarks' folder named by rule")
    i = idx[-1]
    return parts[i + 1], parts[i + 2:]  # a job without wildcards: benchmarks/{rule}.tsv


def run_key(row: Mapping[str, Any]) -> str:
    """The wildcard path of a run, as the finetune/evaluate outputs and benchmarks spell it."""
    return f"{row['task']}/{row['model']}/{row['variant']}/{row['method']}/seed{row['seed']}"


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
        rule, parts = benchmark_key(p)
        rows.append({"rule": rule, "key": "/".join(parts), "path": str(p), **read_benchmark(p)})
    return pd.DataFrame(rows, columns=["rule", "key", "path", "wall_s", "max_rss_mb"])


def _path_wildcards(path: str | os.PathLike, n: int, what: str) -> list[str]:
    """The n folder names above a log file (its wildcards, by the output layout)."""
    parts = Path(path).parent.parts
    if len(parts) < n:
        raise UserError(str(path), f"{what} path does not encode its wildcards")
    return list(parts[-n:])


def read_finetune_logs(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Fine-tuning logs (`.../{task}/{model}/{variant}/{method}/seed{seed}/log.csv`) as one table."""
    frames = []
    for p in paths:
        task, model, variant, method, seed = _path_wildcards(p, 5, "fine-tuning log")
        if not seed.startswith("seed"):
            raise UserError(str(p), "fine-tuning log path lacks the seed{N} folder")
        df = read_csv(p, LOG_COLUMNS, "fine-tuning log")
        df = df.assign(task=task, model=model, variant=variant, method=method, seed=seed[4:])
        frames.append(df)
    cols = [*GROUP_KEYS, "seed", "epoch", "val_macro_f1"]
    if not frames:
        return pd.DataFrame(columns=cols)
    out = pd.concat(frames, ignore_index=True)
    out["epoch"] = pd.to_numeric(out["epoch"], errors="coerce")
    out["val_macro_f1"] = pd.to_numeric(out["val_macro_f1"], errors="coerce")
    return out


def read_pretrain_logs(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """MLM loss logs (`.../pretrain/{model}/{chain}/loss.csv`) as one table."""
    frames = []
    for p in paths:
        model, chain = _path_wildcards(p, 2, "pretraining log")
        df = read_csv(p, PRETRAIN_LOG_COLUMNS, "pretraining log")
        frames.append(df.assign(model=model, chain=chain))
    if not frames:
        return pd.DataFrame(columns=["model", "chain", "step", "loss"])
    out = pd.concat(frames, ignore_index=True)
    out["step"] = pd.to_numeric(out["step"], errors="coerce")
    out["loss"] = pd.to_numeric(out["loss"], errors="coerce")
    return out


# --------------------------------------------------------------------------------------------
# Scoring. One implementation from confusion counts serves single predictions and the vectorised
# bootstrap, so the ensemble, majority baseline and significance test score exactly alike.
# --------------------------------------------------------------------------------------------

def score_confusion(conf: np.ndarray, metric: str) -> np.ndarray:
    """Score confusion counts `conf[..., gold, predicted]` (any leading batch shape).

    macro-F1 averages the per-class F1 over all the task's labels, with F1 = 0 for a class that is
    never gold nor predicted (sklearn's zero_division=0); micro-F1 equals accuracy for single-label
    classification.
    """
    conf = np.asarray(conf, dtype=float)
    total = conf.sum(axis=(-2, -1))
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    if metric in ("accuracy", "micro_f1"):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, tp.sum(axis=-1) / np.where(total > 0, total, 1), 0.0)
    if metric == "macro_f1":
        fp = conf.sum(axis=-2) - tp
        fn = conf.sum(axis=-1) - tp
        denom = 2 * tp + fp + fn
        f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)
        return f1.mean(axis=-1)
    raise UserError("config", f"unknown metric {metric!r}", f"use one of {list(METRICS)}")


def encode(values: Sequence[str], labels: Sequence[str], where: str = "predictions") -> np.ndarray:
    """Map label strings to their index in `labels`."""
    index = {str(lab): i for i, lab in enumerate(labels)}
    try:
        return np.array([index[str(v)] for v in values], dtype=np.int64)
    except KeyError as err:
        raise UserError(where, f"label {err.args[0]!r} is not one of {list(labels)}") from None


def confusion(gold: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """k×k confusion counts of integer-coded gold/predicted labels."""
    return np.bincount(gold * k + pred, minlength=k * k).reshape(k, k)


def score(gold: np.ndarray, pred: np.ndarray, k: int, metric: str) -> float:
    """Task metric of integer-coded predictions."""
    return float(score_confusion(confusion(gold, pred, k), metric))


def paired_bootstrap(
    gold: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    k: int,
    metric: str,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict:
    """Two-sided paired bootstrap test of metric(A) − metric(B) over test examples.

    Both systems are scored on the same resampled examples (the pairing removes the variance of
    which examples are hard). The bootstrap distribution of δ* is shifted to the null δ = 0 and
    p = (1 + #{|δ* − δ| ≥ |δ|}) / (B + 1), so p is never exactly 0 and identical predictions give
    p = 1. A 95% percentile interval of δ is returned too. A fixed seed makes p reproducible.
    """
    gold = np.asarray(gold, dtype=np.int64)
    pred_a = np.asarray(pred_a, dtype=np.int64)
    pred_b = np.asarray(pred_b, dtype=np.int64)
    n = len(gold)
    if n == 0 or len(pred_a) != n or len(pred_b) != n:
        raise ValueError("gold and both predictions must be non-empty and of equal length")
    cat_a = gold * k + pred_a
    cat_b = gold * k + pred_b
    observed = score(gold, pred_a, k, metric) - score(gold, pred_b, k, metric)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_resamples, 4_000_000 // n))
    deltas = np.empty(n_resamples)
    kk = k * k
    for start in range(0, n_resamples, chunk):
        c = min(chunk, n_resamples - start)
        idx = rng.integers(0, n, size=(c, n))
        offsets = (np.arange(c) * kk)[:, None]
        conf_a = np.bincount((cat_a[idx] + offsets).ravel(), minlength=c * kk).reshape(c, k, k)
        conf_b = np.bincount((cat_b[idx] + offsets).ravel(), minlength=c * kk).reshape(c, k, k)
        deltas[start:start + c] = score_confusion(conf_a, metric) - score_confusion(conf_b, metric)
    extreme = np.abs(deltas - observed) >= abs(observed) - 1e-12
    p = (1 + int(extreme.sum())) / (n_resamples + 1)
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    return {"delta": observed, "p_value": p, "ci_low": float(lo), "ci_high": float(hi),
            "n_test": n, "n_resamples": n_resamples, "bootstrap_seed": seed}


# --------------------------------------------------------------------------------------------
# Study structure
# --------------------------------------------------------------------------------------------

def task_metric(config: Mapping, task: str) -> str:
    """The metric a task is scored by (macro-F1 unless the task's config says otherwise)."""
    metric = ((config.get("tasks") or {}).get(task) or {}).get("metric", DEFAULT_METRIC)
    if metric not in METRICS:
        raise UserError(f"config tasks.{task}.metric", f"unknown metric {metric!r}", f"use one of {list(METRICS)}")
    return metric


def ordered(present: Iterable[str], config_order: Iterable[str]) -> list[str]:
    """Names in config order first (the order the study was designed in), then any others sorted."""
    present = list(dict.fromkeys(str(x) for x in present))
    config_order = [str(x) for x in config_order]
    return [x for x in config_order if x in present] + sorted(x for x in present if x not in config_order)


def baseline_variant(config: Mapping, variants: Sequence[str]) -> str | None:
    """The variant every other is compared with: `base`, else the first with no pretraining chain."""
    if BASELINE_VARIANT in variants:
        return BASELINE_VARIANT
    for name, chain in (config.get("variants") or {}).items():
        if not chain and name in variants:
            return name
    return None


# --------------------------------------------------------------------------------------------
# Per-run results
# --------------------------------------------------------------------------------------------

def flatten(obj: Mapping, prefix: str = "") -> dict:
    """Flatten nested dicts with '.'; lists become JSON text so one run stays one CSV row."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def build_results(
    metrics: Sequence[tuple[str, dict]], benchmarks: pd.DataFrame, config: Mapping
) -> pd.DataFrame:
    """One row per run: every metrics field flattened, the task metric, and the wall time/max RSS of
    the run's finetune and evaluate jobs (matched by wildcard path), so cost sits next to score."""
    rows = []
    seen: dict[str, str] = {}
    for path, m in metrics:
        row = flatten(m)
        for k in ("task", "model", "variant", "method"):
            row[k] = str(m[k])
        row["seed"] = int(m["seed"])
        key = run_key(row)
        if key in seen:
            raise UserError(path, f"run {key} is reported twice (also in {seen[key]})")
        seen[key] = path
        row["metric"] = task_metric(config, row["task"])
        row["score"] = float(m[row["metric"]])
        if m.get("trainable_params") and m.get("total_params"):
            row["trainable_pct_computed"] = 100.0 * m["trainable_params"] / m["total_params"]
        row["metrics_path"] = str(path)
        rows.append(row)
    df = pd.DataFrame(rows)
    for rule in ("finetune", "evaluate"):
        wall, rss = [], []
        bench = benchmarks[benchmarks["rule"] == rule] if len(benchmarks) else benchmarks
        by_key: dict[str, dict] = {}
        for rec in bench.to_dict("records"):
            by_key[rec["key"]] = rec
            # tolerate .../seed1/benchmark.tsv as well as .../seed1.tsv
            by_key.setdefault(rec["key"].rpartition("/")[0], rec)
        for rec in df.to_dict("records"):
            hit = by_key.get(run_key(rec))
            wall.append(hit["wall_s"] if hit else math.nan)
            rss.append(hit["max_rss_mb"] if hit else math.nan)
        df[f"{rule}_wall_s"] = wall
        df[f"{rule}_max_rss_mb"] = rss
    front = [*RUN_KEYS, "metric", "score", *METRICS]
    df = df[front + [c for c in df.columns if c not in front]]
    return df.sort_values(RUN_KEYS, kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Ensemble, majority baseline, significance
# --------------------------------------------------------------------------------------------

def _labels_of(results: pd.DataFrame, mask: pd.Series) -> list[str]:
    values = results.loc[mask, "labels"].unique()
    if len(values) != 1:
        raise UserError("metrics", f"runs disagree on the label set: {list(values)}")
    return [str(x) for x in json.loads(values[0])]


def ensemble_predictions(preds: Mapping[int, pd.DataFrame], labels: Sequence[str], where: str) -> pd.DataFrame:
    """Average the seeds' class probabilities per test example and take the argmax.

    All seeds must predict the same test examples with the same gold labels, otherwise averaging
    would mix different examples. Ties go to the first label in label order.
    """
    seeds = sorted(preds)
    first = preds[seeds[0]]
    prob_cols = [f"p_{lab}" for lab in labels]
    total = np.zeros((len(first), len(labels)))
    for s in seeds:
        df = preds[s]
        if len(df) != len(first) or not (df["id"].to_numpy() == first["id"].to_numpy()).all():
            raise UserError(where, f"seed {s} predicts other test examples than seed {seeds[0]}")
        if not (df["gold"].to_numpy() == first["gold"].to_numpy()).all():
            raise UserError(where, f"seed {s} has other gold labels than seed {seeds[0]}")
        total += df[prob_cols].to_numpy(dtype=float)
    probs = total / len(seeds)
    out = pd.DataFrame({"id": first["id"].to_numpy(), "gold": first["gold"].to_numpy()})
    out["predicted"] = [labels[i] for i in probs.argmax(axis=1)]
    for j, col in enumerate(prob_cols):
        out[col] = probs[:, j]
    return out


def load_run_predictions(results: pd.DataFrame, prediction_paths: Mapping[str, str]) -> dict:
    """Predictions of every run, keyed by (task, model, variant, method) then seed."""
    out: dict[tuple, dict[int, pd.DataFrame]] = {}
    for rec in results.to_dict("records"):
        labels = [str(x) for x in json.loads(rec["labels"])]
        path = prediction_paths[rec["metrics_path"]]
        key = tuple(rec[k] for k in GROUP_KEYS)
        out.setdefault(key, {})[int(rec["seed"])] = read_predictions(path, labels)
    return out


def build_ensembles(results: pd.DataFrame, predictions: Mapping[tuple, Mapping[int, pd.DataFrame]]) -> tuple[pd.DataFrame, dict]:
    """Score the seed ensemble of each (task, model, variant, method); return the table and the
    ensemble predictions (for the significance test)."""
    rows, ens_preds = [], {}
    for key, per_seed in predictions.items():
        mask = np.logical_and.reduce([results[k] == v for k, v in zip(GROUP_KEYS, key)])
        labels = _labels_of(results, mask)
        metric = task_metric_from_results(results, key[0])
        where = "predictions of " + "/".join(key)
        ens = ensemble_predictions(per_seed, labels, where)
        ens_preds[key] = (ens, labels)
        gold, pred = encode(ens["gold"], labels, where), encode(ens["predicted"], labels, where)
        k = len(labels)
        row = dict(zip(GROUP_KEYS, key))
        row.update({"n_seeds": len(per_seed), "seeds": " ".join(str(s) for s in sorted(per_seed)),
                    "metric": metric, "score": score(gold, pred, k, metric), "n_test": len(gold)})
        row.update({m: score(gold, pred, k, m) for m in METRICS})
        rows.append(row)
    cols = [*GROUP_KEYS, "n_seeds", "seeds", "metric", "score", *METRICS, "n_test"]
    df = pd.DataFrame(rows, columns=cols).sort_values(GROUP_KEYS, kind="stable").reset_index(drop=True)
    return df, ens_preds


def task_metric_from_results(results: pd.DataFrame, task: str) -> str:
    return str(results.loc[results["task"] == task, "metric"].iloc[0])


def majority_baselines(results: pd.DataFrame, ens_preds: Mapping[tuple, tuple]) -> pd.DataFrame:
    """Score of always predicting the most frequent test label, per task: the floor every method
    must beat (ties go to the first label in label order). All runs of a task must share the test
    set, which is checked here."""
    rows = []
    for task in results["task"].unique():
        keys = [k for k in ens_preds if k[0] == task]
        if not keys:
            continue
        ref, labels = ens_preds[keys[0]]
        for k in keys[1:]:
            other = ens_preds[k][0]
            if len(other) != len(ref) or not (other["id"].to_numpy() == ref["id"].to_numpy()).all() \
                    or not (other["gold"].to_numpy() == ref["gold"].to_numpy()).all():
                raise UserError("predictions of " + "/".join(k),
                                f"test set differs from that of {'/'.join(keys[0])}",
                                "every run of a task must be evaluated on the same test set")
        gold = encode(ref["gold"], labels)
        counts = np.bincount(gold, minlength=len(labels))
        majority = int(counts.argmax())
        metric = task_metric_from_results(results, task)
        pred = np.full_like(gold, majority)
        rows.append({"task": task, "metric": metric, "majority_label": labels[majority],
                     "majority_share": counts[majority] / counts.sum(),
                     "score": score(gold, pred, len(labels), metric), "n_test": len(gold),
                     "label_counts": json.dumps({lab: int(c) for lab, c in zip(labels, counts)})})
    return pd.DataFrame(rows, columns=["task", "metric", "majority_label", "majority_share", "score",
                                       "n_test", "label_counts"])


def significance(
    results: pd.DataFrame,
    ens_preds: Mapping[tuple, tuple],
    config: Mapping,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> pd.DataFrame:
    """Paired bootstrap of every variant against the baseline variant (same task/model/method) on
    the seed-ensemble predictions, paired by test example id."""
    variants = ordered(results["variant"], (config.get("variants") or {}))
    base = baseline_variant(config, variants)
    rows = []
    for (task, model, variant, method), (ens, labels) in ens_preds.items():
        if base is None or variant == base or (task, model, base, method) not in ens_preds:
            continue
        base_ens, base_labels = ens_preds[(task, model, base, method)]
        where = f"predictions of {task}/{model}/{variant}/{method}"
        if list(base_labels) != list(labels):
            raise UserError(where, f"labels {labels} differ from {base}'s {base_labels}")
        if len(base_ens) != len(ens) or not (base_ens["id"].to_numpy() == ens["id"].to_numpy()).all():
            raise UserError(where, f"test examples differ from those of {base}; cannot pair them")
        metric = task_metric_from_results(results, task)
        gold = encode(ens["gold"], labels, where)
        a, b = encode(ens["predicted"], labels, where), encode(base_ens["predicted"], labels, where)
        test = paired_bootstrap(gold, a, b, len(labels), metric, n_resamples, seed)
        rows.append({"task": task, "model": model, "method": method, "variant": variant,
                     "baseline": base, "metric": metric,
                     "score_variant": score(gold, a, len(labels), metric),
                     "score_baseline": score(gold, b, len(labels), metric), **test,
                     "n_disagree": int((a != b).sum()),
                     "test": "paired bootstrap over test examples, seed-ensemble predictions, two-sided"})
    cols = ["task", "model", "method", "variant", "baseline", "metric", "score_variant",
            "score_baseline", "delta", "ci_low", "ci_high", "p_value", "n_test", "n_disagree",
            "n_resamples", "bootstrap_seed", "test"]
    df = pd.DataFrame(rows, columns=cols)
    return df.sort_values(["task", "model", "method", "variant"], kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Main table
# --------------------------------------------------------------------------------------------

def fmt_score(mean: float, std: float | None = None, digits: int = 1) -> str:
    """mean ± std of a fraction, shown ×100."""
    if mean is None or not np.isfinite(mean):
        return DASH
    text = f"{100 * mean:.{digits}f}"
    if std is not None and np.isfinite(std):
        text += f" ± {100 * std:.{digits}f}"
    return text


def fmt_num(x: float, fmt: str = "{:.0f}") -> str:
    return DASH if x is None or not np.isfinite(x) else fmt.format(x)


def fmt_pct(x: float) -> str:
    if x is None or not np.isfinite(x):
        return DASH
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def fmt_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return ""
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def best_variants(values: Mapping[str, float], digits: int = 1) -> list[str]:
    """Variants whose score is the best of the row *as displayed* (so visible ties are all bold)."""
    shown = {v: round(100 * x, digits) for v, x in values.items() if x is not None and np.isfinite(x)}
    if not shown:
        return []
    top = max(shown.values())
    return [v for v, x in shown.items() if x == top]


def _numeric(df: pd.DataFrame, col: str) -> pd.Series:
    """A column as floats; all-NaN when the runs do not report it."""
    if col not in df:
        return pd.Series(np.nan, index=df.index, dtype=float)
    return pd.to_numeric(df[col], errors="coerce").astype(float)


def _range_text(values: pd.Series, fmt: str = "{:.0f}") -> str:
    vals = pd.to_numeric(values, errors="coerce").dropna()
    if vals.empty:
        return DASH
    lo, hi = vals.min(), vals.max()
    return fmt.format(lo) if lo == hi else f"{fmt.format(lo)}–{fmt.format(hi)}"


def build_table(
    results: pd.DataFrame,
    ensembles: pd.DataFrame,
    majority: pd.DataFrame,
    sig: pd.DataFrame,
    config: Mapping,
) -> tuple[pd.DataFrame, list[str]]:
    """The paper-style table: one row per (task, model, method) for the seed mean ± std, one for
    the seed ensemble, and one majority-class row per task; one column per variant in config order.

    Returns the table (display strings plus the unrounded numbers, so the CSV is checkable) and the
    variant order.
    """
    variants = ordered(results["variant"], (config.get("variants") or {}))
    tasks = ordered(results["task"], (config.get("tasks") or {}))
    models = ordered(results["model"], (config.get("models") or {}))
    methods = ordered(results["method"], (config.get("methods") or {}))
    base = baseline_variant(config, variants)
    others = [v for v in variants if v != base] if base else []
    rows = []
    for task in tasks:
        metric = task_metric_from_results(results, task)
        t = results[results["task"] == task]
        sizes = {c: _range_text(t[c]) if c in t else DASH for c in ("n_train", "n_validation", "n_test")}
        for model in models:
            for method in methods:
                g = t[(t["model"] == model) & (t["method"] == method)]
                if g.empty:
                    continue
                row = {"task": task, "metric": metric, "model": model, "method": method, "row": "seeds"}
                means = {}
                for v in variants:
                    s = g.loc[g["variant"] == v, "score"].astype(float)
                    mean = float(s.mean()) if len(s) else math.nan
                    std = float(s.std(ddof=1)) if len(s) > 1 else math.nan
                    means[v] = mean
                    row[v] = fmt_score(mean, std) if len(s) else DASH
                    row[f"{v}_mean"], row[f"{v}_std"], row[f"{v}_n"] = 100 * mean, 100 * std, len(s)
                row["best"] = " ".join(best_variants(means))
                for v in others:
                    hit = sig[(sig["task"] == task) & (sig["model"] == model) & (sig["method"] == method)
                              & (sig["variant"] == v)] if len(sig) else sig
                    row[f"p_{v}"] = float(hit["p_value"].iloc[0]) if len(hit) else math.nan
                # trainable % from the parameter counts when the run reports them (unambiguous),
                # else the run's own trainable_pct
                pct = _numeric(g, "trainable_pct_computed")
                row["trainable_pct"] = float((pct if pct.notna().any() else _numeric(g, "trainable_pct")).mean())
                row["trainable_params"] = float(_numeric(g, "trainable_params").mean())
                row["finetune_wall_s"] = float(_numeric(g, "finetune_wall_s").mean())
                row["peak_memory_mb"] = float(_numeric(g, "peak_memory_mb").max())
                row["n_seeds"] = _range_text(g.groupby("variant")["seed"].nunique())
                row["finetune_steps"] = _range_text(g["train_steps"]) if "train_steps" in g else DASH
                row.update(sizes)
                rows.append(row)

                erow = {"task": task, "metric": metric, "model": model, "method": method, "row": "ensemble"}
                emeans = {}
                for v in variants:
                    e = ensembles[(ensembles["task"] == task) & (ensembles["model"] == model)
                                  & (ensembles["method"] == method) & (ensembles["variant"] == v)]
                    val = float(e["score"].iloc[0]) if len(e) else math.nan
                    emeans[v] = val
                    erow[v] = fmt_score(val)
                    erow[f"{v}_mean"], erow[f"{v}_std"] = 100 * val, math.nan
                    erow[f"{v}_n"] = int(e["n_seeds"].iloc[0]) if len(e) else 0
                erow["best"] = " ".join(best_variants(emeans))
                erow["n_seeds"] = row["n_seeds"]
                erow.update(sizes)
                rows.append(erow)
        mj = majority[majority["task"] == task]
        if len(mj) and variants:
            mrow = {"task": task, "metric": metric, "model": DASH, "method": "majority class", "row": "majority"}
            val = float(mj["score"].iloc[0])
            for i, v in enumerate(variants):
                mrow[v] = fmt_score(val) if i == 0 else ""
                mrow[f"{v}_mean"] = 100 * val if i == 0 else math.nan
            mrow["best"] = ""
            mrow["n_seeds"] = DASH  # no training, no seeds
            mrow.update(sizes)
            rows.append(mrow)
    table = pd.DataFrame(rows)
    lead = ["task", "metric", "model", "method", "row", *variants, "best", *[f"p_{v}" for v in others],
            "trainable_pct", "trainable_params", "finetune_wall_s", "peak_memory_mb", "n_seeds",
            "finetune_steps", "n_train", "n_validation", "n_test"]
    for c in lead:
        if c not in table:
            table[c] = math.nan
    rest = [c for c in table.columns if c not in lead]
    return table[lead + rest], variants


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|")


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured markdown table."""
    align = align or ["l"] * len(header)
    sep = [":--" if a == "l" else "--:" for a in align]
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(_md_escape(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


SIGNIFICANCE_TEXT = (
    "p: two-sided paired bootstrap test of the variant against `{base}` (same task, model and "
    "method) over the test examples: {n:,} resamples of the test set with a fixed seed ({seed}), "
    "both systems scored on the same resample with the task metric, using the seed-ensemble "
    "predictions (class probabilities averaged over seeds, then argmax); "
    "p = (1 + #{{|δ* − δ| ≥ |δ|}}) / (B + 1)."
)


def render_markdown(table: pd.DataFrame, variants: Sequence[str], base: str | None, notes: str,
                    runtime_md: str, n_resamples: int, seed: int) -> str:
    """table.md: the main table (best per row in bold), the footing of each number, runtime."""
    others = [v for v in variants if v != base] if base else []
    header = ["task (metric)", "model", "method", "row", *variants, *[f"p {v} vs {base}" for v in others],
              "trainable %", "fine-tune wall (s)", "peak mem (MB)", "n seeds"]
    align = ["l", "l", "l", "l", *["r"] * (len(header) - 4)]
    rows = []
    for rec in table.to_dict("records"):
        best = set(str(rec.get("best") or "").split())
        cells = [f"{rec['task']} ({rec['metric']})", rec["model"], rec["method"], rec["row"]]
        for v in variants:
            c = rec.get(v)
            c = "" if c is None or (isinstance(c, float) and math.isnan(c)) else str(c)
            cells.append(f"**{c}**" if v in best and c not in ("", DASH) else c)
        is_seeds = rec["row"] == "seeds"
        cells += [fmt_p(rec.get(f"p_{v}")) if is_seeds else "" for v in others]
        cells += [fmt_pct(rec.get("trainable_pct")) if is_seeds else "",
                  fmt_num(rec.get("finetune_wall_s"), "{:.1f}") if is_seeds else "",
                  fmt_num(rec.get("peak_memory_mb")) if is_seeds else "",
                  str(rec.get("n_seeds")) if rec["row"] != "majority" else ""]
        rows.append(cells)
    parts = [
        "# Results\n",
        "Test-set task metric ×100. Row *seeds*: mean ± sample standard deviation (ddof=1) over the "
        "fine-tuning seeds; row *ensemble*: the seed ensemble (class probabilities averaged over "
        "seeds, argmax); row *majority*: always predicting the most frequent test label. "
        "**Bold**: best variant of the row. Trainable %, fine-tune wall time (mean per run, from "
        "the Snakemake benchmark of the finetune rule) and peak memory (max over runs, as reported "
        "by the run) are per method.\n",
        SIGNIFICANCE_TEXT.format(base=base, n=n_resamples, seed=seed) + "\n" if others else "",
        md_table(header, rows, align),
        "\n" + notes,
        "\n" + runtime_md if runtime_md else "",
    ]
    return "\n".join(p for p in parts if p)


def _tex_escape(text: Any) -> str:
    text = str(text)
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                 ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        text = text.replace(a, b) if a != "\\" else text.replace(a, "\0")
    return text.replace("\0", r"\textbackslash{}")


def render_latex(table: pd.DataFrame, variants: Sequence[str], n_resamples: int, seed: int) -> str:
    """table.tex in the style of Gururangan et al. (2020), Table 5: mean$_{\\pm std}$, best bold."""
    cols = "lll" + "r" * len(variants) + "rrrr"
    head = ["Task", "Model", "Method", *[_tex_escape(v) for v in variants],
            "Trainable \\%", "FT time (s)", "Peak mem (MB)", "$n$"]
    lines = [
        "% Generated by scripts/report.py; requires \\usepackage{booktabs}.",
        "\\begin{table}[t]", "\\centering", "\\small",
        f"\\begin{{tabular}}{{{cols}}}", "\\toprule", " & ".join(head) + " \\\\", "\\midrule",
    ]
    last_task = None
    for rec in table.to_dict("records"):
        if last_task is not None and rec["task"] != last_task:
            lines.append("\\midrule")
        task_cell = f"{_tex_escape(rec['task'])} ({_tex_escape(rec['metric'])})" if rec["task"] != last_task else ""
        last_task = rec["task"]
        best = set(str(rec.get("best") or "").split())
        method = rec["method"] if rec["row"] != "ensemble" else f"{rec['method']} (ens.)"
        cells = [task_cell, _tex_escape(rec["model"] if rec["row"] != "majority" else ""), _tex_escape(method)]
        for v in variants:
            mean, std = rec.get(f"{v}_mean"), rec.get(f"{v}_std")
            if mean is None or not np.isfinite(mean):
                cells.append("")
                continue
            m = f"{mean:.1f}"
            m = f"\\textbf{{{m}}}" if v in best else m
            cells.append(m + (f"$_{{\\pm {std:.1f}}}$" if std is not None and np.isfinite(std) else ""))
        seeds_row = rec["row"] == "seeds"
        cells += [fmt_pct(rec.get("trainable_pct")) if seeds_row else "",
                  fmt_num(rec.get("finetune_wall_s"), "{:.1f}") if seeds_row else "",
                  fmt_num(rec.get("peak_memory_mb")) if seeds_row else "",
                  _tex_escape(rec.get("n_seeds")) if seeds_row else ""]
        lines.append(" & ".join(c.replace(DASH, "--") for c in cells) + " \\\\")
    lines += [
        "\\bottomrule", "\\end{tabular}",
        "\\caption{Test-set task metric $\\times 100$: mean$_{\\pm \\text{std}}$ over fine-tuning seeds "
        "(sample std); (ens.) the seed ensemble; majority class: always the most frequent test label. "
        f"Best per row in bold. Significance against the base model: paired bootstrap "
        f"({n_resamples:,} resamples of the test examples, seed {seed}); see significance.csv.}}",
        "\\label{tab:dapt-results}", "\\end{table}",
    ]
    return "\n".join(lines) + "\n"


METRIC_NAMES = {"macro_f1": "macro-F1", "micro_f1": "micro-F1", "accuracy": "accuracy"}


def _join(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def render_paper_latex(table: pd.DataFrame, variants: Sequence[str], config: Mapping) -> str:
    """table_paper.tex in the layout of Gururangan et al. (2020), Table 5: tasks in rows, grouped by
    domain, one column per variant, mean with the seed standard deviation as a subscript, best per
    task in bold, the metric stated in the caption (macro-F1, except where a task says otherwise).
    Display names come from the config's ``report.labels``; a block per (model, method) when the study
    has several."""
    labels = (config.get("report") or {}).get("labels") or {}

    def label(kind: str, name: Any) -> str:
        return _tex_escape((labels.get(kind) or {}).get(name, name))

    seeds = table[table["row"] == "seeds"]
    tasks = ordered(seeds["task"], config.get("tasks") or {})
    task_specs = config.get("tasks") or {}
    domain_of = {t: (task_specs.get(t) or {}).get("domain") for t in tasks}
    # tasks grouped by domain, in the config's order of first appearance
    by_domain: dict[Any, list[str]] = {}
    for t in tasks:
        by_domain.setdefault(domain_of[t], []).append(t)
    task_rows = [t for group in by_domain.values() for t in group]
    with_domain = any(d is not None for d in by_domain)
    blocks = [(m, meth) for m in ordered(seeds["model"], config.get("models") or {})
              for meth in ordered(seeds["method"], config.get("methods") or {})
              if len(seeds[(seeds["model"] == m) & (seeds["method"] == meth)])]
    lead = ["Domain", "Task"] if with_domain else ["Task"]
    ncols = len(lead) + len(variants)
    lines = ["% Generated by scripts/report.py; requires \\usepackage{booktabs}.",
             "\\begin{table}[t]", "\\centering", "\\small",
             f"\\begin{{tabular}}{{{'l' * len(lead)}{'c' * len(variants)}}}", "\\toprule",
             " & ".join([*lead, *(label("variants", v) for v in variants)]) + " \\\\", "\\midrule"]
    for b, (model, method) in enumerate(blocks):
        if len(blocks) > 1:
            if b:
                lines.append("\\midrule")
            lines.append(f"\\multicolumn{{{ncols}}}{{l}}{{\\textit{{{label('models', model)}, "
                         f"{label('methods', method)}}}}} \\\\")
        block = seeds[(seeds["model"] == model) & (seeds["method"] == method)].set_index("task")
        rows = [t for t in task_rows if t in block.index]
        for i, t in enumerate(rows):
            rec = block.loc[t].to_dict()
            cells = []
            if with_domain:
                new_domain = i == 0 or domain_of[t] != domain_of[rows[i - 1]]
                if new_domain and i:
                    lines.append("\\midrule")
                cells.append(label("domains", domain_of[t]) if new_domain and domain_of[t] is not None else "")
            cells.append(label("tasks", t))
            best = set(str(rec.get("best") or "").split())
            for v in variants:
                mean, std = rec.get(f"{v}_mean"), rec.get(f"{v}_std")
                if mean is None or not np.isfinite(mean):
                    cells.append("--")
                    continue
                m = f"\\textbf{{{mean:.1f}}}" if v in best else f"{mean:.1f}"
                cells.append(m + (f"$_{{{std:.1f}}}$" if std is not None and np.isfinite(std) else ""))
            lines.append(" & ".join(cells) + " \\\\")
    metrics = {t: (seeds[seeds["task"] == t]["metric"].iloc[0]) for t in task_rows}
    main = max(set(metrics.values()), key=lambda m: (list(metrics.values()).count(m), m == "macro_f1"))
    text = f"test {METRIC_NAMES.get(main, main)}"
    others = {}
    for t, m in metrics.items():
        if m != main:
            others.setdefault(m, []).append(label("tasks", t))
    if others:
        text += ", except for " + "; ".join(f"{_join(ts)}, for which we report {METRIC_NAMES.get(m, m)}"
                                             for m, ts in others.items())
    n = sorted({str(x) for x in seeds["n_seeds"]})
    lines += [
        "\\bottomrule", "\\end{tabular}",
        f"\\caption{{Results of {_join([label('variants', v) for v in variants])}. Reported results are "
        f"{text} ($\\times 100$). We report averages across {' / '.join(n)} random seeds, with standard deviations as "
        "subscripts. Best task performance is boldfaced.}",
        "\\label{tab:dapt-paper}", "\\end{table}",
    ]
    return "\n".join(lines) + "\n"


def build_notes(results: pd.DataFrame, config: Mapping) -> str:
    """What each number rests on: examples per split, pretraining per variant, fine-tuning steps.

    A score means little without its footing (a 3-point gain from 60 MLM steps on 1k examples is not
    the paper's 12.5k steps), so this is printed under the table and saved as notes.md.
    """
    tasks = ordered(results["task"], (config.get("tasks") or {}))
    variants = ordered(results["variant"], (config.get("variants") or {}))
    methods = ordered(results["method"], (config.get("methods") or {}))
    ex_rows = []
    for task in tasks:
        t = results[results["task"] == task]
        ex_rows.append([task, *[_range_text(t[c]) if c in t else DASH for c in ("n_train", "n_validation", "n_test")],
                        str(t["seed"].nunique()), str(len(t))])
    pre_rows = []
    for (task, model, variant), g in results.groupby(["task", "model", "variant"], sort=False):
        chain = g["pretrain.chain"].fillna("").astype(str).unique() if "pretrain.chain" in g else [""]
        pre_rows.append([task, model, variant, " / ".join(c or "(none)" for c in chain),
                         _range_text(g["pretrain.steps"]) if "pretrain.steps" in g else DASH,
                         _range_text(g["pretrain.tokens"]) if "pretrain.tokens" in g else DASH])
    pre_rows.sort(key=lambda r: (tasks.index(r[0]), r[1], variants.index(r[2])))
    ft_rows = []
    for (task, model, method, variant), g in results.groupby(["task", "model", "method", "variant"], sort=False):
        ft_rows.append([task, model, method, variant,
                        _range_text(g["train_steps"]) if "train_steps" in g else DASH,
                        _range_text(g["epochs_run"], "{:g}") if "epochs_run" in g else DASH,
                        _range_text(g["best_epoch"], "{:g}") if "best_epoch" in g else DASH,
                        " ".join(str(s) for s in sorted(g["seed"]))])
    ft_rows.sort(key=lambda r: (tasks.index(r[0]), r[1], methods.index(r[2]), variants.index(r[3])))
    data_rows = []  # counted, not errors: texts cut at max_length, texts that occur in two splits
    for task in tasks:
        t = results[results["task"] == task]
        truncated = [_range_text(t[f"truncated.{s}"]) if f"truncated.{s}" in t else DASH
                     for s in ("train", "validation", "test")]
        shared = [c for c in t.columns if c.startswith("texts_shared_across_splits.")]
        shared_text = ", ".join(f"{c.split('.', 1)[1]}: {_range_text(t[c])}" for c in sorted(shared)) or DASH
        data_rows.append([task, *truncated, shared_text])
    return "\n".join([
        "## What each number rests on\n",
        "Examples per split (the test split is what every score and p-value is computed on):\n",
        md_table(["task", "train", "validation", "test", "seeds", "runs"], ex_rows, "lrrrrr"),
        "Pretraining per variant (the chain of MLM stages, and its MLM steps and tokens as "
        "reported by each run's metrics.json `pretrain` field):\n",
        md_table(["task", "model", "variant", "chain", "MLM steps", "MLM tokens"], pre_rows, "llllrr"),
        "Fine-tuning per run (optimizer steps, epochs run, best epoch; ranges over seeds):\n",
        md_table(["task", "model", "method", "variant", "steps", "epochs", "best epoch", "seeds"], ft_rows, "llllrrrl"),
        "Data caveats (kept, not errors): texts truncated to the task's max_length per split (per "
        "tokenizer; ranges over models), and texts that occur in two splits:\n",
        md_table(["task", "truncated train", "truncated validation", "truncated test", "texts shared across splits"],
                 data_rows, "lrrrl"),
    ])


# --------------------------------------------------------------------------------------------
# Runtime
# --------------------------------------------------------------------------------------------

def runtime_table(benchmarks: pd.DataFrame) -> pd.DataFrame:
    """Per rule: jobs, total and max wall time, max RSS — where the study's time and memory went."""
    cols = ["rule", "jobs", "total_s", "mean_s", "max_s", "max_rss_mb"]
    if benchmarks.empty:
        return pd.DataFrame(columns=cols)
    g = benchmarks.groupby("rule", sort=True)
    out = pd.DataFrame({
        "jobs": g.size(),
        "total_s": g["wall_s"].sum(min_count=1),
        "mean_s": g["wall_s"].mean(),
        "max_s": g["wall_s"].max(),
        "max_rss_mb": g["max_rss_mb"].max(),
    }).reset_index()
    total = pd.DataFrame([{"rule": "all", "jobs": int(out["jobs"].sum()), "total_s": out["total_s"].sum(),
                           "mean_s": benchmarks["wall_s"].mean(), "max_s": out["max_s"].max(),
                           "max_rss_mb": out["max_rss_mb"].max()}])
    return pd.concat([out, total], ignore_index=True)[cols]


def render_runtime(runtime: pd.DataFrame) -> str:
    rows = [[r["rule"], str(int(r["jobs"])), fmt_num(r["total_s"], "{:.1f}"), fmt_num(r["mean_s"], "{:.1f}"),
             fmt_num(r["max_s"], "{:.1f}"), fmt_num(r["max_rss_mb"])] for r in runtime.to_dict("records")]
    text = ("## Runtime\n\nWall time and peak resident memory per rule, from Snakemake's benchmark "
            "files (one per job; repeats averaged).\n\n")
    if not rows:
        return text + "No benchmark files were given.\n"
    return text + md_table(["rule", "jobs", "total (s)", "mean (s)", "max (s)", "max RSS (MB)"], rows, "lrrrrr")


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------

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
    variants = ordered(results["variant"], (config.get("variants") or {}))
    methods = ordered(results["method"], (config.get("methods") or {}))
    panels = list(results.groupby(["task", "model"], sort=False).groups)
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
        ax.legend(title="method", fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.2),
                  ncol=min(len(methods), 4), frameon=False)
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
        ax.set_xlabel("MLM optimizer step")
        ax.set_ylabel("MLM loss")
        ax.set_title(f"MLM pretraining — {model}")
        ax.grid(alpha=0.3)
        ax.legend(title="chain", fontsize=8)
    fig.tight_layout()
    return fig


def plot_finetune_curves(logs: pd.DataFrame, config: Mapping):
    """Validation macro-F1 per epoch (mean over seeds; last logged value per epoch) per
    variant/method, one panel per (task, model)."""
    logs = logs.dropna(subset=["epoch", "val_macro_f1"])
    if logs.empty:
        return _empty_figure("no fine-tuning logs given")
    last = logs.groupby([*GROUP_KEYS, "seed", "epoch"], sort=False)["val_macro_f1"].last().reset_index()
    curves = last.groupby([*GROUP_KEYS, "epoch"])["val_macro_f1"].agg(["mean", "std"]).reset_index()
    variants = ordered(curves["variant"], (config.get("variants") or {}))
    methods = ordered(curves["method"], (config.get("methods") or {}))
    panels = list(curves.groupby(["task", "model"], sort=False).groups)
    fig, axes = _grid(len(panels))
    from matplotlib.ticker import MaxNLocator

    colors = _plt().rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    for ax, (task, model) in zip(axes, panels):
        for i, v in enumerate(variants):
            for j, m in enumerate(methods):
                c = curves[(curves["task"] == task) & (curves["model"] == model) & (curves["variant"] == v)
                           & (curves["method"] == m)].sort_values("epoch")
                if c.empty:
                    continue
                ax.plot(c["epoch"], 100 * c["mean"], styles[j % len(styles)], marker="o",
                        color=colors[i % len(colors)], label=f"{v} / {m}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("validation macro-F1 ×100 (mean over seeds)")
        ax.set_title(f"{task} — {model}")
        ax.grid(alpha=0.3)
        ax.legend(title="variant / method", fontsize=8)
    fig.tight_layout()
    return fig


def plot_f1_vs_params(results: pd.DataFrame, config: Mapping):
    """Task metric against trainable parameters (log x): what each method buys per parameter.

    One marker per method, one colour per variant; variants of a method share x, so they are spread
    by a small multiplicative offset to stay readable."""
    if "trainable_params" not in results or results["trainable_params"].isna().all():
        return _empty_figure("runs report no trainable_params")
    variants = ordered(results["variant"], (config.get("variants") or {}))
    methods = ordered(results["method"], (config.get("methods") or {}))
    panels = list(results.groupby(["task", "model"], sort=False).groups)
    fig, axes = _grid(len(panels), 6.0, 4.2)
    colors = _plt().rcParams["axes.prop_cycle"].by_key()["color"]
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    for ax, (task, model) in zip(axes, panels):
        g = results[(results["task"] == task) & (results["model"] == model)]
        stats = g.groupby(["method", "variant"]).agg(
            params=("trainable_params", "mean"), mean=("score", "mean"), std=("score", "std")).reset_index()
        for j, m in enumerate(methods):
            for i, v in enumerate(variants):
                s = stats[(stats["method"] == m) & (stats["variant"] == v)]
                if s.empty or not np.isfinite(s["params"].iloc[0]) or s["params"].iloc[0] <= 0:
                    continue
                x = s["params"].iloc[0] * 1.06 ** (i - (len(variants) - 1) / 2)
                ax.errorbar(x, 100 * s["mean"].iloc[0], yerr=np.nan_to_num(100 * s["std"].iloc[0]),
                            fmt=markers[j % len(markers)], color=colors[i % len(colors)], capsize=3,
                            markersize=7, label=f"{v} / {m}")
            ms = stats[stats["method"] == m]
            if len(ms) and np.isfinite(ms["params"].max()):
                ax.annotate(m, (ms["params"].mean(), 100 * ms["mean"].max()), textcoords="offset points",
                            xytext=(0, 10), ha="center", fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_ylabel(f"{g['metric'].iloc[0]} ×100 (mean ± std over seeds)")
        ax.set_title(f"{task} — {model}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(title="variant / method", fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Provenance and secrets
# --------------------------------------------------------------------------------------------

def package_versions(packages: Sequence[str] = PROVENANCE_PACKAGES) -> dict:
    """Installed versions (None when absent), read from metadata so nothing heavy is imported."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def hardware() -> dict:
    """Platform, CPUs, memory and GPUs of the machine that made the report."""
    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(),
                            "processor": platform.processor() or None, "cpu_count": os.cpu_count()}
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        info["memory_gb"] = None
    info["gpus"] = []
    if importlib.util.find_spec("torch") is not None:
        try:
            import torch

            info["torch_cuda"] = torch.version.cuda
            if torch.cuda.is_available():
                info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        except Exception as err:  # a broken CUDA set-up must not stop the report
            info["gpu_error"] = f"{type(err).__name__}: {err}"
    return info


def git_info(where: str | os.PathLike | None = None) -> dict:
    """Commit and dirty flag of the workflow's repository (no remote URL: it may embed a token)."""
    where = Path(where or Path(__file__).resolve().parent.parent)
    try:
        commit = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=20, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=20, check=True).stdout.strip() != ""
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def provenance(config: Mapping, results: pd.DataFrame, inputs: Mapping[str, int]) -> dict:
    """What made these numbers: code version, packages, hardware, config, the runs' devices.

    Deliberately no environment variables: they may hold hub tokens.
    """
    runs = {}
    for col in ("device", "precision"):
        if col in results:
            runs[f"{col}s"] = sorted(str(x) for x in results[col].dropna().unique())
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_info(),
        "packages": package_versions(),
        "hardware": hardware(),
        "runs": {"count": int(len(results)), **runs},
        "inputs": dict(inputs),
        "config": redact_config(config),
    }


# --------------------------------------------------------------------------------------------
# The whole report
# --------------------------------------------------------------------------------------------

OUTPUTS = (
    "results.csv", "table.csv", "table.md", "table.tex", "table_paper.tex", "notes.md", "ensemble.csv",
    "majority.csv", "significance.csv", "runtime.csv", "runtime.md", "scores.png", "mlm_loss.png",
    "finetune_curves.png", "f1_vs_params.png", "provenance.json",
)


def _write_text(path: Path, text: str, secrets: Sequence[str]) -> None:
    files.write_text(path, scrub(text, secrets))


def _write_csv(path: Path, df: pd.DataFrame, secrets: Sequence[str]) -> None:
    _write_text(path, df.to_csv(index=False), secrets)


def make_report(
    metrics_paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    config: Mapping | None = None,
    log_paths: Sequence[str | os.PathLike] = (),
    pretrain_log_paths: Sequence[str | os.PathLike] = (),
    benchmark_paths: Sequence[str | os.PathLike] = (),
    prediction_paths: Sequence[str | os.PathLike] | None = None,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    bootstrap_seed: int = BOOTSTRAP_SEED,
) -> dict[str, Path]:
    """Read every input, then write all report files into `out` (each atomically).

    Everything is read and computed before the first file is written, so a bad input (a
    UserError naming it) leaves no half-updated report behind. `prediction_paths` defaults to the
    predictions.csv next to each metrics.json.
    """
    config = dict(config or {})
    if not metrics_paths:
        raise UserError("--metrics", "no metrics files given", "the report needs at least one evaluated run")
    if prediction_paths is None:
        prediction_paths = [Path(p).parent / "predictions.csv" for p in metrics_paths]
    if len(prediction_paths) != len(metrics_paths):
        raise UserError("--predictions", f"{len(prediction_paths)} files for {len(metrics_paths)} metrics files",
                        "give one predictions.csv per metrics.json, in the same order")
    metrics = [(str(p), read_metrics(p)) for p in metrics_paths]
    benchmarks = read_benchmarks(benchmark_paths)
    results = build_results(metrics, benchmarks, config)
    pred_map = {str(m): str(p) for m, p in zip(metrics_paths, prediction_paths)}
    predictions = load_run_predictions(results, pred_map)
    ensembles, ens_preds = build_ensembles(results, predictions)
    majority = majority_baselines(results, ens_preds)
    sig = significance(results, ens_preds, config, n_resamples, bootstrap_seed)
    table, variants = build_table(results, ensembles, majority, sig, config)
    base = baseline_variant(config, variants)
    notes = build_notes(results, config)
    runtime = runtime_table(benchmarks)
    runtime_md = render_runtime(runtime)
    table_md = render_markdown(table, variants, base, notes, runtime_md, n_resamples, bootstrap_seed)
    table_tex = render_latex(table, variants, n_resamples, bootstrap_seed)
    table_paper_tex = render_paper_latex(table, variants, config)
    ft_logs = read_finetune_logs(log_paths)
    pt_logs = read_pretrain_logs(pretrain_log_paths)
    prov = provenance(config, results, {
        "metrics": len(metrics_paths), "finetune_logs": len(log_paths),
        "pretrain_logs": len(pretrain_log_paths), "benchmarks": len(benchmarks),
        "bootstrap_resamples": n_resamples, "bootstrap_seed": bootstrap_seed})

    out = Path(out)
    secrets = secret_values()
    paths = {name: out / name for name in OUTPUTS}
    _write_csv(paths["results.csv"], results, secrets)
    _write_csv(paths["table.csv"], table, secrets)
    _write_text(paths["table.md"], table_md, secrets)
    _write_text(paths["table.tex"], table_tex, secrets)
    _write_text(paths["table_paper.tex"], table_paper_tex, secrets)
    _write_text(paths["notes.md"], "# Footing of the results\n\n" + notes, secrets)
    _write_csv(paths["ensemble.csv"], ensembles, secrets)
    _write_csv(paths["majority.csv"], majority, secrets)
    _write_csv(paths["significance.csv"], sig, secrets)
    _write_csv(paths["runtime.csv"], runtime, secrets)
    _write_text(paths["runtime.md"], runtime_md, secrets)
    save_figure(plot_scores(results, config), paths["scores.png"])
    save_figure(plot_mlm_loss(pt_logs), paths["mlm_loss.png"])
    save_figure(plot_finetune_curves(ft_logs, config), paths["finetune_curves.png"])
    save_figure(plot_f1_vs_params(results, config), paths["f1_vs_params.png"])
    _write_text(paths["provenance.json"],
                json.dumps(prov, indent=2, sort_keys=True, default=files._json_default) + "\n", secrets)
    return paths
