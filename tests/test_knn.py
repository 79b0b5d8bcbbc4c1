"""kNN-TAPT: exact cosine neighbours in bounded batches, the selection step on a tiny encoder with a
real tokenizer, the variant spec's checks, and the example study's plan."""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, SNAKEMAKE, make_workdir, minilm_dir, run_snakemake, tiny_config

from dapt.core.errors import UserError
from dapt.pretrain import knn_selection as knn
from dapt.study import config as study
from dapt.study import layout, settings


def test_neighbours_equal_brute_force_cosine():
    """Against the whole cosine matrix, sorted (brute force), with unnormalised vectors."""
    rng = np.random.default_rng(0)
    queries, docs = rng.normal(size=(9, 16)) * 3, rng.normal(size=(53, 16)) * rng.uniform(0.1, 5, (53, 1))
    idx, sims = knn.nearest(queries, docs, k=5, doc_batch=7, query_batch=4)
    cosine = np.array([[q @ d / np.linalg.norm(q) / np.linalg.norm(d) for d in docs] for q in queries])
    expected = np.argsort(-cosine, axis=1, kind="stable")[:, :5]
    assert np.array_equal(idx, expected)
    np.testing.assert_allclose(sims, np.take_along_axis(cosine, expected, axis=1), atol=1e-6)
    assert np.all(np.diff(sims, axis=1) <= 0)  # nearest first


@pytest.mark.parametrize("doc_batch, query_batch", [(1, 1), (3, 2), (10, 7), (17, 100)])
def test_batching_gives_the_result_of_one_batch(doc_batch, query_batch):
    """Chunks of documents and batches of queries change nothing, ties included (equal documents: the
    lower number first)."""
    rng = np.random.default_rng(1)
    docs = rng.normal(size=(40, 8))
    docs[[11, 25, 39]] = docs[4]  # four equal documents
    queries = np.vstack([rng.normal(size=(12, 8)), docs[4]])
    whole = knn.nearest(queries, docs, k=6, doc_batch=len(docs), query_batch=len(queries))
    parts = knn.nearest(queries, docs, k=6, doc_batch=doc_batch, query_batch=query_batch)
    assert np.array_equal(whole[0], parts[0]) and np.allclose(whole[1], parts[1], atol=1e-6)
    assert list(whole[0][-1, :4]) == [4, 11, 25, 39]


def test_the_selection_is_the_union_each_document_once():
    neighbours = np.array([[3, 1, 7], [1, 3, 2], [9, 7, 1]])
    docs, hits = knn.selected_documents(neighbours)
    assert list(docs) == [1, 2, 3, 7, 9] and list(hits) == [3, 1, 2, 2, 1]
    with pytest.raises(ValueError):
        knn.NearestDocs(np.ones((2, 3)), k=0)


