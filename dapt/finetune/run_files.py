"""What a fine-tuning run leaves behind: train.json (its summary), log.csv (one row per epoch) and model/ (what
the method trains; a diverged run's holds only diverged.json)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from dapt.core.errors import diverged
from dapt.core.files import atomic_path, write_json
from dapt.finetune.methods import save_artifact
from dapt.runtime.context import peak_memory_mb
from dapt.tokenize.longtext import n_documents

#: A `dapt.finetune.fine_tuning.FineTuning` (not imported: that module imports this one).
Run = Any

LOG_COLUMNS = ["epoch", "step", "train_loss", "val_accuracy", "val_macro_f1", "lr"]


def make_summary(run: Run, seconds: float, pretrain_info: dict | None, stats: dict) -> dict:
    state = run.state
    long_text = {"long_text": stats["long_text"], "train_rows": len(run.data.lengths)} if "long_text" in stats else {}
    return {
        "n_train": n_documents(run.data.train),
        "n_validation": n_documents(run.data.val),
        "train_steps": state["step"],
        "epochs_run": state["epochs_run"],
        "best_epoch": state["best_epoch"],
        "best_validation": state["best"],
        "trainable_params": run.trainable,
        "total_params": run.total_params,
        "trainable_pct": 100.0 * run.trainable / run.total_params,
        "peak_memory_mb": peak_memory_mb(run.runtime.device),
        "seconds": seconds,
        "pretrain": pretrain_info or {},
        "params": run.params,
        **run.runtime.describe(),
        "truncated": {s: stats[s]["truncated"] for s in ("train", "validation", "test")},
        **long_text,
    }


def write_outputs(run: Run, summary: dict, out: Path) -> None:
    """model/ (a diverged run's holds only diverged.json: nothing to evaluate or deploy), log.csv, train.json."""
    if diverged(summary):
        with atomic_path(out / "model") as tmp:
            tmp.mkdir()
            write_json(tmp / "diverged.json", {k: summary[k] for k in ("status", "error", "diverged_step")})
    else:
        save_artifact(run.model, run.params, run.data.labels, out / "model")
    with atomic_path(out / "log.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(LOG_COLUMNS)
        w.writerows(run.state["log"])
    write_json(out / "train.json", summary)
