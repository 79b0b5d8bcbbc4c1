"""Every default a study config may leave out, and the fixed lists it is checked against: one home, imported
by the config checks, the stages and the schema's documentation alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SCHEMA = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"

MLM_DEFAULTS: dict[str, Any] = {
    "batch_size": 16,
    "grad_accum": 1,
    "max_length": 128,
    "lr": 5e-5,
    "head_lr": 5e-4,
    "head_warmup_steps": 0,
    "warmup_ratio": 0.06,
    "weight_decay": 0.01,
    "mlm_probability": 0.15,
    "save_steps": 50,
    "max_grad_norm": 1.0,
}
FINETUNE_DEFAULTS: dict[str, Any] = {
    "epochs": 3,
    "batch_size": 16,
    "eval_batch_size": 64,
    "grad_accum": 1,
    "lr": 2e-5,
    "weight_decay": 0.01,
    "warmup_ratio": 0.1,
    "patience": 3,
    "max_grad_norm": 1.0,
    "save_steps": 50,
}
# Training-time robustness (dapt.finetune.regularizers), all off: fine-tuning keys like the above, sweepable,
# but only the ones a config sets are in a run's hyperparameters (runs without them keep their files and need no rerun).
# adv_epsilon: one example's perturbation length (at 1.0 MiniLM, word vectors ~1.07 long, collapsed to the majority).
ROBUST_DEFAULTS: dict[str, Any] = {
    "adversarial": "none",
    "adv_epsilon": 0.1,
    "adv_alpha": 0.03,
    "adv_steps": 3,
    "rdrop": 0.0,
    "label_smoothing": 0.0,
}
ON_DIVERGENCE = "record"  # a non-finite fine-tuning loss: `record` a failed run the report names, or `fail` the job
CORPUS_SHARDS = 1  # tokenize jobs per DAPT corpus without corpora.<c>.shards (1: one job, no gathering)
# Tokens per task example when the config gives no tasks.<t>.max_length (names the tokenized folder, .L<n>).
TASK_MAX_LENGTH = 128
# How a task's documents longer than max_length become rows (tasks.<t>.long_text; dapt.tokenize.longtext). head_tail's
# `head` and windows' `stride` default to these fractions of max_length (Sun et al.'s 128 of 512; half-overlapping
# windows); `max_windows` caps the rows (training examples, predictions) one document costs.
LONG_TEXT_DEFAULTS: dict[str, Any] = {
    "strategy": "head",
    "head_fraction": 0.25,
    "stride_fraction": 0.5,
    "pool": "mean",
    "max_windows": 8,
}
# Every fine-tuning method kind, checked here so that a typo fails before any download, not in the first
# fine-tuning job. The peft kinds are the ones dapt.finetune.fine_tuning hands to peft.
PEFT_KINDS: tuple[str, ...] = ("lora", "adalora", "ia3", "prefix", "prompt")
METHOD_KINDS: tuple[str, ...] = ("full", "head", *PEFT_KINDS, "adapter")
# The deploy stage (`deploy:`; dapt.deploy): formats, which runs, how they are measured.
DEPLOY_FORMATS: tuple[str, ...] = ("pytorch", "onnx", "onnx_fused", "onnx_int8")
DEPLOY_DEFAULTS: dict[str, Any] = {
    "formats": list(DEPLOY_FORMATS),
    "runs": "best",
    "methods": None,
    "opset": 17,
    "latency_texts": 100,
    "threads": 1,
}
#: Method kinds whose trained state lives outside the model's weights (see dapt.deploy.export).
NOT_EXPORTABLE_KINDS: tuple[str, ...] = ("prefix", "prompt")
# kNN-TAPT (variant stage "tapt_knn:<corpus>:<k>"; dapt.pretrain.knn_selection): TAPT on the task's text and
# each training example's k nearest corpus documents. Its MLM settings are `pretrain.tapt_knn`, else
# `pretrain.tapt`; the sentence embeddings that choose the documents (mean pooling) read the first
# `max_length` tokens of each text.
KNN_DEFAULTS: dict[str, Any] = {"max_length": 256, "batch_size": 32, "chunk_docs": 4096, "query_batch": 1024}
