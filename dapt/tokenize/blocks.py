"""Packed MLM blocks on disk: written in bounded memory as the corpus streams by, read lazily.

A corpus is read in record batches, tokenized a batch at a time by the fast tokenizer (token ids
only: no attention masks, type ids or offsets) and packed as `run_mlm.py`'s `group_texts` packs,
but over the whole corpus: documents with their special tokens concatenated and cut into full
blocks, the leftover of one batch carried into the next, so the blocks are exactly those of
packing everything at once (`pack_blocks`). Blocks go straight to one raw token file (uint16 where
the vocabulary fits, else int32) with a JSON index beside it, the layout nanoGPT and Megatron use:
2 bytes a token, no decoding, any row one slice away, so pretraining maps the file (`np.memmap`)
and converts only a batch's rows to tensors. Parquet/Arrow shards or `datasets` would add decoding
and list offsets for fixed-width rows, and `datasets` a cache of every intermediate column.

A block set is a folder (`dapt.study.layout.MLM_BLOCKS`) holding `tokens.bin` and `index.json`, written
atomically. A large corpus can be tokenized in shards (`corpora.<c>.shards`), one job each: a shard
keeps its whole token stream, uncut, and `gather` concatenates the streams in order and cuts once,
so the blocks and the leftover are those of one job.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from dapt.core.errors import UserError
from dapt.core.files import atomic_path, read_json, write_json
from dapt.tokenize.corpus_texts import shard_rows, text_batches

FORMAT = "dapt-blocks/1"
TOKENS, INDEX = "tokens.bin", "index.json"
#: Characters tokenized per call (~250k tokens): the tokenizer's encodings of a batch take tens of MB.
COPY_TOKENS = 1 << 23  # tokens per read when gathering shards
NO_BLOCK_FIX = "use more text or a smaller max_length"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 where every id fits (BERT, RoBERTa: 2 bytes a token), else int32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


class Packer:
    """Cuts a token stream into full blocks, carrying the leftover from one batch to the next."""

    def __init__(self, block: int, dtype: Any = np.int32):
        self.block = block
        self.carry = np.empty(0, np.dtype(dtype))

    def add(self, flat: np.ndarray) -> np.ndarray:
        """The full blocks that `flat`, the stream's next tokens, completes (n x block)."""
        if len(self.carry):
            flat = np.concatenate([self.carry, flat])
        n = len(flat) // self.block
        self.carry = flat[n * self.block :].copy()  # a copy: the batch's array can go
        return flat[: n * self.block].reshape(n, self.block)

    @property
    def left_over(self) -> int:
        return len(self.carry)


def flatten(sequences: list[list[int]], dtype: Any) -> np.ndarray:
    """The documents' ids end to end, in one array."""
    total = sum(map(len, sequences))
    return np.fromiter(itertools.chain.from_iterable(sequences), dtype=dtype, count=total)


def pack_blocks(sequences: list[list[int]], block: int) -> tuple[np.ndarray, int]:
    """Concatenate and cut into full blocks, all at once; the blocks and the tokens left over."""
    packer = Packer(block)
    return packer.add(flatten(sequences, np.int32)), packer.left_over


