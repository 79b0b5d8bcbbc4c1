"""Task tokenization, cached once per (task, tokenizer, max length) and reused by every later job.

Task data keeps one row per example, truncated to the task's max length; padding happens per batch
at training time. MLM data (packed blocks) is `dapt.tokenize.blocks`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dapt.core.errors import UserError
from dapt.core.files import atomic_path, read_json, write_json
from dapt.data.model_store import load_tokenizer
from dapt.tokenize import longtext

SPLITS = ("train", "validation", "test")


def _encode(tokenizer, texts: list[str], batch: int = 1000) -> list[list[int]]:
    ids: list[list[int]] = []
    for start in range(0, len(texts), batch):
        enc = tokenizer(texts[start : start + batch], add_special_tokens=True, truncation=False, verbose=False)
        ids.extend(enc["input_ids"])
    return ids


# models whose position ids start after the padding index (fairseq heritage; MPNet too)
POSITION_OFFSET_TYPES = (
    "roberta",
    "xlm-roberta",
    "camembert",
    "longformer",
    "xmod",
    "data2vec-text",
    "mpnet",
    "roberta-prelayernorm",
    "xlm-roberta-xl",
    "ibert",
    "luke",
)


def position_limit(model_dir: str | Path) -> int | None:
    """The longest sequence the model's position embeddings can take (None if its config does not say)."""
    config_path = Path(model_dir) / "config.json"
    config = read_json(config_path) if config_path.is_file() else {}
    limit = config.get("max_position_embeddings")
    if not isinstance(limit, int):
        return None
    if config.get("model_type") in POSITION_OFFSET_TYPES:
        limit -= (config.get("pad_token_id") or 1) + 1
    return limit


def check_max_length(model_dir: str | Path, max_length: int, key: str) -> None:
    """Refuse a length the model cannot embed (it would fail mid-training with an index error)."""
    if max_length < 8:
        raise UserError(key, f"max_length {max_length} is too small (at least 8 tokens)")
    limit = position_limit(model_dir)
    if limit is not None and max_length > limit:
        raise UserError(
            key,
            f"max_length {max_length} exceeds the {limit} positions of the model in {model_dir}",
            f"use max_length <= {limit}",
        )


#: Parquet schema metadata of a split cut by a long_text strategy other than head (read_examples reads it).
LONG_TEXT_META = b"dapt.long_text"


def tokenize_examples(
    ids: list[str], texts: list[str], labels: list[int], tokenizer, max_length: int, long_text: dict | None = None
) -> tuple[pa.Table, dict]:
    """One row per example (strategies head, head_tail) or per window (windows: a document's rows are
    consecutive and share its id and label), special tokens kept (`dapt.tokenize.longtext`)."""
    settings = long_text or {"strategy": "head"}
    rows, doc, counts = longtext.document_rows(
        _encode(tokenizer, texts), settings, max_length, longtext.special_counts(tokenizer)
    )
    table = pa.table(
        {
            "id": pa.array([ids[d] for d in doc], pa.string()),
            "input_ids": pa.array(rows, pa.list_(pa.int32())),
            "label": pa.array([labels[d] for d in doc], pa.int64()),
        }
    )
    lengths = [len(e) for e in rows]
    stats = {
        "examples": len(ids),
        "truncated": counts.pop("truncated"),
        "max_length": max_length,
        "mean_tokens": float(np.mean(lengths)) if lengths else 0.0,
        "tokens": int(sum(lengths)),
    }
    if settings["strategy"] != "head":  # head: the files and stats of before long_text existed
        table = table.replace_schema_metadata({LONG_TEXT_META: json.dumps(settings, sort_keys=True)})
        stats.update(counts)
    return table, stats


