"""The classical baseline every table shows beside the transformers: TF-IDF (word 1-2-grams) and
logistic regression (scikit-learn), trained on the task's training split, C chosen on its
validation split, scored on its test split with the task metric (`dapt.finetune.metrics`, as every run).

It needs no GPU, no tokenizer and no pretraining, so it says how much of a score any text
classifier gets for free on this data; a few seconds per task at the default study's size.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from dapt.core.errors import UserError
from dapt.core.files import read_json, write_json
from dapt.finetune.metrics import METRICS, compute_metrics, score

#: Inverse regularisation strengths tried on validation, smallest first (ties go to the smaller C:
#: the simpler model).
C_GRID: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
NGRAMS = (1, 2)
MAX_ITER = 2000
SPLITS = ("train", "validation", "test")


def _read_split(task_dir: Path, split: str, label_index: dict[str, int]) -> tuple[list[str], np.ndarray]:
    import pyarrow.parquet as pq

    path = task_dir / f"{split}.parquet"
    if not path.is_file():
        raise UserError(str(path), "missing", "run the prepare_task rule first")
    table = pq.ParquetFile(path).read(columns=["text", "label"])
    labels = [str(x) for x in table.column("label").to_pylist()]
    unknown = sorted(set(labels) - set(label_index))
    if unknown:
        raise UserError(f"{path}: label", f"labels {unknown[:5]} are not in labels.json")
    return table.column("text").to_pylist(), np.array([label_index[x] for x in labels], dtype=np.int64)


def run_baseline(task_dir: str | Path, metric: str, c_grid: tuple[float, ...] = C_GRID) -> dict:
    """Train one model per C on train, keep the best on validation, score it on test; return what
    metrics.json records (test metrics, the chosen C, every C's validation score, sizes, seconds)."""
    from sklearn import __version__ as sklearn_version
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    if metric not in METRICS:
        raise UserError("--metric", f"unknown metric {metric!r}", f"use one of {list(METRICS)}")
    start = time.perf_counter()
    task_dir = Path(task_dir)
    if not (task_dir / "labels.json").is_file():
        raise UserError(
            str(task_dir / "labels.json"), "missing: not a prepared task folder", "run the prepare_task rule first"
        )
    labels = [str(x) for x in read_json(task_dir / "labels.json")]
    index = {lab: i for i, lab in enumerate(labels)}
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (_read_split(task_dir, s, index) for s in SPLITS)
    vectorizer = TfidfVectorizer(ngram_range=NGRAMS, sublinear_tf=True)
    train_features = vectorizer.fit_transform(x_train)
    val_features, test_features = vectorizer.transform(x_val), vectorizer.transform(x_test)
    validation, best = {}, None
    for c in c_grid:
        model = LogisticRegression(C=c, max_iter=MAX_ITER).fit(train_features, y_train)
        validation[c] = score(y_val, model.predict(val_features), len(labels), metric)
        if best is None or validation[c] > validation[best[0]]:
            best = (c, model)
    c, model = best
    test_metrics = compute_metrics(y_test, model.predict(test_features), labels)
    return {
        "method": "tfidf_lr",
        "metric": metric,
        "C": c,
        "score": test_metrics[metric],
        **test_metrics,
        "validation": {f"{k:g}": v for k, v in validation.items()},
        "best_validation": validation[c],
        "n_train": len(y_train),
        "n_validation": len(y_val),
        "n_test": len(y_test),
        "n_features": len(vectorizer.vocabulary_),
        "ngram_range": list(NGRAMS),
        "seconds": time.perf_counter() - start,
        "sklearn": sklearn_version,
    }


def write_baseline(task_dir: str | Path, task: str, metric: str, out: str | Path) -> dict:
    """run_baseline, written to `out` (metrics.json) with the task's name."""
    result = {"task": task, **run_baseline(task_dir, metric)}
    write_json(out, result)
    return result
