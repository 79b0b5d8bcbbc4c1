"""The benchmark's model and data prepared as the study prepares them, and its runtime as the study resolves it."""

from __future__ import annotations

import importlib
import json
import logging
import os
import warnings
from pathlib import Path


def quiet_transformers() -> None:
    import datasets
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")
    logging.getLogger("dapt").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def prepare_inputs(cfg: dict, args, work: Path) -> dict:
    from dapt.data.model_store import prepare_model
    from dapt.data.prepare import prepare_corpus, prepare_task
    from dapt.tokenize.blocks import tokenize_corpus
    from dapt.tokenize.tasks import tokenize_task_dir

    corpus = args.corpus or next(iter(cfg["corpora"]))
    task = args.task or next(iter(cfg["tasks"]))
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache_dir).resolve()
    corpus_spec = dict(cfg["corpora"][corpus])
    if args.max_docs:
        corpus_spec["max_docs"] = args.max_docs
    corpus_pq = data / f"{corpus}.docs{args.max_docs or 'all'}.parquet"
    if not corpus_pq.exists():
        prepare_corpus(corpus_spec, corpus, corpus_pq, cache_dir=cache)
    task_spec = dict(cfg["tasks"][task])
    if args.ft_train_examples:
        task_spec["max_examples"] = {**(task_spec.get("max_examples") or {}), "train": args.ft_train_examples}
    task_dir = data / f"{task}.split{cfg.get('split_seed', 0)}.train{args.ft_train_examples or 'all'}"
    if not (task_dir / "test.parquet").exists():
        prepare_task(task_spec, task, task_dir, cfg.get("split_seed", 0), cache_dir=cache)

    model_dir = Path(args.model_dir).resolve()
    if args.random_init:
        tiny = work / "model-random"
        if not (tiny / "config.json").exists():
            prepare_model(
                {"source": {"kind": "local", "path": str(model_dir)}, "random_init": json.loads(args.random_init)},
                "bench",
                tiny,
            )
        model_dir = tiny

    tok = work / "tokenized" / model_dir.name
    train_pq, held_pq = split_held_out(corpus_pq, model_dir, args.eval_blocks, args.seq_len, tok)
    blocks, held_blocks = (tok / f"{pq.stem}.blocks" for pq in (train_pq, held_pq))
    for pq, out in ((train_pq, blocks), (held_pq, held_blocks)):
        if not out.exists():
            tokenize_corpus(str(pq), str(model_dir), args.seq_len, str(out))
    task_tok = tok / f"{task_dir.name}.L{args.ft_max_length}"
    if not (task_tok / "test.parquet").exists():
        tokenize_task_dir(str(task_dir), str(model_dir), args.ft_max_length, str(task_tok))
    return {
        "corpus": corpus,
        "task": task,
        "corpus_pq": corpus_pq,
        "train_pq": train_pq,  # what both sides pretrain on: the corpus less the held-out documents
        "held_pq": held_pq,
        "held_blocks": held_blocks,  # the held-out documents' blocks: the held-out MLM loss's
        "task_dir": task_dir,
        "model_dir": model_dir,
        "blocks": blocks,
        "task_tok": task_tok,
    }


def split_held_out(corpus_pq: Path, model_dir: Path, n_blocks: int, block: int, out: Path) -> tuple[Path, Path]:
    """The corpus split by document: its last documents, just enough for `n_blocks` blocks of `block`
    tokens, held out for the held-out MLM loss, and the rest, which both sides pretrain on (parquet
    files in `out`, named by the corpus, model folder, blocks and block length)."""
    import pandas as pd

    from dapt.data.model_store import load_tokenizer
    from dapt.tokenize.blocks import encoder

    stem = f"{corpus_pq.stem}.held{n_blocks}x{block}"
    train_pq, held_pq = out / f"{stem}.train.parquet", out / f"{stem}.held.parquet"
    if train_pq.exists() and held_pq.exists():
        return train_pq, held_pq
    docs = pd.read_parquet(corpus_pq)
    encode = encoder(load_tokenizer(model_dir))
    need, cut = n_blocks * block, len(docs)
    while need > 0 and cut > 1:  # from the last document back, the training side keeping one at least
        cut -= 1
        need -= len(encode([docs["text"].iloc[cut]])[0])
    if need > 0:
        raise SystemExit(f"{corpus_pq}: too few tokens to hold out {n_blocks} blocks of {block} (--eval-blocks)")
    out.mkdir(parents=True, exist_ok=True)
    docs.iloc[:cut].to_parquet(train_pq, index=False)
    docs.iloc[cut:].to_parquet(held_pq, index=False)
    return train_pq, held_pq


def dapt_attr(name: str, *modules: str):
    """`name` from the first of `modules` that has it: the redesign (issue 11) moves functions between
    dapt's modules, and the benchmark should run on either side of a move."""
    error = None
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as err:
            error = err
    raise ImportError(f"{name} is in none of {', '.join(modules)}") from error


def make_runtime(precision: str):
    """A one-process runtime with the precision the study would resolve on this machine."""
    from dapt.runtime.context import Runtime
    from dapt.runtime.distributed import pick_device

    device = pick_device()
    chosen = dapt_attr("choose_precision", "dapt.runtime.precision", "dapt.runtime.devices")(precision, device)
    return Runtime(device=device, precision=chosen, rank=0, world_size=1)
