"""Metrics and predictions: what a paper table needs, computed by scikit-learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dapt.files import atomic_path, write_json

METRICS = ("accuracy", "macro_f1", "micro_f1")


def compute_metrics(gold: np.ndarray, pred: np.ndarray, labels: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    ids = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=ids, zero_division=0)
    return {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(f1_score(gold, pred, labels=ids, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(gold, pred, labels=ids, average="micro", zero_division=0)),
        "per_class": {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, lab in enumerate(labels)},
        "confusion_matrix": confusion_matrix(gold, pred, labels=ids).tolist(),
        "labels": list(labels),
    }


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[np.ndarray]:
    """Inference batches of similar length: almost no padding, same predictions as any order."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collate(input_ids: list[np.ndarray], idx: np.ndarray, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(input_ids[i]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        seq = torch.from_numpy(input_ids[i])
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask


@torch.inference_mode()
def predict_proba(model: torch.nn.Module, input_ids: list[np.ndarray], pad_id: int, runtime, batch_size: int = 128) -> np.ndarray:
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


def evaluate_run(artifact_dir: str, base_dir: str, tokenized_dir: str, out_metrics: str, out_predictions: str,
                 runtime, context: dict, batch_size: int = 128) -> dict:
    from dapt.finetune import load_finetuned
    from dapt.tokenization import read_examples
    from dapt.files import read_json

    labels = read_json(Path(tokenized_dir) / "labels.json")
    model, pad_id = load_finetuned(artifact_dir, base_dir, labels)
    model.to(runtime.device)
    test = read_examples(Path(tokenized_dir) / "test.parquet")
    probs = predict_proba(model, test["input_ids"], pad_id, runtime, batch_size)
    metrics = compute_metrics(test["label"], probs.argmax(1), labels)
    artifact_bytes = sum(f.stat().st_size for f in Path(artifact_dir).rglob("*") if f.is_file())
    train_info = read_json(Path(artifact_dir).parent / "train.json")
    result = {**context, **metrics, "n_test": len(test["label"]), "artifact_bytes": artifact_bytes,
              **{k: train_info[k] for k in ("n_train", "n_validation", "train_steps", "epochs_run", "best_epoch",
                                            "trainable_params", "total_params", "trainable_pct", "peak_memory_mb",
                                            "device", "precision", "pretrain", "truncated")}}
    # data issues that are counted, not fixed: texts repeated across splits (truncation: from train.json)
    stats = read_json(Path(tokenized_dir) / "stats.json")
    result["texts_shared_across_splits"] = stats.get("texts_shared_across_splits", {})
    write_predictions(out_predictions, test["id"], test["label"], probs, labels)
    write_json(out_metrics, result)
    return result