def tokenize_task_dir(
    task_dir: str, model_dir: str, max_length: int, out_dir: str, key: str = "max_length", long_text: dict | None = None
) -> dict:
    """Tokenize a task's three splits; `long_text`: the task's resolved `dapt.study.config.long_text_params`
    (None: head). `key` names the task's max_length for messages (tasks.<t>.max_length)."""
    check_max_length(model_dir, max_length, key)
    tokenizer = load_tokenizer(model_dir)
    settings = long_text or {"strategy": "head"}
    where = f"{key.rpartition('.')[0] or 'tasks'}.long_text"
    longtext.check_tokenizer(tokenizer, settings["strategy"], where)
    longtext.check_settings(settings, max_length, longtext.special_counts(tokenizer), where)
    labels = read_json(Path(task_dir) / "labels.json")
    label2id = {label: i for i, label in enumerate(labels)}
    stats: dict = {"labels": labels}
    if settings["strategy"] != "head":
        stats["long_text"] = settings
    # what the data step counted but kept (texts in more than one split), carried to metrics and report
    data_summary = Path(task_dir) / "summary.json"
    if data_summary.is_file():
        summary = read_json(data_summary)
        for field in ("texts_shared_across_splits", "duplicate_texts_within_split"):
            if field in summary:
                stats[field] = summary[field]
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for split in SPLITS:
            df = pq.read_table(Path(task_dir) / f"{split}.parquet").to_pandas()
            unknown = sorted(set(df["label"]) - set(label2id))
            if unknown:
                raise UserError(f"{task_dir}/{split}.parquet: label", f"labels {unknown} do not occur in train")
            table, stats[split] = tokenize_examples(
                df["id"].tolist(),
                df["text"].tolist(),
                [label2id[x] for x in df["label"]],
                tokenizer,
                max_length,
                settings,
            )
            pq.write_table(table, tmp / f"{split}.parquet")
        write_json(tmp / "labels.json", labels)
        write_json(tmp / "stats.json", stats)
    return stats


def _read_table(path: str | Path):
    """One parquet file; unlike pq.read_table, this does not import pyarrow.dataset (0.25 s that
    every fine-tuning and evaluation job would pay)."""
    return pq.ParquetFile(path).read()


def read_examples(path: str | Path) -> dict:
    """A tokenized split's rows; `doc`: each row's document number, `pool`: how a document's windows
    are pooled (None where every row is a document; `dapt.tokenize.longtext.per_document` uses both)."""
    return _examples(_read_table(path))


def tokenize_like(texts_file: str | Path, tokenized_dir: str | Path, tokenizer) -> dict:
    """Rows of a text file (id, text, label: augmented training rows, a perturbed test set) as
    `read_examples` gives a split of `tokenized_dir`: its labels, max_length and long_text strategy."""
    df = pq.read_table(texts_file).to_pandas()
    labels = read_json(Path(tokenized_dir) / "labels.json")
    stats = read_json(Path(tokenized_dir) / "stats.json")
    label2id = {label: i for i, label in enumerate(labels)}
    unknown = sorted(set(df["label"]) - set(label2id))
    if unknown:
        raise UserError(f"{texts_file}: label", f"labels {unknown} are not the task's")
    table, _ = tokenize_examples(
        df["id"].tolist(),
        df["text"].tolist(),
        [label2id[x] for x in df["label"]],
        tokenizer,
        stats["train"]["max_length"],
        stats.get("long_text"),
    )
    return _examples(table)


def _examples(table) -> dict:
    meta = (table.schema.metadata or {}).get(LONG_TEXT_META)
    settings = json.loads(meta) if meta else {"strategy": "head"}
    ids = table.column("id").to_pylist()
    windowed = settings["strategy"] == "windows"
    return {
        "id": ids,
        "input_ids": [np.asarray(x, dtype=np.int64) for x in table.column("input_ids").to_pylist()],
        "label": np.asarray(table.column("label").to_pylist(), dtype=np.int64),
        "doc": longtext.document_index(ids) if windowed else np.arange(len(ids)),
        "pool": settings["pool"] if windowed else None,
    }
