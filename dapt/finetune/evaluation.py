"""Predictions and test metrics of a fine-tuned run (metrics: `dapt.finetune.metrics`), one per document: a
task cut into windows (`dapt.tokenize.longtext`) pools each document's windows before anything is scored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dapt.core.errors import DIVERGED, diverged
from dapt.core.files import atomic_path, read_json, write_json
from dapt.finetune.metrics import compute_metrics
from dapt.runtime.batching import collate, length_sorted_batches

#: What metrics.json carries over from the run's train.json.
TRAIN_KEYS = (
    "n_train",
    "n_validation",
    "train_steps",
    "epochs_run",
    "best_epoch",
    "trainable_params",
    "total_params",
    "trainable_pct",
    "peak_memory_mb",
    "device",
    "precision",
    "pretrain",
    "truncated",
)


@torch.inference_mode()
def predict_proba(
    model: torch.nn.Module, input_ids: list[np.ndarray], pad_id: int, runtime, batch_size: int = 128
) -> np.ndarray:
    was_training = model.training
    model.eval()
    out = [None] * len(input_ids)
    for idx in length_sorted_batches([len(x) for x in input_ids], batch_size):
        ids, mask = collate(input_ids, idx, pad_id)
        with runtime.autocast():
            logits = model(input_ids=ids.to(runtime.device), attention_mask=mask.to(runtime.device)).logits
        probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        for row, i in enumerate(idx):
            out[i] = probs[row]
    model.train(was_training)
    return np.stack(out)


def write_predictions(path: str | Path, ids: list[str], gold: np.ndarray, probs: np.ndarray, labels: list[str]) -> None:
    import pandas as pd

    df = pd.DataFrame({"id": ids, "gold": [labels[g] for g in gold], "predicted": [labels[p] for p in probs.argmax(1)]})
    for j, lab in enumerate(labels):
        df[f"p_{lab}"] = probs[:, j].round(6)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def evaluate_run(
    artifact_dir: str,
    base_dir: str,
    tokenized_dir: str,
    train_json: str,
    out_metrics: str,
    out_predictions: str,
    runtime,
    context: dict,
    batch_size: int,
    perturbed: dict | None = None,
    out_robustness: str | None = None,
) -> dict:
    """Predict the test split with a run's artifact; write predictions.csv and metrics.json (the test
    metrics, what the run rests on from its train.json, and how this evaluation ran), and with
    `perturbed` (name -> perturbed test file) robustness.json (`score_perturbed`)."""
    from dapt.finetune.methods import load_finetuned
    from dapt.tokenize.longtext import per_document
    from dapt.tokenize.tasks import read_examples

    labels = read_json(Path(tokenized_dir) / "labels.json")
    train_info = read_json(train_json)
    if diverged(train_info):
        return record_diverged(train_info, labels, context, out_metrics, out_predictions, out_robustness)
    model, pad_id = load_finetuned(artifact_dir, base_dir, labels)
    model.to(runtime.device)
    test = read_examples(Path(tokenized_dir) / "test.parquet")
    probs = predict_proba(model, test["input_ids"], pad_id, runtime, batch_size)
    ids, gold, probs = per_document(test, probs)
    metrics = compute_metrics(gold, probs.argmax(1), labels)
    artifact_bytes = sum(f.stat().st_size for f in Path(artifact_dir).rglob("*") if f.is_file())
    result = {
        **context,
        **metrics,
        "n_test": len(gold),
        "artifact_bytes": artifact_bytes,
        **{k: train_info[k] for k in TRAIN_KEYS},
        "precision_reason": train_info.get("precision_reason", ""),
        "evaluation": {**runtime.describe(), "batch_size": batch_size},
    }
    # data issues that are counted, not fixed: texts repeated across splits (truncation: from train.json)
    stats = read_json(Path(tokenized_dir) / "stats.json")
    result["texts_shared_across_splits"] = stats.get("texts_shared_across_splits", {})
    if "long_text" in stats:
        result.update(long_text=stats["long_text"], test_rows=len(test["label"]))
    if out_robustness:
        scores = score_perturbed(
            model, pad_id, base_dir, tokenized_dir, perturbed or {}, runtime, batch_size, dict(zip(ids, probs)), labels
        )
        write_json(out_robustness, {**context, **scores})
    write_predictions(out_predictions, ids, gold, probs, labels)
    write_json(out_metrics, result)
    return result


def score_perturbed(
    model,
    pad_id: int,
    base_dir: str,
    tokenized_dir: str,
    perturbed: dict,
    runtime,
    batch_size: int,
    clean: dict,
    labels: list[str],
) -> dict:
    """Metrics on each perturbed test set (`dapt.data.augment.write_perturbed`), and the clean metrics on the
    same documents (a sample of the test split, if the study perturbs one), so that each drop compares
    like with like. Documents, not windows, are scored, as for the clean test set."""
    from dapt.data.model_store import load_tokenizer
    from dapt.tokenize.longtext import per_document
    from dapt.tokenize.tasks import tokenize_like

    out: dict = {"perturbations": {}}
    if not perturbed:
        return out
    tokenizer = load_tokenizer(base_dir)
    for name, path in perturbed.items():
        rows = tokenize_like(path, tokenized_dir, tokenizer)
        ids, gold, probs = per_document(rows, predict_proba(model, rows["input_ids"], pad_id, runtime, batch_size))
        changed = read_changed(path)
        out["perturbations"][name] = {
            **compute_metrics(gold, probs.argmax(1), labels),
            "n": len(gold),
            "changed": changed,
        }
        if "clean" not in out:
            clean_probs = np.stack([clean[i] for i in ids])
            out["clean"] = {**compute_metrics(gold, clean_probs.argmax(1), labels), "n": len(gold)}
    return out


def read_changed(path: str) -> int:
    """How many texts the perturbation changed (the rest are scored as they were)."""
    import pyarrow.parquet as pq

    return int(sum(pq.read_table(path, columns=["changed"]).column("changed").to_pylist()))


def record_diverged(
    train_info: dict,
    labels: list[str],
    context: dict,
    out_metrics: str,
    out_predictions: str,
    out_robustness: str | None,
) -> dict:
    """A run whose training diverged (`on_divergence: record`) has nothing to predict with: its
    outputs say so (metrics.json `status: diverged` and the error, no scores; predictions.csv with
    its header only), so the report can list it as failed instead of the study stopping here."""
    result = {
        **context,
        "status": DIVERGED,
        "error": train_info["error"],
        "labels": labels,
        **{k: train_info[k] for k in TRAIN_KEYS},
        "diverged_step": train_info["diverged_step"],
    }
    if out_robustness:
        write_json(out_robustness, {**context, "status": DIVERGED})
    write_predictions(out_predictions, [], np.zeros(0, dtype=int), np.zeros((0, len(labels))), labels)
    write_json(out_metrics, result)
    return result
