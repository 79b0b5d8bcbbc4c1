"""dapt.finetune.metrics gives scikit-learn's numbers (zero_division=0), so evaluation and report agree with
the library every reader knows, also where classes are absent or every prediction is wrong."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from dapt.finetune import metrics

ROOT = Path(__file__).resolve().parent.parent


def sklearn_metrics(gold: np.ndarray, pred: np.ndarray, labels: list[str]) -> dict:
    """What dapt/finetune/evaluation.py computed with scikit-learn before dapt.finetune.metrics existed."""
    ids = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=ids, zero_division=0)
    return {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(f1_score(gold, pred, labels=ids, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(gold, pred, labels=ids, average="micro", zero_division=0)),
        "per_class": {
            lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, lab in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(gold, pred, labels=ids).tolist(),
        "labels": list(labels),
    }


def _cases():
    rng = np.random.default_rng(0)
    for n, k in ((1, 2), (7, 2), (50, 3), (333, 5), (1000, 12)):
        gold = rng.integers(0, k, n)
        noisy = np.where(rng.random(n) < 0.6, gold, rng.integers(0, k, n))
        yield f"random-n{n}-k{k}", gold, noisy, k
    gold = rng.integers(0, 4, 80)
    yield "all-wrong", gold, (gold + 1) % 4, 4
    yield "all-right", gold, gold.copy(), 4
    yield "class-never-gold", np.array([0, 0, 1, 1, 0]), np.array([0, 2, 1, 2, 1]), 3
    yield "class-never-predicted", np.array([0, 1, 2, 2, 1]), np.array([0, 1, 1, 1, 0]), 3
    yield "class-absent-entirely", np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), 4
    yield "one-class-predicted", rng.integers(0, 3, 40), np.zeros(40, dtype=int), 3


@pytest.mark.parametrize("name,gold,pred,k", list(_cases()), ids=[c[0] for c in _cases()])
def test_compute_metrics_equals_sklearn(name, gold, pred, k):
    labels = [f"c{i}" for i in range(k)]
    ours, theirs = metrics.compute_metrics(gold, pred, labels), sklearn_metrics(gold, pred, labels)
    assert list(ours) == list(theirs)  # exactly the keys (and order) evaluate wrote before
    # same formula as sklearn, counts are exact integers: the floats are bit-identical
    for key in metrics.METRICS:
        assert ours[key] == theirs[key], (key, ours[key], theirs[key])
        assert type(ours[key]) is float
    assert ours["per_class"] == theirs["per_class"]
    assert ours["confusion_matrix"] == theirs["confusion_matrix"]
    assert ours["labels"] == labels


def test_batched_scores_equal_single_scores():
    """The bootstrap scores many confusion matrices at once; each equals the one-at-a-time score."""
    rng = np.random.default_rng(1)
    gold = rng.integers(0, 3, (6, 40))
    pred = np.where(rng.random((6, 40)) < 0.5, gold, rng.integers(0, 3, (6, 40)))
    pred[0] = 0  # a resample where two classes are never predicted
    conf = np.stack([metrics.confusion(g, p, 3) for g, p in zip(gold, pred)])
    for metric in metrics.METRICS:
        batch = metrics.score_confusion(conf, metric)
        for i in range(len(gold)):
            expected = (
                f1_score(gold[i], pred[i], labels=[0, 1, 2], average=metric.split("_")[0], zero_division=0)
                if metric != "accuracy"
                else accuracy_score(gold[i], pred[i])
            )
            assert batch[i] == expected
            assert metrics.score(gold[i], pred[i], 3, metric) == expected


def test_unknown_metric_is_a_user_error():
    from dapt.core.errors import UserError

    with pytest.raises(UserError, match="unknown metric 'f2'"):
        metrics.score(np.array([0]), np.array([0]), 2, "f2")


def test_numpy_only():
    """No scikit-learn import: the package's metrics load without it."""
    tree = ast.parse((ROOT / "dapt" / "finetune" / "metrics.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "collections", "numpy", "dapt"}, imported