# --- the selection step on a tiny encoder --------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-layer BERT with MiniLM's real tokenizer; a task of 12 training sentences; a corpus of 30
    reviews, one of them twice and one repeating a training sentence."""
    import torch
    from transformers import BertConfig, BertModel

    from dapt.data.model_store import load_tokenizer

    root = tmp_path_factory.mktemp("knn")
    tok = load_tokenizer(minilm_dir())
    torch.manual_seed(0)
    model = BertModel(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
            initializer_range=0.2,
        )
    )
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    sentences = pd.read_csv(REPO / "tests" / "data" / "rt_sample.csv")["sentence"].tolist()
    (root / "task").mkdir()
    pd.DataFrame({"id": range(12), "text": sentences[:12], "label": ["pos"] * 12}).to_parquet(
        root / "task" / "train.parquet", index=False
    )
    reviews = pd.read_json(REPO / "tests" / "data" / "imdb_sample.jsonl", lines=True)["review"].tolist()[:28]
    corpus = reviews + [reviews[5], sentences[3]]
    pd.DataFrame({"id": range(len(corpus)), "text": corpus}).to_parquet(root / "corpus.parquet", index=False)
    return root


@pytest.fixture(scope="module")
def runtime():
    from dapt.runtime.context import setup_runtime

    return setup_runtime(0, "fp32", threads=1)


PARAMS = {"max_length": 64, "batch_size": 5, "chunk_docs": 1000, "query_batch": 1000}


def test_mean_pooling_ignores_padding_and_gives_unit_vectors(tiny, runtime):
    encode = knn.Encoder(tiny / "model", runtime, max_length=64, batch_size=4)
    texts = ["a fine film .", "a long , long , long and very winding story about nothing much at all ."]
    alone, together = encode(texts[:1]), encode(texts)
    np.testing.assert_allclose(alone[0], together[0], atol=1e-5)  # padded beside a longer text: same vector
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1, atol=1e-5)
    assert not np.allclose(together[0], together[1])


def test_selection_step_writes_task_text_and_each_chosen_document_once(tiny, runtime, tmp_path):
    summary = knn.select(tiny / "task", tiny / "corpus.parquet", tiny / "model", 4, tmp_path / "sel", PARAMS, runtime)
    out = tmp_path / "sel"
    table = pd.read_parquet(out / "train.parquet")
    pairs = pd.read_parquet(out / "neighbours.parquet")
    assert json.loads((out / "selection.json").read_text()) == json.loads(json.dumps(summary))
    assert table["text"].tolist()[:12] == pd.read_parquet(tiny / "task" / "train.parquet")["text"].tolist()
    chosen = sorted(set(pairs["doc"]))
    assert summary["selected"] == len(chosen) and summary["pairs"] == len(pairs) == 12 * 4
    written = table[table["source"] == "corpus"]
    dropped = summary["duplicates_dropped"]
    assert summary["documents_written"] == len(written) == len(chosen) - sum(dropped.values())
    assert written["text"].is_unique and not set(written["text"]) & set(table["text"][:12])
    assert dropped["same_text_as_another_document"] == int({5, 28} <= set(chosen))
    assert dropped["same_text_as_a_training_example"] == int(29 in chosen)
    assert set(written["doc"]) <= set(chosen) and list(written["doc"]) == sorted(written["doc"])
    assert len(summary["examples"]) == 3 and all(e["neighbour"] for e in summary["examples"])
    assert 0 < summary["selected_fraction"] <= 1 and summary["corpus_documents"] == 30


def test_selection_in_small_chunks_equals_one_chunk(tiny, runtime, tmp_path):
    knn.select(tiny / "task", tiny / "corpus.parquet", tiny / "model", 3, tmp_path / "a", PARAMS, runtime)
    small = {**PARAMS, "chunk_docs": 7, "query_batch": 5, "batch_size": 2}
    knn.select(tiny / "task", tiny / "corpus.parquet", tiny / "model", 3, tmp_path / "b", small, runtime)
    a, b = (pd.read_parquet(tmp_path / d / "neighbours.parquet") for d in "ab")
    assert a["doc"].tolist() == b["doc"].tolist()
    np.testing.assert_allclose(a["similarity"], b["similarity"], atol=1e-5)


def test_k_beyond_the_corpus_is_one_line_and_writes_nothing(tiny, runtime, tmp_path):
    with pytest.raises(
        UserError, match=r"^variants: k = 31 but corpus corpus has only 30 documents \(use a smaller k\)$"
    ):
        knn.select(tiny / "task", tiny / "corpus.parquet", tiny / "model", 31, tmp_path / "sel", PARAMS, runtime)
    assert not (tmp_path / "sel").exists()


# --- the variant spec -----------------------------------------------------------------------------


def knn_config(stage: str) -> dict:
    config = tiny_config()
    config["variants"] = {"base": [], "knn": [stage]}
    return config


@pytest.mark.parametrize(
    "stage, message",
    [
        ("tapt_knn:imdb:0", "k must be a whole number >= 1 in 'tapt_knn:imdb:0'"),
        ("tapt_knn:imdb:-3", "k must be a whole number >= 1 in 'tapt_knn:imdb:-3'"),
        ("tapt_knn:imdb:many", "k must be a whole number >= 1"),
        ("tapt_knn:wiki:5", "unknown corpus 'wiki' in 'tapt_knn:wiki:5' (known corpora: imdb)"),
        (
            "tapt_knn:imdb",
            "'tapt_knn:imdb' is not a pretraining stage (use dapt:<corpus>, dapt, tapt or tapt_knn:<corpus>:<k>)",
        ),
    ],
)
def test_bad_knn_stages_are_one_line_config_errors(stage, message):
    with pytest.raises(UserError) as err:
        study.validate_config(knn_config(stage), "study.yaml")
    text = str(err.value)
    assert text.startswith("study.yaml: variants.knn[0]: ") and message in text and "\n" not in text


def test_knn_stage_names_settings_and_folders():
    config = knn_config("tapt_knn:imdb:050")
    study.validate_config(config, "study.yaml")
    chain = study.chain_for(config, "knn", "rt_polarity")
    assert chain == "tapt_knn-rt_polarity-imdb-k50"
    assert re.fullmatch(layout.STAGE_WILDCARD, chain) and re.fullmatch(layout.CHAIN_WILDCARD, f"dapt-imdb+{chain}")
    assert study.mlm_params(config, chain) == study.mlm_params(config, "tapt-rt_polarity")  # TAPT's settings
    config["pretrain"]["tapt_knn"] = {"max_steps": 7}
    assert study.mlm_params(config, chain)["max_steps"] == 7
    assert (
        layout.KNN_SELECTION.format(model="m", **settings.selection_of(chain)) == "results/knn/m/rt_polarity/imdb-k50"
    )
    del config["pretrain"]["tapt_knn"], config["pretrain"]["tapt"]
    with pytest.raises(UserError, match="pretrain.tapt_knn: missing"):
        study.validate_config(config, "study.yaml")


def test_example_study_plans_one_selection_shared_by_seeds():
    """config/examples/knn_tapt.yaml: the default study's variants plus kNN-TAPT, full fine-tuning, 3
    seeds; one selection job, pretrained once, its chain in the report's inputs."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            *SNAKEMAKE,
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            tmp,
            "--configfile",
            str(REPO / "config" / "examples" / "knn_tapt.yaml"),
            "--cores",
            "2",
            "-n",
            "-p",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[-1], re.M))
    config = study.read_yaml(REPO / "config" / "examples" / "knn_tapt.yaml")
    assert int(counts["select_knn"]) == 1
    assert int(counts["pretrain"]) == len(config["variants"]) - 1
    assert int(counts["finetune"]) == len(config["variants"]) * len(config["seeds"])
    assert "--knn results/knn/minilm/rt_polarity/imdb-k" in out  # the report reads the selection


