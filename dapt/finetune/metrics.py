"""Classification metrics, one implementation for the whole package (numpy only).

Everything is computed from confusion counts, so evaluation (one run's metrics.json), the report's
seed ensembles and majority baseline, and the vectorised paired bootstrap (thousands of resampled
confusion matrices at once) all score exactly alike. The formulas are scikit-learn's with
``zero_division=0``: precision tp/(tp+fp), recall tp/(tp+fn), F1 2·tp/(2·tp+fp+fn), each 0 where its
denominator is 0; macro-F1 averages F1 over *all* the task's labels (absent ones count as 0);
micro-F1 equals accuracy for single-label classification.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dapt.core.errors import UserError

METRICS = ("accuracy", "macro_f1", "micro_f1")


def confusion(gold: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """k×k confusion counts `[gold, predicted]` of integer-coded labels in 0..k-1."""
    gold = np.asarray(gold, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    return np.bincount(gold * k + pred, minlength=k * k).reshape(k, k)


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num/den elementwise, 0 where den is 0 (scikit-learn's zero_division=0)."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def per_class(conf: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class of confusion counts `conf[..., gold, pred]`."""
    conf = np.asarray(conf, dtype=float)
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    true_sum, pred_sum = conf.sum(axis=-1), conf.sum(axis=-2)
    return {
        "precision": _divide(tp, pred_sum),
        "recall": _divide(tp, true_sum),
        "f1": _divide(2 * tp, true_sum + pred_sum),
        "support": true_sum,
    }


def score_confusion(conf: np.ndarray, metric: str) -> np.ndarray:
    """Score confusion counts `conf[..., gold, predicted]` (any leading batch shape, e.g. the
    bootstrap's resamples) by one of METRICS."""
    conf = np.asarray(conf, dtype=float)
    if metric in ("accuracy", "micro_f1"):
        tp = np.diagonal(conf, axis1=-2, axis2=-1).sum(axis=-1)
        return _divide(tp, conf.sum(axis=(-2, -1)))
    if metric == "macro_f1":
        return per_class(conf)["f1"].mean(axis=-1)
    raise UserError("config", f"unknown metric {metric!r}", f"use one of {list(METRICS)}")


def score(gold: np.ndarray, pred: np.ndarray, k: int, metric: str) -> float:
    """One metric of integer-coded predictions over k labels."""
    return float(score_confusion(confusion(gold, pred, k), metric))


def compute_metrics(gold: np.ndarray, pred: np.ndarray, labels: Sequence[str]) -> dict:
    """Everything a run's metrics.json records: accuracy, macro/micro-F1, per-class precision,
    recall, F1 and support, the confusion matrix (rows gold, columns predicted) and the labels.

    `gold` and `pred` are indices into `labels`.
    """
    k = len(labels)
    conf = confusion(gold, pred, k)
    pc = per_class(conf)
    return {
        **{m: float(score_confusion(conf, m)) for m in METRICS},
        "per_class": {
            lab: {
                "precision": float(pc["precision"][i]),
                "recall": float(pc["recall"][i]),
                "f1": float(pc["f1"][i]),
                "support": int(conf[i].sum()),
            }
            for i, lab in enumerate(labels)
        },
        "confusion_matrix": conf.tolist(),
        "labels": list(labels),
    }
