"""Fine-tuning: ours vs the run_classification.py recipe, as run by default and tuned, interleaved step by step."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from inputs import dapt_attr, make_runtime
from recipes import group_by_length, quiet, recipe_classification_dataset, recipe_collator, training_args
from scheduler import TurnTaker, run_ticked, steady

SIDES = ("ours", "recipe", "recipe_tuned")  # fine-tuning and evaluation: recipe as run by default, and tuned


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
                label2id={label: i for i, label in enumerate(labels)},
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