def test_knn_variant_through_the_workflow(tmp_path):
    """The tiny study cut to a kNN-TAPT variant: selection, tokenization, pretraining, one run, the report's notes."""
    config = knn_config("tapt_knn:imdb:2")
    config["variants"] = {"knn": ["tapt_knn:imdb:2"]}
    config["tasks"]["rt_polarity"]["max_examples"] = {"train": 20}  # 20 queries x k 2 < the 60 reviews
    config.update(
        methods={"full": {}},
        seeds=[1],
        finetune={**config["finetune"], "epochs": 1},
        knn={"max_length": 64, "batch_size": 16},
    )
    workdir = make_workdir(tmp_path, config)
    proc = run_snakemake(workdir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    selection = json.loads((workdir / "results/knn/tiny/rt_polarity/imdb-k2/selection.json").read_text())
    summary = json.loads((workdir / "results/pretrain/tiny/tapt_knn-rt_polarity-imdb-k2/summary.json").read_text())
    blocks = json.loads(
        (workdir / "results/tokenized/tiny/mlm/tapt_knn-rt_polarity-imdb-k2.L32/index.json").read_text()
    )
    assert summary["steps"] >= 1 and blocks["documents"] == selection["texts"]
    assert 0 < selection["selected"] < selection["corpus_documents"]
    notes = (workdir / "results/report/notes.md").read_text()
    assert "## kNN-TAPT selections" in notes
    assert f"{selection['selected']} of {selection['corpus_documents']}" in notes
    assert selection["examples"][0]["query"][:40] in notes.replace("\\", "")
