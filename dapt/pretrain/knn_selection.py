"""kNN-TAPT's data selection (Gururangan et al. 2020, §5): the corpus documents nearest to the task's
training examples, for TAPT on the task's text plus those documents.

Every training text and corpus document is embedded by a sentence encoder (the study's model: mean
pooling of the last hidden state over the attention mask, L2-normalised, as sentence-transformers
pools MiniLM), so cosine similarity is a dot product. Each training example takes its k nearest
documents; the union, each document once, is the selection. The corpus streams by in chunks and
is never held as embeddings: each chunk's vectors are merged into a running top k per query (query
batches of `query_batch`), so memory is bounded by queries x (k + chunk), whatever the corpus size.
Ties are broken by the lower document number, so chunking and batching never change the result.

The selection is a folder (`dapt.study.layout.KNN_SELECTION`): `train.parquet` (a `text` column: the
task's training texts, then the chosen documents in corpus order; what the stage's MLM blocks are
made of), `neighbours.parquet` (query, rank, doc, similarity) and `selection.json` (counts and a few
examples, for the report's notes).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dapt.core.errors import UserError
from dapt.core.files import atomic_path, write_json

EXAMPLES = 3  # query/neighbour pairs kept in selection.json for the report
SNIPPET_CHARS = 300


class NearestDocs:
    """The running k nearest documents of every query (unit vectors: cosine = dot product), merged
    one chunk of documents at a time; documents are numbered in the order they are added."""

    def __init__(self, queries: np.ndarray, k: int, query_batch: int = 1024):
        if k < 1:
            raise ValueError(f"k must be >= 1, not {k}")
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k, self.query_batch, self.seen = k, max(1, query_batch), 0
        self.sims = np.full((len(queries), k), -np.inf, dtype=np.float32)
        self.docs = np.full((len(queries), k), -1, dtype=np.int64)

    def add(self, docs: np.ndarray) -> None:
        """Merge the next documents' vectors: per query, keep the k highest similarities (the lower
        document number first among equal ones)."""
        # float64 products of float32 vectors, rounded to float32: BLAS sums in an order that depends on
        # the matrices' shapes, so in float32 two equal documents could score apart in the last bit and a
        # tie would go one way in one batching and the other way in another
        docs = np.asarray(docs, dtype=np.float64)
        ids = np.arange(self.seen, self.seen + len(docs), dtype=np.int64)
        for start in range(0, len(self.queries), self.query_batch):
            rows = slice(start, start + self.query_batch)
            sims = (self.queries[rows].astype(np.float64) @ docs.T).astype(np.float32)
            all_sims = np.concatenate([self.sims[rows], sims], axis=1)
            all_docs = np.concatenate([self.docs[rows], np.broadcast_to(ids, sims.shape)], axis=1)
            # not yet filled slots (-inf, doc -1) sort last: -(-inf) is +inf
            order = np.lexsort((all_docs, -all_sims), axis=1)[:, : self.k]
            self.sims[rows] = np.take_along_axis(all_sims, order, axis=1)
            self.docs[rows] = np.take_along_axis(all_docs, order, axis=1)
        self.seen += len(docs)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(doc numbers, similarities), queries x k, nearest first."""
        if self.seen < self.k:
            raise ValueError(f"only {self.seen} documents for k = {self.k}")
        return self.docs.copy(), self.sims.copy()


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1, norms)


