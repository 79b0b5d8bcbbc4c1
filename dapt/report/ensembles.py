"""Seed ensembles and the majority-class baseline, scored from the runs' predictions.

The ensemble (class probabilities averaged over seeds, then argmax) is the single best estimate of a
variant's predictions; the majority class is the floor every method must beat. Both require that
the runs they combine were evaluated on the same test examples, which is checked here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from dapt.core.errors import UserError
from dapt.finetune.metrics import METRICS, score
from dapt.report.design import task_metric_from_results
from dapt.report.inputs import GROUP_KEYS, read_predictions
from dapt.report.stats import encode, same_examples

Group = tuple[str, str, str, str]  # (task, model, variant, method)


def _group(rec: Mapping) -> Group:
    return tuple(str(rec[k]) for k in GROUP_KEYS)  # type: ignore[return-value]


def group_labels(results: pd.DataFrame, labels: Mapping[str, Sequence[str]]) -> dict[Group, list[str]]:
    """The label list of each (task, model, variant, method); its seeds must agree on it.

    `labels` maps a run's metrics path to its labels (results.labels_by_run)."""
    seen: dict[Group, list[list[str]]] = {}
    for rec in results.to_dict("records"):
        options = seen.setdefault(_group(rec), [])
        run_labels = list(labels[rec["metrics_path"]])
        if run_labels not in options:
            options.append(run_labels)
    for options in seen.values():
        if len(options) != 1:
            raise UserError("metrics", f"runs disagree on the label set: {options}")
    return {key: options[0] for key, options in seen.items()}


def load_run_predictions(
    results: pd.DataFrame, prediction_paths: Mapping[str, str], labels: Mapping[str, Sequence[str]]
) -> dict[Group, dict[int, pd.DataFrame]]:
    """Predictions of every run, keyed by (task, model, variant, method) then seed."""
    out: dict[Group, dict[int, pd.DataFrame]] = {}
    for rec in results.to_dict("records"):
        path = prediction_paths[rec["metrics_path"]]
        out.setdefault(_group(rec), {})[int(rec["seed"])] = read_predictions(path, labels[rec["metrics_path"]])
    return out


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
        if not same_examples(df, first):
            raise UserError(where, f"seed {s} predicts other test examples than seed {seeds[0]}")
        if not same_examples(df, first, gold=True):
            raise UserError(where, f"seed {s} has other gold labels than seed {seeds[0]}")
        total += df[prob_cols].to_numpy(dtype=float)
    probs = total / len(seeds)
    out = pd.DataFrame({"id": first["id"].to_numpy(), "gold": first["gold"].to_numpy()})
    out["predicted"] = [labels[i] for i in probs.argmax(axis=1)]
    for j, col in enumerate(prob_cols):
        out[col] = probs[:, j]
    return out


def build_ensembles(
    results: pd.DataFrame, predictions: Mapping[Group, Mapping[int, pd.DataFrame]], labels: Mapping[Group, list[str]]
) -> tuple[pd.DataFrame, dict]:
    """Score the seed ensemble of each (task, model, variant, method); return the table and the
    ensemble predictions with their labels (for the majority baseline and the significance test)."""
    rows, ens_preds = [], {}
    for key, per_seed in predictions.items():
        metric = task_metric_from_results(results, key[0])
        where = "predictions of " + "/".join(key)
        ens = ensemble_predictions(per_seed, labels[key], where)
        ens_preds[key] = (ens, labels[key])
        gold, pred = encode(ens["gold"], labels[key], where), encode(ens["predicted"], labels[key], where)
        k = len(labels[key])
        row = dict(zip(GROUP_KEYS, key))
        row.update(
            {
                "n_seeds": len(per_seed),
                "seeds": " ".join(str(s) for s in sorted(per_seed)),
                "metric": metric,
                "score": score(gold, pred, k, metric),
                "n_test": len(gold),
            }
        )
        row.update({m: score(gold, pred, k, m) for m in METRICS})
        rows.append(row)
    cols = [*GROUP_KEYS, "n_seeds", "seeds", "metric", "score", *METRICS, "n_test"]
    df = pd.DataFrame(rows, columns=cols).sort_values(GROUP_KEYS, kind="stable").reset_index(drop=True)
    return df, ens_preds


def majority_baselines(results: pd.DataFrame, ens_preds: Mapping[Group, tuple]) -> pd.DataFrame:
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
            if not same_examples(ens_preds[k][0], ref, gold=True):
                raise UserError(
                    "predictions of " + "/".join(k),
                    f"test set differs from that of {'/'.join(keys[0])}",
                    "every run of a task must be evaluated on the same test set",
                )
        gold = encode(ref["gold"], labels)
        counts = np.bincount(gold, minlength=len(labels))
        majority = int(counts.argmax())
        metric = task_metric_from_results(results, task)
        pred = np.full_like(gold, majority)
        rows.append(
            {
                "task": task,
                "metric": metric,
                "majority_label": labels[majority],
                "majority_share": counts[majority] / counts.sum(),
                "score": score(gold, pred, len(labels), metric),
                "n_test": len(gold),
                "label_counts": json.dumps({lab: int(c) for lab, c in zip(labels, counts)}),
            }
        )
    return pd.DataFrame(
        rows, columns=["task", "metric", "majority_label", "majority_share", "score", "n_test", "label_counts"]
    )
