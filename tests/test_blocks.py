"""Corpora of any size: prepared and tokenized in bounded memory, packed into the same blocks as all at
once, read lazily by pretraining; a shard without text, a corpus under one block and a full disk are
one-line errors that leave nothing partial behind (dapt/tokenize/blocks.py, dapt.data.prepare.prepare_corpus)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import REPO, make_workdir, minilm_dir, run_snakemake, tiny_config

from dapt.core.errors import UserError
from dapt.data import prepare as data
from dapt.data import readers as tables
from dapt.pretrain.mlm import apply_masking, mask_tokens, masking_draws
from dapt.pretrain.pretraining import read_data
from dapt.tokenize import blocks, corpus_texts

IMDB_SAMPLE = REPO / "tests" / "data" / "imdb_sample.jsonl"


@pytest.fixture(scope="module")
def tokenizer():
    from dapt.data.model_store import load_tokenizer

    return load_tokenizer(minilm_dir())


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return pd.read_json(IMDB_SAMPLE, lines=True)["review"].str.strip().tolist()


def write_texts(path: Path, texts: list, row_group: int = 7) -> Path:
    """A corpus parquet file as prepare_corpus writes one, in small row groups (many record batches)."""
    table = pa.table({"id": [f"c-{i}" for i in range(len(texts))], "text": pa.array(texts, pa.string())})
    pq.write_table(table, path, row_group_size=row_group)
    return path


def old_blocks(tokenizer, texts: list[str], block: int) -> tuple[np.ndarray, int]:
    """The packing before streaming (dapt/tokenize/tasks.py until 2026-12-01): every text through the
    tokenizer's __call__, flattened by a Python generator, cut once."""
    ids = tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    flat = np.fromiter((t for seq in ids for t in seq), dtype=np.int32)
    n = len(flat) // block
    return flat[: n * block].reshape(n, block), int(len(flat) - n * block)


def leftovers(out: Path) -> list[str]:
    """What a write left beside its output: temporaries of the atomic rename."""
    return [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")] if out.parent.exists() else []


# --- packing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [1, 5, 64])
@pytest.mark.parametrize("batch", [1, 2, 3, 7, 100])
def test_packing_by_batches_with_carry_equals_packing_at_once(block, batch):
    rng = np.random.default_rng(block * 1000 + batch)
    sequences = [rng.integers(0, 30000, rng.integers(0, 40)).tolist() for _ in range(60)]
    whole, rest = blocks.pack_blocks(sequences, block)
    packer = blocks.Packer(block, np.uint16)
    parts = [packer.add(blocks.flatten(sequences[i : i + batch], np.uint16)) for i in range(0, len(sequences), batch)]
    assert np.array_equal(np.concatenate(parts), whole) and packer.left_over == rest
    assert len(whole) * block + rest == sum(map(len, sequences))


def test_streamed_blocks_equal_the_old_packing_of_real_text(tokenizer, texts, tmp_path, monkeypatch):
    """Batches of ~2,000 characters (a document or two each), record batches of 7 rows: the blocks,
    their order and the leftover are those of tokenizing and packing everything at once."""
    monkeypatch.setattr(corpus_texts, "BATCH_CHARS", 2000)
    corpus = write_texts(tmp_path / "corpus.parquet", texts)
    index = blocks.tokenize_corpus(corpus, minilm_dir(), 64, tmp_path / "b")
    expected, rest = old_blocks(tokenizer, texts, 64)
    got = blocks.read_blocks(tmp_path / "b")
    assert isinstance(got, np.memmap) and got.dtype == np.uint16  # MiniLM's 30,522 ids fit
    assert np.array_equal(got, expected)
    assert index == blocks.read_index(tmp_path / "b") and index["blocks"] == len(expected)
    assert (index["documents"], index["tokens"], index["tokens_left_over"]) == (60, expected.size, rest)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["index.json", "tokens.bin"]


@pytest.mark.parametrize("shards", [2, 3, 7])
def test_shards_gather_into_the_blocks_of_one_job(texts, tmp_path, shards):
    corpus = write_texts(tmp_path / "corpus.parquet", texts)
    one = blocks.tokenize_corpus(corpus, minilm_dir(), 64, tmp_path / "one")
    parts = [tmp_path / f"{k + 1}-of-{shards}" for k in range(shards)]
    for k, part in enumerate(parts):
        assert blocks.tokenize_corpus(corpus, minilm_dir(), 64, part, shard=(k, shards))["stream"]
    gathered = blocks.gather(parts, tmp_path / "all", str(corpus))
    assert (tmp_path / "all" / "tokens.bin").read_bytes() == (tmp_path / "one" / "tokens.bin").read_bytes()
    assert gathered == {**one, "shards": shards}
    with pytest.raises(UserError, match="not 1..3 of 3 in order"):
        blocks.gather([parts[1], parts[0], parts[2]] if shards == 3 else parts[:1] * 3, tmp_path / "x", "c")


# --- bad input -------------------------------------------------------------------------------


def test_a_corpus_smaller_than_one_block_is_one_line_and_leaves_nothing(tmp_path):
    corpus = write_texts(tmp_path / "tiny.parquet", ["a short review .", "another ."])
    with pytest.raises(UserError, match=r"tiny.parquet: 2 texts make no full block of 64 tokens \(use more text"):
        blocks.tokenize_corpus(corpus, minilm_dir(), 64, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path / "out")


@pytest.mark.parametrize(
    "texts, shard, message",
    [
        (["one document", "two"], (0, 3), "shard 1 of 3 has no documents: the corpus has 2 (lower corpora"),
        (["some text", "", ""], (1, 2), "shard 2 of 2 has no text (rows 1-2 are empty)"),
        (["some text", None], (0, 1), "text: row 1 has no text (null)"),
        ([], (0, 1), "has no documents: the corpus has 0"),
    ],
)
def test_a_shard_without_text_is_one_line(tmp_path, texts, shard, message):
    corpus = write_texts(tmp_path / "c.parquet", texts)
    with pytest.raises(UserError) as info:
        blocks.tokenize_corpus(corpus, minilm_dir(), 8, tmp_path / "out", shard=shard)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path / "out")


