"""The classical baseline (TF-IDF + logistic regression): trained on the task's own prepared splits,
C chosen on validation (recomputed here with scikit-learn alone), scored on test with the task
metric; bad input is one line and exit status 2; a row of every report table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

from dapt.data.prepare import prepare_task
from dapt.finetune import tfidf_baseline as baseline

SCRIPT = REPO / "scripts" / "baseline.py"


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """The tiny study's task (real RT-polarity sentences), prepared as the workflow prepares it."""
    out = tmp_path_factory.mktemp("task") / "rt_polarity"
    spec = {
        "source": {
            "kind": "local",
            "path": str(REPO / "tests/data/rt_sample.csv"),
            "columns": {"text": "sentence", "label": "sentiment"},
        },
        "carve": {"test": 100, "validation": 60},
    }
    prepare_task(spec, "rt_polarity", out, split_seed=0)
    return out


def _split(task_dir: Path, split: str, labels: list[str]) -> tuple[list[str], np.ndarray]:
    df = pd.read_parquet(task_dir / f"{split}.parquet")
    return df["text"].tolist(), np.array([labels.index(str(x)) for x in df["label"]])


@pytest.mark.parametrize("metric", ["macro_f1", "accuracy"])
def test_c_is_chosen_on_validation_and_scored_on_test(task_dir, metric):
    result = baseline.run_baseline(task_dir, metric)
    labels = json.loads((task_dir / "labels.json").read_text())
    (xtr, ytr), (xva, yva), (xte, yte) = (_split(task_dir, s, labels) for s in ("train", "validation", "test"))
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(xtr)
    score = (lambda y, p: f1_score(y, p, average="macro")) if metric == "macro_f1" else accuracy_score
    val = {
        c: score(yva, LogisticRegression(C=c, max_iter=2000).fit(vec.transform(xtr), ytr).predict(vec.transform(xva)))
        for c in baseline.C_GRID
    }
    best = max(baseline.C_GRID, key=lambda c: (val[c], -c))  # ties: the smaller C
    assert result["C"] == best
    assert result["validation"] == pytest.approx({f"{c:g}": v for c, v in val.items()})
    model = LogisticRegression(C=best, max_iter=2000).fit(vec.transform(xtr), ytr)
    pred = model.predict(vec.transform(xte))
    assert result["score"] == pytest.approx(score(yte, pred)) == pytest.approx(result[metric])
    assert result["macro_f1"] == pytest.approx(f1_score(yte, pred, average="macro"))
    assert (result["n_train"], result["n_validation"], result["n_test"]) == (len(ytr), len(yva), len(yte))
    majority = max(np.mean(yte == k) for k in range(len(labels)))
    assert result["accuracy"] > majority  # the words carry the sentiment


def test_the_script_writes_metrics_and_refuses_bad_input_in_one_line(task_dir, tmp_path):
    out = tmp_path / "baseline" / "metrics.json"
    args = [sys.executable, str(SCRIPT), "--task-dir", str(task_dir), "--name", "rt_polarity", "--out", str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    written = json.loads(out.read_text())
    assert written["task"] == "rt_polarity" and written["metric"] == "macro_f1" and "chosen C=" in proc.stdout
    assert written == {
        **written,
        **{k: v for k, v in baseline.run_baseline(task_dir, "macro_f1").items() if k != "seconds"},
    }  # deterministic
    for bad, message in (
        ([*args[:3], str(tmp_path / "nowhere"), *args[4:]], "labels.json"),
        ([*args, "--metric", "f2"], "unknown metric 'f2'"),
    ):
        proc = subprocess.run(bad, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
