"""Prepare the study's corpora and tasks: fetch, read, carve, check, and write normalised parquet.

Every corpus and task goes through here once, so the training steps only ever read parquet files
with string columns `id`, `text` (and `label`) and never deal with formats, encodings or downloads.
Anything the user can fix raises `UserError` naming the config key or the data file.

The parts: `dapt.data.sources` (source specs, downloads, cache), `dapt.data.archives` (safe extraction),
`dapt.data.readers` (formats and column roles), `dapt.data.splits` (carving and checking splits).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dapt.core.errors import UserError, some
from dapt.core.files import atomic_path
from dapt.core.redact import public_spec
from dapt.data.readers import iter_source, load_source
from dapt.data.sources import DEFAULT_CACHE_DIR, describe_source, required
from dapt.data.splits import (
    SPLITS,
    cap_splits,
    carve_missing_splits,
    check_labels,
    check_unique_ids,
    class_counts,
    shared_texts,
)

logger = logging.getLogger(__name__)


def prepare_corpus(
    spec: dict, name: str, out_path: str | os.PathLike, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR
) -> dict:
    """Write the corpus as parquet (id, text), first `max_docs` documents only; return a summary.

    The source streams through in chunks (a row group each), so memory does not grow with the corpus."""
    where = f"corpora.{name}"
    source = required(spec, "source", where)
    limit = spec.get("max_docs") or None
    checks = CorpusChecks(describe_source(source), f"{where}.source")
    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    with atomic_path(out_path) as tmp:
        with (
            contextlib.closing(iter_source(source, f"{where}.source", cache_dir, id_prefix=name)) as chunks,
            pq.ParquetWriter(tmp, schema) as writer,
        ):
            for chunk in chunks:
                chunk = chunk if limit is None else chunk.head(limit - checks.rows)
                checks.add(chunk)
                writer.write_table(pa.Table.from_pandas(chunk, schema=schema, preserve_index=False))
                if checks.rows == limit:
                    break
        checks.finish(tmp)
        shards = spec.get("shards", 1)
        if shards > checks.rows:  # before any shard job starts, so none leaves a folder behind
            raise UserError(
                f"{where}.shards",
                f"{shards} shards for {checks.rows} documents: a shard would be empty",
                f"use shards <= {checks.rows}",
            )
    return {"corpus": name, "docs": checks.rows, "chars": checks.chars, "source": public_spec(source)}


class CorpusChecks:
    """What `normalise` refuses in a whole table, counted over a corpus's chunks: empty texts and
    duplicate ids, in the same one-line messages. Ids are kept as 8-byte hashes (a corpus of
    millions of documents), confirmed by reading the written ids back when two hashes collide."""

    def __init__(self, origin: str, where: str):
        self.origin, self.where = origin, where
        self.rows = self.chars = 0
        self.empty: list[str] = []  # ids of empty texts (the first few) ...
        self.empty_count = 0  # ... and how many
        self.hashes: list[np.ndarray] = []

    def add(self, chunk: pd.DataFrame) -> None:
        self.rows += len(chunk)
        lengths = chunk["text"].str.len()
        self.chars += int(lengths.sum())
        empty = chunk["id"][lengths == 0]
        self.empty_count += len(empty)
        self.empty += empty.head(5 - len(self.empty)).tolist()
        self.hashes.append(pd.util.hash_array(chunk["id"].to_numpy(dtype=object)))

    def finish(self, written: Path) -> None:
        if self.rows == 0:
            raise UserError(self.origin, "the source has no rows")
        if self.empty_count:
            more = self.empty_count - len(self.empty)
            ids = ", ".join(self.empty) + (f", ... ({more} more)" if more else "")  # as errors.some writes them
            raise UserError(
                self.origin,
                f"{self.empty_count} of {self.rows} rows have an empty text (ids: {ids})",
                f"remove those rows or check {self.where}.columns.text",
            )
        hashes = np.sort(np.concatenate(self.hashes))
        suspects = set(hashes[1:][hashes[1:] == hashes[:-1]].tolist())
        if not suspects:
            return
        seen, duplicated = set(), []  # the ids again, in order: as pandas' duplicated() counts them
        for batch in pq.ParquetFile(written).iter_batches(columns=["id"]):
            ids = batch.column(0).to_pylist()
            for i, h in zip(ids, pd.util.hash_array(np.asarray(ids, dtype=object)).tolist()):
                if h in suspects and i in seen:
                    duplicated.append(i)
                elif h in suspects:
                    seen.add(i)
        if duplicated:
            examples = some(dict.fromkeys(duplicated))  # each once, in order
            raise UserError(
                self.origin,
                f"{len(duplicated)} duplicate ids (e.g. {examples})",
                f"map {self.where}.columns.id to a unique column, or leave it out to number the rows",
            )


def prepare_task(
    spec: dict,
    name: str,
    out_dir: str | os.PathLike,
    split_seed: int = 0,
    cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
    curve: tuple[list[int], str] | None = None,
) -> dict:
    """Write train/validation/test parquet files (id, text, label), labels.json and summary.json.

    Splits the task lacks are carved from its training rows, stratified by label with
    `split_seed`, so every variant and seed of a study sees the very same examples. `curve`: a learning
    curve's training sizes and the key that sets them; one above the training split is refused here, before
    anything is written (the data step runs first: not after tokenization and pretraining).
    """
    where = f"tasks.{name}"
    splits, label_keys = _load_task_sources(spec, where, cache_dir)
    splits = carve_missing_splits(splits, spec.get("carve") or {}, where, split_seed)
    splits = cap_splits(splits, spec.get("max_examples") or {}, where, split_seed)
    if curve and max(curve[0]) > len(splits["train"]):
        sizes, key = curve
        n = len(splits["train"])
        raise UserError(
            key,
            f"a learning-curve size of {max(sizes)} is more than the {n} examples of task {name}'s training split",
            f"use sizes <= {n}",
        )
    labels = check_labels(splits, label_keys)
    check_unique_ids(splits, f"{where}.sources")
    summary = _task_summary(spec, name, splits, labels, split_seed)
    if any(summary["texts_shared_across_splits"].values()):
        logger.warning("%s: some texts occur in more than one split: %s", where, summary["texts_shared_across_splits"])

    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for split, df in splits.items():
            df[["id", "text", "label"]].reset_index(drop=True).to_parquet(tmp / f"{split}.parquet", index=False)
        (tmp / "labels.json").write_text(json.dumps(labels) + "\n", encoding="utf-8")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return summary


def _task_summary(spec: dict, name: str, splits: dict[str, pd.DataFrame], labels: list[str], split_seed: int) -> dict:
    """What summary.json records about a prepared task: sizes, classes, overlaps, public sources."""
    sources = {"source": spec["source"]} if "source" in spec else {"sources": spec["sources"]}
    return {
        "task": name,
        "split_seed": split_seed,
        "rows": {split: len(df) for split, df in splits.items()},
        "class_counts": {split: class_counts(df) for split, df in splits.items()},
        "labels": labels,
        "texts_shared_across_splits": shared_texts(splits),
        "duplicate_texts_within_split": {s: int(df["text"].duplicated().sum()) for s, df in splits.items()},
        **public_spec(sources),
    }


def _load_task_sources(
    spec: dict, where: str, cache_dir: str | os.PathLike
) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """The task's tables by split, and for each the config key of its label column (for messages)."""
    if "source" in spec:
        source_key = f"{where}.source"
        table = load_source(spec["source"], source_key, cache_dir, id_prefix="all", with_label=True)
        return {"train": table}, dict.fromkeys(SPLITS, f"{source_key}.columns.label")
    sources = required(spec, "sources", where)
    splits, label_keys = {}, {}
    for split in SPLITS:
        if split in sources:
            key = f"{where}.sources.{split}"
            splits[split] = load_source(sources[split], key, cache_dir, id_prefix=split, with_label=True)
            label_keys[split] = f"{key}.columns.label"
    if "train" not in splits:
        raise UserError(f"{where}.sources.train", "a task needs a train source")
    return splits, {split: label_keys.get(split, f"{where}.carve.{split}") for split in SPLITS}
