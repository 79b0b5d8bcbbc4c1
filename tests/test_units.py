"""Unit tests of the pure pieces: config names, tokenization, masking, the MLM loss, checkpoints."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, minilm_dir

from dapt.core.errors import UserError
from dapt.data.model_store import load_tokenizer
from dapt.finetune.metrics import compute_metrics
from dapt.pretrain.mlm import MaskedOnlyMLM, mask_tokens
from dapt.pretrain.pretraining import save_mlm_checkpoint
from dapt.runtime.batching import bucketed_batches, length_sorted_batches
from dapt.study import config as study
from dapt.tokenize.blocks import pack_blocks
from dapt.tokenize.tasks import tokenize_examples

DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


# --- config ---------------------------------------------------------------------------------


def test_chain_names_share_stages_across_variants():
    assert study.chain_for(DEFAULT, "base", "rt") == ""
    assert study.chain_for(DEFAULT, "dapt", "rt") == "dapt-imdb"
    assert study.chain_for(DEFAULT, "tapt", "rt") == "tapt-rt"
    assert study.chain_for(DEFAULT, "dapt_tapt", "rt") == "dapt-imdb+tapt-rt"
    assert study.split_chain("dapt-imdb+tapt-rt") == ("dapt-imdb", "tapt-rt")
    assert study.split_chain("dapt-imdb") == ("", "dapt-imdb")


def test_finetune_params_precedence():
    cfg = copy.deepcopy(DEFAULT)
    cfg["tasks"]["rt_polarity"]["finetune"] = {"lr": 1.0, "epochs": 7}
    cfg["tasks"]["rt_polarity"]["methods"] = {"lora": {"lr": 3.0}}
    full = study.finetune_params(cfg, "rt_polarity", "full")
    lora = study.finetune_params(cfg, "rt_polarity", "lora")
    assert full["lr"] == 1.0 and full["epochs"] == 7 and full["kind"] == "full"
    assert lora["lr"] == 3.0 and lora["epochs"] == 7 and lora["r"] == 8 and lora["kind"] == "lora"
    assert full["metric"] == "macro_f1" and full["max_length"] == 64


def test_default_config_is_valid_and_bad_ones_name_the_key():
    study.validate_config(DEFAULT, "config.yaml")
    bad = copy.deepcopy(DEFAULT)
    bad["variants"]["dapt"] = ["dapt:nope"]
    with pytest.raises(UserError, match=r"config.yaml: variants.dapt\[0\]: unknown corpus 'nope'"):
        study.validate_config(bad, "config.yaml")
    bad = copy.deepcopy(DEFAULT)
    bad["finetune"]["learning_rate"] = 1
    with pytest.raises(UserError, match="config.yaml: finetune"):
        study.validate_config(bad, "config.yaml")


# --- tokenization -----------------------------------------------------------------------------


def test_pack_blocks_concatenates_and_counts_the_rest():
    blocks, rest = pack_blocks([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4)
    assert blocks.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]] and rest == 1


def test_truncation_keeps_the_closing_token_and_is_counted():
    tok = load_tokenizer(minilm_dir())
    table, stats = tokenize_examples(["a", "b"], ["short", "a much longer sentence " * 10], [0, 1], tok, 8)
    ids = table.column("input_ids").to_pylist()
    assert len(ids[1]) == 8 and ids[1][-1] == tok.sep_token_id and ids[1][0] == tok.cls_token_id
    assert stats["truncated"] == 1 and len(ids[0]) < 8


# --- batching ---------------------------------------------------------------------------------


def test_bucketed_batches_cover_every_example_once_and_reduce_padding():
    lengths = np.random.default_rng(0).integers(5, 60, size=500)
    batches = bucketed_batches(lengths, 16, torch.Generator().manual_seed(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    random_order = np.random.default_rng(1).permutation(500)
    padded_random = sum(16 * lengths[random_order[i : i + 16]].max() for i in range(0, 500, 16))
    assert padded < 0.8 * padded_random
    again = bucketed_batches(lengths, 16, torch.Generator().manual_seed(0))
    assert all((a == b).all() for a, b in zip(batches, again))
    order = np.concatenate(length_sorted_batches(lengths.tolist(), 64))
    assert (np.diff(lengths[order]) >= 0).all()


def test_metrics_match_sklearn_definitions():
    m = compute_metrics(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]), ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["per_class"]["b"]["recall"] == 1.0


# --- masked language modelling ---------------------------------------------------------------


def test_masking_follows_bert_and_spares_special_tokens():
    ids = torch.randint(1000, 2000, (64, 128))
    ids[:, 0], ids[:, -1] = 101, 102
    special = (ids == 101) | (ids == 102)
    inputs, labels = mask_tokens(ids, special, 0.15, 103, 30522, torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert not chosen[special].any()
    assert 0.13 < chosen.float().mean() < 0.17
    assert (labels[chosen] == ids[chosen]).all()
    masked = (inputs == 103) & chosen
    assert 0.75 < masked.sum() / chosen.sum() < 0.85
    assert (inputs[~chosen] == ids[~chosen]).all()
    again, _ = mask_tokens(ids, special, 0.15, 103, 30522, torch.Generator().manual_seed(0))
    assert torch.equal(inputs, again)


def _tiny_bert(tmp_path, with_pooler_value: float = 0.5):
    from transformers import BertConfig, BertModel

    tok = load_tokenizer(minilm_dir())
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    base = BertModel(cfg)
    torch.nn.init.constant_(base.pooler.dense.weight, with_pooler_value)
    parent = tmp_path / "parent"
    base.save_pretrained(parent)
    tok.save_pretrained(parent)
    return parent, tok


def test_masked_only_loss_equals_the_full_vocabulary_loss(tmp_path):
    from transformers import AutoModelForMaskedLM

    parent, tok = _tiny_bert(tmp_path)
    model = AutoModelForMaskedLM.from_pretrained(parent).eval()
    ids = torch.randint(1000, 2000, (4, 32))
    inputs, labels = mask_tokens(
        ids,
        torch.zeros_like(ids, dtype=torch.bool),
        0.15,
        tok.mask_token_id,
        len(tok),
        torch.Generator().manual_seed(1),
    )
    ours = MaskedOnlyMLM(model)(inputs, labels)
    reference = model(input_ids=inputs, labels=labels).loss
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)


def test_pretrained_checkpoint_keeps_the_parent_pooler(tmp_path):
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    parent, _ = _tiny_bert(tmp_path, with_pooler_value=0.25)
    mlm = AutoModelForMaskedLM.from_pretrained(parent)
    out = tmp_path / "out"
    save_mlm_checkpoint(mlm, parent, parent, out)
    clf, info = AutoModelForSequenceClassification.from_pretrained(out, num_labels=2, output_loading_info=True)
    assert not any("pooler" in k for k in info["missing_keys"])
    assert torch.all(clf.bert.pooler.dense.weight == 0.25)
    # and the tied decoder is stored once, not twice
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert "cls.predictions.decoder.weight" not in set(f.keys())
