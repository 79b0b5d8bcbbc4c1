"""A fine-tuning run's task data: the tokenized splits, their labels and padding id, and the augmented copies a
run adds to its training rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dapt.core.files import read_json
from dapt.tokenize.tasks import read_examples


@dataclass
class TaskData:
    labels: list[str]
    train: dict
    val: dict
    pad_id: int
    lengths: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.lengths = np.array([len(x) for x in self.train["input_ids"]])


def load_task(tokenized_dir: str | Path, base_dir: str | Path) -> TaskData:
    from dapt.data.model_store import load_tokenizer

    tok_dir = Path(tokenized_dir)
    return TaskData(
        labels=read_json(tok_dir / "labels.json"),
        train=read_examples(tok_dir / "train.parquet"),
        val=read_examples(tok_dir / "validation.parquet"),
        pad_id=load_tokenizer(base_dir).pad_token_id,
    )


def with_copies(train: dict, augmented: str, tokenized_dir: str, base_dir: str) -> dict:
    """The training rows plus the augmented copies of those among them (after a learning curve's cut)."""
    from dapt.data.augment import source_ids
    from dapt.data.model_store import load_tokenizer
    from dapt.tokenize.longtext import document_index
    from dapt.tokenize.tasks import tokenize_like

    copies = tokenize_like(augmented, tokenized_dir, load_tokenizer(base_dir))
    keep = np.flatnonzero(np.isin(source_ids(copies["id"]), list(set(train["id"]))))
    ids = list(train["id"]) + [copies["id"][i] for i in keep]
    return {
        **train,
        "id": ids,
        "input_ids": list(train["input_ids"]) + [copies["input_ids"][i] for i in keep],
        "label": np.concatenate([train["label"], copies["label"][keep]]),
        "doc": document_index(ids) if train["pool"] else np.arange(len(ids)),
    }