def nearest(
    queries: np.ndarray, docs: np.ndarray, k: int, doc_batch: int = 4096, query_batch: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest documents by cosine similarity of in-memory vectors, `doc_batch` documents at a time."""
    found = NearestDocs(unit_rows(queries), k, query_batch)
    docs = unit_rows(docs)
    for start in range(0, len(docs), max(1, doc_batch)):
        found.add(docs[start : start + doc_batch])
    return found.result()


def selected_documents(neighbours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The union of every query's neighbours, each document once (ascending), and how many queries chose it."""
    docs, hits = np.unique(neighbours.ravel(), return_counts=True)
    return docs, hits


# --- embedding --------------------------------------------------------------------------------


class Encoder:
    """Sentence embeddings from a model folder: mean of the last hidden state over the real tokens."""

    def __init__(self, model_dir: str | Path, runtime: Any, max_length: int, batch_size: int):
        from transformers import AutoModel

        from dapt.data.model_store import load_tokenizer, trusts_remote_code

        self.tokenizer = load_tokenizer(model_dir)
        self.model = AutoModel.from_pretrained(
            str(model_dir), use_safetensors=True, trust_remote_code=trusts_remote_code(model_dir)
        )
        self.model.to(runtime.device).eval()
        self.runtime, self.max_length, self.batch_size = runtime, max_length, batch_size
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors (len(texts) x hidden), in the order of `texts`; batches sorted by length."""
        import torch

        from dapt.runtime.batching import collate, length_sorted_batches

        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, verbose=False)
        ids = [np.asarray(x, dtype=np.int64) for x in enc["input_ids"]]
        out = np.zeros((len(ids), self.model.config.hidden_size), dtype=np.float32)
        device = self.runtime.device
        with torch.inference_mode():
            for idx in length_sorted_batches([len(x) for x in ids], self.batch_size):
                batch, mask = collate(ids, idx, self.pad_id)
                with self.runtime.autocast():
                    hidden = self.model(input_ids=batch.to(device), attention_mask=mask.to(device)).last_hidden_state
                out[idx] = mean_pool(hidden.float(), mask.to(device)).cpu().numpy()
        return unit_rows(out)


def mean_pool(hidden: Any, mask: Any) -> Any:
    """Mean of each row's hidden states over its attention mask (padding does not count)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


# --- reading texts ----------------------------------------------------------------------------


def text_chunks(path: str | Path, size: int) -> Iterator[list[str]]:
    """The `text` column of a parquet file, in order, `size` rows at a time (bounded memory)."""
    import pyarrow as pa

    from dapt.tokenize.corpus_texts import open_texts  # the one check of a prepared text file

    pf = open_texts(path)
    try:
        for batch in pf.iter_batches(batch_size=max(1, size), columns=["text"]):
            yield [t or "" for t in batch.column(0).to_pylist()]
    except (OSError, pa.ArrowException) as err:
        raise UserError(str(path), f"cannot read as parquet: {err}", "prepare the data again") from None


def read_texts(path: str | Path) -> list[str]:
    return [t for chunk in text_chunks(path, 1 << 16) for t in chunk]


# --- the selection step -----------------------------------------------------------------------


def select(
    task_dir: str | Path,
    corpus: str | Path,
    model_dir: str | Path,
    k: int,
    out: str | Path,
    params: dict,
    runtime: Any,
    where: str = "variants",
) -> dict:
    """Choose each training example's k nearest corpus documents; write the selection folder `out`
    (atomically) and return its summary. `params`: dapt.study.config.knn_params."""
    timer = time.perf_counter()
    queries = read_texts(Path(task_dir) / "train.parquet")
    if not queries:
        raise UserError(f"{task_dir}/train.parquet", "the training split has no texts to find neighbours for")
    from dapt.tokenize.tasks import check_max_length

    check_max_length(model_dir, params["max_length"], "knn.max_length")
    encode = Encoder(model_dir, runtime, params["max_length"], params["batch_size"])
    found = NearestDocs(encode(queries), k, params["query_batch"])
    for chunk in text_chunks(corpus, params["chunk_docs"]):
        found.add(encode(chunk))
        print(f"embedded {found.seen} corpus documents ({time.perf_counter() - timer:.0f}s)", flush=True)
    if found.seen < k:
        raise UserError(
            where, f"k = {k} but corpus {Path(corpus).stem} has only {found.seen} documents", "use a smaller k"
        )
    neighbours, sims = found.result()
    docs, hits = selected_documents(neighbours)
    texts = _gather(corpus, docs, params["chunk_docs"])
    table, dropped = _tapt_texts(queries, docs, hits, texts)
    summary = {
        "corpus": Path(corpus).stem,
        "k": k,
        "encoder": Path(model_dir).name,
        "queries": len(queries),
        "corpus_documents": found.seen,
        "pairs": int(neighbours.size),
        "selected": int(len(docs)),
        "selected_fraction": len(docs) / found.seen,
        "duplicates_dropped": dropped,
        "documents_written": int((table["source"] == "corpus").sum()),
        "texts": len(table),
        "characters": {s: int(table.loc[table["source"] == s, "text"].str.len().sum()) for s in ("task", "corpus")},
        "similarity": {"nearest_mean": float(sims[:, 0].mean()), "kth_mean": float(sims[:, -1].mean())},
        "hits": {"max": int(hits.max()), "median": float(np.median(hits))},
        "embedding": {
            "pooling": "mean",
            "normalized": True,
            "max_length": params["max_length"],
            "precision": runtime.describe()["precision"],
        },
        "examples": _examples(queries, neighbours, sims, docs, texts),
        "seconds": time.perf_counter() - timer,
    }
    _write(out, table, neighbours, sims, summary)
    return summary


def _gather(corpus: str | Path, docs: np.ndarray, chunk: int) -> dict[int, str]:
    """Texts of the chosen documents, by number (a second pass over the corpus)."""
    wanted, texts, offset = set(docs.tolist()), {}, 0
    for part in text_chunks(corpus, chunk):
        texts.update((offset + i, t) for i, t in enumerate(part) if offset + i in wanted)
        offset += len(part)
    return texts


def _tapt_texts(queries: list[str], docs: np.ndarray, hits: np.ndarray, texts: dict[int, str]) -> tuple[Any, dict]:
    """The stage's texts: the task's, then each chosen document once; a document whose text repeats a
    chosen one or a training text is dropped (counted)."""
    import pandas as pd

    seen, rows = set(queries), []
    dropped = {"same_text_as_a_training_example": 0, "same_text_as_another_document": 0}
    chosen: set[str] = set()
    for doc, n in zip(docs.tolist(), hits.tolist()):
        text = texts[doc]
        if text in seen:
            dropped["same_text_as_another_document" if text in chosen else "same_text_as_a_training_example"] += 1
            continue
        seen.add(text)
        chosen.add(text)
        rows.append(("corpus", doc, n, text))
    table = pd.DataFrame([("task", -1, 0, q) for q in queries] + rows, columns=["source", "doc", "hits", "text"])
    return table, dropped


def _examples(
    queries: list[str], neighbours: np.ndarray, sims: np.ndarray, docs: np.ndarray, texts: dict[int, str]
) -> list[dict]:
    """A few training examples (evenly spaced) with their nearest document, shortened."""
    picks = sorted({int(i) for i in np.linspace(0, len(queries) - 1, min(EXAMPLES, len(queries)))})
    return [
        {
            "query": _snippet(queries[i]),
            "document": int(neighbours[i, 0]),
            "similarity": round(float(sims[i, 0]), 4),
            "neighbour": _snippet(texts[int(neighbours[i, 0])]),
        }
        for i in picks
    ]


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "…"


def _write(out: str | Path, table: Any, neighbours: np.ndarray, sims: np.ndarray, summary: dict) -> None:
    import pandas as pd

    q, k = neighbours.shape
    pairs = pd.DataFrame(
        {
            "query": np.repeat(np.arange(q), k),
            "rank": np.tile(np.arange(1, k + 1), q),
            "doc": neighbours.ravel(),
            "similarity": sims.ravel(),
        }
    )
    with atomic_path(out) as tmp:
        tmp.mkdir()
        table.to_parquet(tmp / "train.parquet", index=False)
        pairs.to_parquet(tmp / "neighbours.parquet", index=False)
        write_json(tmp / "selection.json", summary)