def encoder(tokenizer: Any) -> Callable[[list[str]], list[list[int]]]:
    """The ids `tokenizer(texts)["input_ids"]` gives (special tokens added, no truncation), taken
    straight from the Rust tokenizer, which encodes the batch on the job's threads (RAYON_NUM_THREADS,
    set by dapt.runtime.cli.limit_threads)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a Python tokenizer
        return lambda texts: tokenizer(
            texts,
            add_special_tokens=True,
            truncation=False,
            verbose=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
    # what the transformers wrapper sets before each call
    backend.no_truncation()
    backend.no_padding()
    backend.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast: no character offsets
    return lambda texts: [e.ids for e in encode(texts, add_special_tokens=True)]


# --- reading texts ---------------------------------------------------------------------------


# --- writing blocks --------------------------------------------------------------------------


def _writing(out: str | Path, action: Callable[[], Any]) -> Any:
    """Run a write; a failure (a full disk) is one line naming the output."""
    try:
        return action()
    except OSError as err:
        raise UserError(
            str(out),
            f"cannot write the blocks: {err.strerror or err}",
            "free disk space and rerun; nothing partial was kept",
        ) from None


class _TokenFile:
    """tokens.bin being written, and how many tokens it holds."""

    def __init__(self, path: Path, out: str | Path):
        self.out = out
        self.file: BinaryIO = _writing(out, lambda: open(path, "wb"))
        self.tokens = 0

    def write(self, tokens: np.ndarray) -> None:
        _writing(self.out, lambda: self.file.write(np.ascontiguousarray(tokens).data))
        self.tokens += tokens.size

    def close(self) -> None:
        _writing(self.out, self.file.close)


def write_blocks(
    out: str | Path, stream: Iterable[np.ndarray], block: int, dtype: Any, info: dict, where: str, cut: bool = True
) -> dict:
    """Write the token stream (flat arrays) into the block folder `out`, atomically.

    cut=True: full blocks, leftover counted; cut=False (a shard): every token, to be cut by `gather`.
    `info` goes into the index; `info["documents"]` is read after the stream is used up.
    """
    dtype = np.dtype(dtype)
    packer = Packer(block, dtype)
    with atomic_path(out) as tmp:
        _writing(out, tmp.mkdir)
        tokens = _TokenFile(tmp / TOKENS, out)
        try:
            for flat in stream:
                tokens.write(packer.add(flat) if cut else flat)
        except BaseException:
            with contextlib.suppress(OSError):  # the first error is the one to report
                tokens.file.close()
            raise
        tokens.close()
        index = {"format": FORMAT, "dtype": dtype.name, "block_length": block, **info}
        if cut:
            blocks = tokens.tokens // block
            if blocks == 0:
                raise UserError(
                    where, f"{index.get('documents')} texts make no full block of {block} tokens", NO_BLOCK_FIX
                )
            index.update(blocks=blocks, tokens=tokens.tokens, tokens_left_over=packer.left_over)
        else:
            index.update(stream=True, tokens=tokens.tokens)
        _writing(out, lambda: write_json(tmp / INDEX, index))
    return index


def tokenize_corpus(
    texts: str | Path,
    model_dir: str | Path,
    block: int,
    out: str | Path,
    key: str = "max_length",
    shard: tuple[int, int] = (0, 1),
) -> dict:
    """Tokenize and pack the `text` column of a parquet file into the block folder `out`.

    shard=(k, n) with n > 1: only the k-th of n runs of documents, kept whole for `gather`."""
    from dapt.data.model_store import load_tokenizer
    from dapt.tokenize.tasks import check_max_length

    check_max_length(model_dir, block, key)
    rows = shard_rows(texts, shard)
    tokenizer = load_tokenizer(model_dir)
    dtype = token_dtype(len(tokenizer))
    encode = encoder(tokenizer)
    info: dict = {"documents": 0, "vocab_size": len(tokenizer)}
    if shard[1] > 1:
        info["shard"] = [shard[0] + 1, shard[1]]

    def stream() -> Iterator[np.ndarray]:
        chars = 0
        for batch in text_batches(texts, rows):
            info["documents"] += len(batch)
            chars += sum(map(len, batch))
            yield flatten(encode(batch), dtype)
        if chars == 0:
            what = f"shard {shard[0] + 1} of {shard[1]}" if shard[1] > 1 else "the corpus"
            raise UserError(str(texts), f"{what} has no text (rows {rows[0]}-{rows[1] - 1} are empty)")

    return write_blocks(out, stream(), block, dtype, info, str(texts), cut=shard[1] == 1)


def gather(shards: list[str | Path], out: str | Path, where: str) -> dict:
    """Concatenate the shards' token streams in order and cut them into blocks once: the same
    blocks, in the same order, with the same leftover, as tokenizing in one job."""
    indexes = [read_index(s, stream=True) for s in shards]
    first = indexes[0]
    for s, index in zip(shards, indexes):
        if (index["dtype"], index["block_length"]) != (first["dtype"], first["block_length"]):
            raise UserError(str(s), "was tokenized differently from the other shards", "rerun the tokenize step")
    numbers = [tuple(index.get("shard", (1, 1))) for index in indexes]
    if numbers != [(i + 1, len(shards)) for i in range(len(shards))]:
        raise UserError(where, f"shards {numbers} are not 1..{len(shards)} of {len(shards)} in order")
    dtype = np.dtype(first["dtype"])
    info = {
        "documents": sum(i["documents"] for i in indexes),
        "vocab_size": first.get("vocab_size"),
        "shards": len(shards),
    }

    def stream() -> Iterator[np.ndarray]:
        for s in shards:
            with open(Path(s) / TOKENS, "rb") as f:  # read, not mapped: the job's memory stays flat
                while len(part := np.fromfile(f, dtype=dtype, count=COPY_TOKENS)):
                    yield part

    return write_blocks(out, stream(), first["block_length"], dtype, info, where)


# --- reading blocks --------------------------------------------------------------------------


def read_index(path: str | Path, stream: bool = False) -> dict:
    """A block folder's index, checked against its token file (a stale or cut-off file is refused)."""
    path = Path(path)
    if not (path / INDEX).is_file():
        raise UserError(
            str(path), f"no {INDEX}: not a block folder written by the tokenize step", "rerun the tokenize step"
        )
    index = read_json(path / INDEX)
    if index.get("format") != FORMAT or bool(index.get("stream")) != stream:
        raise UserError(
            str(path / INDEX),
            f"format {index.get('format')!r} (stream {index.get('stream')}) "
            f"is not {FORMAT!r}" + (" (stream)" if stream else ""),
            "rerun the tokenize step",
        )
    size = (path / TOKENS).stat().st_size if (path / TOKENS).is_file() else -1
    expected = index["tokens"] * np.dtype(index["dtype"]).itemsize
    if size != expected:
        raise UserError(
            str(path / TOKENS), f"holds {size} bytes where {INDEX} says {expected}", "rerun the tokenize step"
        )
    return index


def read_blocks(path: str | Path) -> np.ndarray:
    """The blocks (n x block length) as a read-only memory map: nothing is read until rows are indexed."""
    index = read_index(path)
    return np.memmap(
        Path(path) / TOKENS, dtype=index["dtype"], mode="r", shape=(index["blocks"], index["block_length"])
    )
