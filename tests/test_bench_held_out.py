"""bench/bench.py's held-out MLM loss: blocks of documents that neither side pretrains on, and both
sides (and the untrained start) scored on exactly the same masked inputs. Tiny: the test config's
60 IMDb reviews, MiniLM's tokenizer, a 2-layer random BERT, blocks of 32."""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd
import torch
from conftest import REPO, minilm_dir, tiny_base, tiny_config

sys.path.insert(0, str(REPO / "bench"))

from inputs import prepare_inputs  # noqa: E402
from pretrain_bench import held_out_losses, pretrain_data  # noqa: E402

BLOCK, HELD = 32, 4


class Recorder(torch.nn.Module):
    """A model that keeps every input it is given."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.seen = model, model.config, []

    def forward(self, input_ids):
        self.seen.append(input_ids.clone())
        return self.model(input_ids=input_ids)


def occurs_in(block: np.ndarray, stream: np.ndarray) -> bool:
    """Whether `block` is a run of `stream`, at any offset."""
    windows = np.lib.stride_tricks.sliding_window_view(stream, len(block))
    return bool((windows == block).all(axis=1).any())


def test_held_out_blocks_are_out_of_training_and_scored_alike(tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from dapt.tokenize.blocks import encoder

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    base = tiny_base(tmp_path, tok)
    cfg = tiny_config()
    for section in ("corpora", "tasks"):
        for spec in cfg[section].values():
            spec["source"]["path"] = str(REPO / spec["source"]["path"])
    args = argparse.Namespace(
        corpus="",
        task="",
        max_docs=0,
        cache_dir=str(tmp_path / "cache"),
        ft_train_examples=0,
        model_dir=str(base),
        random_init="",
        seq_len=BLOCK,
        eval_blocks=HELD,
        ft_max_length=48,
    )
    inp = prepare_inputs(cfg, args, tmp_path / "work")
    recipe_ds, ours_blocks, held = pretrain_data(inp, tok, args)

    # split by document: the held-out documents are the corpus's last, in no training file
    corpus = pd.read_parquet(inp["corpus_pq"])
    train, held_docs = pd.read_parquet(inp["train_pq"]), pd.read_parquet(inp["held_pq"])
    assert len(held_docs) >= 1 and len(train) + len(held_docs) == len(corpus) == 60
    assert list(train["id"]) + list(held_docs["id"]) == list(corpus["id"])
    assert not set(held_docs["text"]) & set(train["text"])
    # the held-out blocks are those documents' tokens, packed
    encode = encoder(tok)
    held_stream = np.concatenate([np.array(ids) for ids in encode(list(held_docs["text"]))])
    assert held.shape == (HELD, BLOCK) and (held.reshape(-1) == held_stream[: HELD * BLOCK]).all()
    # no held-out block is anywhere in either side's training tokens, at any offset
    ours_stream = np.asarray(ours_blocks).reshape(-1)
    recipe_stream = np.array([t for ids in recipe_ds["input_ids"] for t in ids])
    assert len(ours_stream) >= BLOCK * 12 and len(recipe_stream) >= BLOCK * 12
    for i, block in enumerate(held):
        assert not occurs_in(block, ours_stream), f"held-out block {i} is in our training blocks"
        assert not occurs_in(block, recipe_stream), f"held-out block {i} is in the recipe's training blocks"

    # every model is scored on the same held-out blocks with the same masks
    torch.manual_seed(1)
    other = AutoModelForMaskedLM.from_pretrained(base)
    for param in other.parameters():  # another model: other weights, the same inputs
        param.data.add_(0.1 * torch.randn_like(param))
    models = {
        "ours": Recorder(AutoModelForMaskedLM.from_pretrained(base)),
        "recipe": Recorder(other),
    }
    out = held_out_losses(held, models, tok)
    seen = {k: torch.cat(m.seen) for k, m in models.items()}
    assert seen["ours"].shape == (HELD, BLOCK) and torch.equal(seen["ours"], seen["recipe"])
    kept = (seen["ours"].numpy() == held).mean()  # 15% of the positions masked (special tokens never)
    assert 0.7 < kept < 0.95, kept
    assert out["held_out_inputs"]["ours"] == out["held_out_inputs"]["recipe"]
    assert out["held_out_blocks"] == HELD and out["held_out_loss"]["ours"] != out["held_out_loss"]["recipe"]
