"""One small study of one encoder family, every stage called in-process as the rules' scripts call it:
store the model (checked for the study's methods), tokenize the task and the MLM corpus, MLM-pretrain a
few steps, fine-tune full, LoRA and head, evaluate, export, ONNX, int8, and label texts with each export.
tests/test_families.py runs it for every family and checks what it returns."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

LABELS = ["neg", "pos"]
MAX_LENGTH = 48
METHODS = {
    "full": {"kind": "full", "lr": 3e-3},
    "lora": {"kind": "lora", "lr": 1e-2, "r": 4, "alpha": 8, "dropout": 0.0},
    "head": {"kind": "head", "lr": 3e-2},
}
MLM = {"max_steps": 4, "batch_size": 8, "lr": 1e-3, "head_warmup_steps": 0, "save_steps": 100}
FINETUNE = {"epochs": 1, "batch_size": 16, "save_steps": 1000, "metric": "macro_f1", "max_length": MAX_LENGTH}
WINDOWS = {"strategy": "windows", "stride": 16, "pool": "mean", "max_windows": 4, "max_length": MAX_LENGTH}


def shared_data(root: Path, repo: Path) -> tuple[Path, dict]:
    """The MLM corpus (IMDb reviews, parquet) and the task's splits (Rotten Tomatoes sentences)."""
    from conftest import rt_examples

    with open(repo / "tests" / "data" / "imdb_sample.jsonl") as f:
        reviews = [json.loads(line)["review"] for line in f]
    corpus = root / "corpus.parquet"
    pd.DataFrame({"text": reviews}).to_parquet(corpus)
    df = rt_examples()
    return corpus, {"train": df[:48], "validation": df[48:80], "test": df[80:120]}


def run_study(source: Path, root: Path, corpus: Path, splits: dict, runtime) -> dict:
    """Every stage for the model in `source`; returns what the checks need."""
    from conftest import write_tokenized_task

    import dapt.finetune.fine_tuning as ft
    from dapt.data.model_store import prepare_model
    from dapt.deploy.export import export_run
    from dapt.deploy.onnx import export_onnx, quantize_int8
    from dapt.finetune.capabilities import check_model_supports
    from dapt.finetune.evaluation import evaluate_run
    from dapt.pretrain.pretraining import pretrain
    from dapt.study.defaults import FINETUNE_DEFAULTS, MLM_DEFAULTS
    from dapt.tokenize.blocks import tokenize_corpus

    family = source.name
    model = root / "model"
    out: dict = {"prepared": prepare_model({"source": {"kind": "local", "path": str(source)}}, family, model, root)}
    out["notes"] = check_model_supports(model, family, METHODS, {"reviews": WINDOWS})
    tokenized = write_tokenized_task(root, splits, LABELS, model, MAX_LENGTH)
    tokenize_corpus(corpus, model, 32, root / "blocks")
    params = {**MLM_DEFAULTS, **MLM}
    blocks, pretrained = str(root / "blocks"), str(root / "dapt")
    out["pretrain"] = pretrain(str(model), blocks, pretrained, str(root / "ck"), params, 1, runtime)
    base = root / "dapt" / "model"
    texts = splits["test"]["text"].tolist()
    out["runs"] = {}
    for name, method in METHODS.items():
        run = root / "runs" / name
        params = {**FINETUNE_DEFAULTS, **FINETUNE, **method}
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            summary = ft.finetune(str(base), str(tokenized), str(run), str(root / "ck" / name), params, 1, runtime)
        evaluate_run(
            *(str(p) for p in (run / "model", base, tokenized, run / "train.json", run / "metrics.json")),
            str(run / "predictions.csv"),
            runtime,
            {},
            64,
        )
        export_run(str(run / "model"), str(base), LABELS, run / "hf", {"method": name}, tokenized)
        export_onnx(run / "hf", run / "onnx")
        quantize_int8(run / "onnx", run / "int8")
        out["runs"][name] = {
            "summary": summary,
            "printed": printed.getvalue(),
            "method": json.loads((run / "model" / "method.json").read_text()),
            "evaluated": pd.read_csv(run / "predictions.csv")[[f"p_{label}" for label in LABELS]].to_numpy(),
            "formats": {fmt: _predict(run / fmt, texts) for fmt in ("hf", "onnx", "int8")},
            "folder": run,
        }
    out["cli"] = _predict_cli(out["runs"]["lora"]["folder"] / "int8", texts, root)
    return out


def _predict(folder: Path, texts: list[str]) -> np.ndarray:
    from dapt.deploy.predict import Predictor

    return Predictor(str(folder), threads=1).predict_proba(texts)


def _predict_cli(folder: Path, texts: list[str], root: Path) -> pd.DataFrame:
    """`python -m dapt.deploy.predict` (its main, in this process) on a text file."""
    from dapt.deploy.predict import main

    (root / "texts.txt").write_text("\n".join(texts) + "\n")
    with contextlib.redirect_stderr(io.StringIO()):
        main(["--model", str(folder), "--input", str(root / "texts.txt"), "--output", str(root / "labels.csv")])
    return pd.read_csv(root / "labels.csv")
