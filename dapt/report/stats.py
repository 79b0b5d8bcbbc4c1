"""Significance: a paired bootstrap of every variant against the baseline variant.

The test runs on the seed-ensemble predictions, because the seeds of a variant and of the baseline
share the test set and the ensemble is the single best estimate of each variant's predictions. The
bootstrap scores thousands of resampled confusion matrices at once with dapt.finetune.metrics, so it scores
exactly as the tables do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from dapt.core.errors import UserError
from dapt.finetune.metrics import score, score_confusion
from dapt.report.design import baseline_variant, ordered_by, task_metric_from_results

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
SIGNIFICANCE_COLUMNS = [
    "task",
    "model",
    "method",
    "variant",
    "baseline",
    "metric",
    "score_variant",
    "score_baseline",
    "delta",
    "ci_low",
    "ci_high",
    "p_value",
    "n_test",
    "n_disagree",
    "n_resamples",
    "bootstrap_seed",
    "test",
]


def encode(values: Sequence[str], labels: Sequence[str], where: str = "predictions") -> np.ndarray:
    """Map label strings to their index in `labels`."""
    index = {str(lab): i for i, lab in enumerate(labels)}
    try:
        return np.array([index[str(v)] for v in values], dtype=np.int64)
    except KeyError as err:
        raise UserError(where, f"label {err.args[0]!r} is not one of {list(labels)}") from None


def same_examples(a: pd.DataFrame, b: pd.DataFrame, gold: bool = False) -> bool:
    """Whether two prediction tables (sorted by id) hold the same test examples (and gold labels)."""
    if len(a) != len(b) or not (a["id"].to_numpy() == b["id"].to_numpy()).all():
        return False
    return not gold or bool((a["gold"].to_numpy() == b["gold"].to_numpy()).all())


def _resampled_deltas(
    cat_a: np.ndarray, cat_b: np.ndarray, k: int, metric: str, n_resamples: int, seed: int
) -> np.ndarray:
    """metric(A) − metric(B) on each bootstrap resample of the examples (`cat` = gold·k + pred),
    in chunks of at most ~4M drawn indices to bound memory."""
    n = len(cat_a)
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
        deltas[start : start + c] = score_confusion(conf_a, metric) - score_confusion(conf_b, metric)
    return deltas


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
    observed = score(gold, pred_a, k, metric) - score(gold, pred_b, k, metric)
    deltas = _resampled_deltas(gold * k + pred_a, gold * k + pred_b, k, metric, n_resamples, seed)
    extreme = np.abs(deltas - observed) >= abs(observed) - 1e-12
    p = (1 + int(extreme.sum())) / (n_resamples + 1)
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    return {
        "delta": observed,
        "p_value": p,
        "ci_low": float(lo),
        "ci_high": float(hi),
        "n_test": n,
        "n_resamples": n_resamples,
        "bootstrap_seed": seed,
    }


def significance(
    results: pd.DataFrame,
    ens_preds: Mapping[tuple, tuple],
    config: Mapping,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> pd.DataFrame:
    """Paired bootstrap of every variant against the baseline variant (same task/model/method) on
    the seed-ensemble predictions, paired by test example id."""
    base = baseline_variant(config, ordered_by(results, "variant", config))
    rows = []
    for (task, model, variant, method), (ens, labels) in ens_preds.items():
        if base is None or variant == base or (task, model, base, method) not in ens_preds:
            continue
        base_ens, base_labels = ens_preds[(task, model, base, method)]
        where = f"predictions of {task}/{model}/{variant}/{method}"
        if list(base_labels) != list(labels):
            raise UserError(where, f"labels {labels} differ from {base}'s {base_labels}")
        if not same_examples(base_ens, ens):
            raise UserError(where, f"test examples differ from those of {base}; cannot pair them")
        metric = task_metric_from_results(results, task)
        gold = encode(ens["gold"], labels, where)
        a, b = encode(ens["predicted"], labels, where), encode(base_ens["predicted"], labels, where)
        test = paired_bootstrap(gold, a, b, len(labels), metric, n_resamples, seed)
        rows.append(
            {
                "task": task,
                "model": model,
                "method": method,
                "variant": variant,
                "baseline": base,
                "metric": metric,
                "score_variant": score(gold, a, len(labels), metric),
                "score_baseline": score(gold, b, len(labels), metric),
                **test,
                "n_disagree": int((a != b).sum()),
                "test": "paired bootstrap over test examples, seed-ensemble predictions, two-sided",
            }
        )
    df = pd.DataFrame(rows, columns=SIGNIFICANCE_COLUMNS)
    return df.sort_values(["task", "model", "method", "variant"], kind="stable").reset_index(drop=True)
