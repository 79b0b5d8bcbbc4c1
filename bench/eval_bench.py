"""Evaluation: predict_proba vs Trainer.predict on the same fine-tuned weights, interleaved batch by batch."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
from finetune_bench import SIDES, side_summary, speedups
from inputs import dapt_attr, make_runtime
from recipes import group_by_length, quiet, recipe_classification_dataset, recipe_collator, training_args
from scheduler import TurnTaker, totals


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
    rounds, samplers = [], {}
    for r in range(args.eval_repeats):
        models = {side: copy.deepcopy(source) for side in SIDES}  # same weights, own hooks
        tt = TurnTaker(vocab_size, tokenizer.pad_token_id)
        hooks = [m.register_forward_hook(lambda *a, tt=tt: tt.tick()) for m in models.values()]

        def recipe(tuned: bool, models: dict = models) -> np.ndarray:
            # tuned: the recipe's own --train_sampling_strategy group_by_length, which transformers 5's Trainer
            # also applies to evaluation (a LengthGroupedSampler): batches of similar lengths, less padding
            targs = training_args(
                tmp / "eval-recipe",
                args.precision,
                seed,
                per_device_eval_batch_size=bs,
                **(group_by_length() if tuned else {}),
            )
            trainer = Trainer(
                model=models["recipe_tuned" if tuned else "recipe"],
                args=targs,
                processing_class=tokenizer,
                data_collator=recipe_collator(tokenizer, tuned),
            )
            preds = np.asarray(quiet(trainer).predict(test_ds[tuned]).predictions)
            samplers["recipe_tuned" if tuned else "recipe"] = type(trainer._get_eval_sampler(test_ds[tuned])).__name__
            return in_dataset_order(trainer, test_ds[tuned], preds)

        jobs = {
            "ours": lambda models=models: predict_proba(
                models["ours"], test["input_ids"], tokenizer.pad_token_id, runtime, bs
            ),
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
    out = {"n_test": len(test["label"]), "batch_size": bs, "repeats": args.eval_repeats, "samplers": samplers}
    for side in SIDES:
        out.update(side_summary(rounds, side))
        out[f"{side}_f1"] = compute_metrics(test["label"], preds[side], labels)["macro_f1"]
    out["agreement"] = float((preds["ours"] == preds["recipe"]).mean())
    out["agreement_tuned"] = float((preds["ours"] == preds["recipe_tuned"]).mean())
    return {**out, **speedups(out)}


def in_dataset_order(trainer, dataset, preds: np.ndarray) -> np.ndarray:
    """Trainer.predict returns rows in its sampler's order; a length-grouped sampler permutes them (seeded,
    so the same permutation is drawn again here): back to the dataset's order, to score them."""
    sampler = trainer._get_eval_sampler(dataset)
    order = list(sampler) if sampler is not None else list(range(len(dataset)))
    if order == list(range(len(dataset))):
        return preds
    out = np.empty_like(preds)
    out[np.asarray(order)] = preds
    return out