def test_texts_without_a_text_column_are_refused(tmp_path):
    pq.write_table(pa.table({"review": ["x"]}), tmp_path / "c.parquet")
    with pytest.raises(UserError, match="c.parquet: text: no string column 'text'"):
        blocks.tokenize_corpus(tmp_path / "c.parquet", minilm_dir(), 8, tmp_path / "out")


class FullDisk:
    """A file whose writes fail with ENOSPC once `room` bytes are written, as on a full disk."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        if size > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= size
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_a_disk_that_fills_mid_write_leaves_nothing_and_the_rerun_completes(texts, tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_texts, "BATCH_CHARS", 3000)  # many writes; the disk fills after the first few
    corpus = write_texts(tmp_path / "corpus.parquet", texts)
    out = tmp_path / "mlm" / "dapt-c.L64"
    monkeypatch.setattr(blocks, "open", lambda path, mode: FullDisk(open(path, mode), 10_000), raising=False)
    with pytest.raises(UserError) as info:
        blocks.tokenize_corpus(corpus, minilm_dir(), 64, out)
    assert str(info.value).startswith(f"{out}: cannot write the blocks: No space left on device (free disk space")
    assert not out.exists() and not leftovers(out)
    # a kill mid-write leaves its temporary; the rerun removes it and writes the whole output
    monkeypatch.undo()
    (out.parent / f".{out.name}.killed.tmp" / out.name).mkdir(parents=True)
    index = blocks.tokenize_corpus(corpus, minilm_dir(), 64, out)
    assert index["blocks"] == len(blocks.read_blocks(out)) > 100 and not leftovers(out)


def test_a_real_full_filesystem(texts, tmp_path):
    """A 16 KiB tmpfs (root only): the 2-byte tokens of 60 reviews (51 KB) do not fit."""
    mount = tmp_path / "small"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        corpus = write_texts(tmp_path / "corpus.parquet", texts)
        with pytest.raises(UserError, match="No space left on device"):
            blocks.tokenize_corpus(corpus, minilm_dir(), 64, mount / "out")
        assert list(mount.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_cut_off_token_file_is_refused(texts, tmp_path):
    blocks.tokenize_corpus(write_texts(tmp_path / "c.parquet", texts), minilm_dir(), 64, tmp_path / "b")
    tokens = tmp_path / "b" / "tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:-2])
    with pytest.raises(UserError, match=r"tokens.bin: holds \d+ bytes where index.json says \d+"):
        blocks.read_blocks(tmp_path / "b")
    with pytest.raises(UserError, match="no index.json"):
        blocks.read_blocks(tmp_path)


# --- preparing a corpus in chunks ------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "txt", "parquet"])
def test_a_corpus_prepared_in_chunks_equals_the_whole_table(tmp_path, monkeypatch, texts, fmt):
    texts = [t.replace("\n", " ") for t in texts] + ["  padded  ", "ünïcode \u2028 line"]
    path = tmp_path / f"docs.{fmt}"
    frame = pd.DataFrame({"body": texts})
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif fmt == "txt":
        path.write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    else:
        frame.to_parquet(path)
    source = {"kind": "local", "path": str(path), **({} if fmt == "txt" else {"columns": {"text": "body"}})}
    whole = tables.load_source(source, "corpora.c.source", tmp_path, id_prefix="c", with_label=False)
    monkeypatch.setattr(tables, "CHUNK_ROWS", 7)
    summary = data.prepare_corpus({"source": source, "max_docs": 55}, "c", tmp_path / "c.parquet", tmp_path)
    assert pq.ParquetFile(tmp_path / "c.parquet").num_row_groups == 8  # 7 rows each: streamed
    assert pq.read_table(tmp_path / "c.parquet").to_pydict() == whole.head(55)[["id", "text"]].to_dict("list")
    assert summary["docs"] == 55 and summary["chars"] == int(whole["text"].head(55).str.len().sum())


def test_empty_texts_and_duplicate_ids_across_chunks_read_as_for_a_whole_table(tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "CHUNK_ROWS", 4)
    rows = [(f"d{i}", f"text {i}") for i in range(20)]
    rows[2], rows[13] = ("d2", " "), ("d13", "")
    path = tmp_path / "d.csv"
    pd.DataFrame(rows, columns=["id", "text"]).to_csv(path, index=False)
    with pytest.raises(UserError, match=r"d.csv: 2 of 20 rows have an empty text \(ids: d2, d13\) \(remove"):
        data.prepare_corpus({"source": {"kind": "local", "path": str(path)}}, "c", tmp_path / "c.parquet")
    rows[2], rows[13] = ("d2", "x"), ("d13", "y")
    rows[9] = rows[17] = rows[18] = ("d1", "z")  # far apart: different chunks
    pd.DataFrame(rows, columns=["id", "text"]).to_csv(path, index=False)
    with pytest.raises(UserError, match=r"d.csv: 3 duplicate ids \(e.g. d1\) \(map corpora.c.source.columns.id"):
        data.prepare_corpus({"source": {"kind": "local", "path": str(path)}}, "c", tmp_path / "c.parquet")
    assert not (tmp_path / "c.parquet").exists() and not leftovers(tmp_path / "c.parquet")


# --- pretraining reads its rows only ---------------------------------------------------------


def test_each_rank_masks_its_own_rows_as_the_whole_batch_would(tokenizer, texts, tmp_path):
    blocks.tokenize_corpus(write_texts(tmp_path / "c.parquet", texts), minilm_dir(), 32, tmp_path / "b")
    mlm = read_data(str(tmp_path / "b"), tokenizer)
    idx = torch.randperm(len(mlm.blocks), generator=torch.Generator().manual_seed(0))[:10]
    ids, special = mlm.rows(idx)
    assert ids.dtype == torch.long and torch.equal(
        ids, torch.from_numpy(np.asarray(mlm.blocks)[idx.numpy()].astype(np.int64))
    )
    whole = mask_tokens(ids, special, 0.15, mlm.mask_id, mlm.vocab_size, torch.Generator().manual_seed(5))
    draws = masking_draws(ids.shape, mlm.vocab_size, torch.Generator().manual_seed(5))
    for rank in range(3):  # three ranks, each with every third row
        mine = torch.arange(10)[rank::3]
        part = apply_masking(*mlm.rows(idx[mine]), tuple(d[mine] for d in draws), 0.15, mlm.mask_id)
        assert all(torch.equal(p, w[mine]) for p, w in zip(part, whole))
    assert (whole[1] != -100).any()


# --- the workflow ----------------------------------------------------------------------------


def test_corpus_shards_in_the_workflow_give_the_blocks_of_one_job(tmp_path):
    """`corpora.imdb.shards: 2`: two shard jobs and a gather; the same block folder as in-process,
    and the shard folders are removed once gathered."""
    config = tiny_config()
    config["corpora"]["imdb"]["shards"] = 2
    workdir = make_workdir(tmp_path / "study", config)
    target = "results/tokenized/tiny/mlm/dapt-imdb.L64"
    proc = run_snakemake(workdir, target)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("rule tokenize_corpus_shard:") == 2
    direct = tmp_path / "direct"
    blocks.tokenize_corpus(workdir / "results/data/corpora/imdb.parquet", workdir / "results/models/tiny", 64, direct)
    assert (workdir / target / "tokens.bin").read_bytes() == (direct / "tokens.bin").read_bytes()
    index = json.loads((workdir / target / "index.json").read_text())
    assert index["shards"] == 2 and index["documents"] == 60
    assert not (workdir / f"{target}.shards").exists() or not any((workdir / f"{target}.shards").iterdir())


def test_the_tokenize_script_names_a_bad_shard_argument(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "tokenize_data.py"),
            "--model",
            minilm_dir(),
            "--max-length",
            "64",
            "--texts",
            "x.parquet",
            "--shard",
            "4/3",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        "error: --shard: '4/3' is not K/N with 1 <= K <= N"
    )
