"""Pretraining: ours vs the run_mlm.py recipe, interleaved step by step with the matmul peak."""

from __future__ import annotations

import argparse
import hashlib
import statistics
from pathlib import Path

import numpy as np
import torch
from flops import peak_job, step_flops
from inputs import make_runtime
from recipes import quiet, recipe_mlm_dataset, training_args
from scheduler import TurnTaker, run_ticked, steady, totals

HELD_OUT_MASK_SEED = 12345  # the held-out blocks' masks: the same for every model scored


def mlm_eval_loss(
    model, blocks: np.ndarray, special_ids: list[int], mask_id: int, seed: int, batch: int = 16
) -> tuple[float, str]:
    """Standard full-logit MLM loss in fp32, eval mode, on fixed blocks with fixed masks (`seed`);
    and a digest of the masked inputs and labels it scored, the same for every model given the same blocks."""
    from dapt.pretrain.mlm import mask_tokens

    ids = torch.from_numpy(np.array(blocks)).long()  # a copy: a memory map is read-only
    special = torch.isin(ids, torch.tensor(special_ids))
    gen = torch.Generator().manual_seed(seed)
    inputs, labels = mask_tokens(ids, special, 0.15, mask_id, model.config.vocab_size, gen)
    digest = hashlib.sha256(inputs.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()[:16]
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
    return total / max(1, n), digest


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


def held_out_losses(held: np.ndarray, models: dict, tokenizer, seed: int = HELD_OUT_MASK_SEED) -> dict:
    """Quality: the standard full-logit MLM loss (fp32) of each model on the held-out blocks, blocks
    of documents neither side trained on (inputs.split_held_out), masked alike for every model (`seed`)."""
    special_ids = sorted(set(tokenizer.all_special_ids))
    scored = {k: mlm_eval_loss(m, held, special_ids, tokenizer.mask_token_id, seed) for k, m in models.items()}
    return {
        "held_out_loss": {k: loss for k, (loss, _) in scored.items()},
        "held_out_inputs": {k: digest for k, (_, digest) in scored.items()},
        "held_out_blocks": len(held),
    }


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


def pretrain_data(inp: dict, tokenizer, args: argparse.Namespace) -> tuple:
    """What each side trains on, both from the training documents (inputs.split_held_out): the
    recipe's group_texts dataset and our blocks; and the held-out blocks, of the other documents."""
    from dapt.tokenize.blocks import read_blocks

    recipe_ds = recipe_mlm_dataset(inp["train_pq"], tokenizer, args.seq_len)
    return recipe_ds, read_blocks(inp["blocks"]), np.array(read_blocks(inp["held_blocks"])[: args.eval_blocks])


def bench_pretrain(cfg: dict, args: argparse.Namespace, inp: dict, fp: dict, tmp: Path) -> dict:
    """Ours vs run_mlm.py, interleaved step by step with the matmul peak: speed, MFU, loss."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(inp["model_dir"]))
    params, warmup = mlm_params(cfg, args)
    recipe_ds, ours_blocks, held = pretrain_data(inp, tokenizer, args)
    tt = TurnTaker(fp["vocab_size"], tokenizer.pad_token_id, training_only=True)
    trained: dict = {}
    results = run_ticked(
        tt, pretrain_jobs(args, inp, params, warmup, tokenizer, recipe_ds, tt, tmp, trained), args.threads
    )
    trained["ours"] = AutoModelForMaskedLM.from_pretrained(str(tmp / "ours" / "model"))
    torch.manual_seed(args.seed_list[0])  # the untrained MLM head: the one both runs started from
    models = {"start": AutoModelForMaskedLM.from_pretrained(str(inp["model_dir"])), **trained}
    losses = {k: results[k] for k in ("ours", "recipe", "recipe_fp32") if k in results}
    return {
        "steps": args.pretrain_steps,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "ours_blocks": int(len(ours_blocks)),
        "recipe_blocks": len(recipe_ds),
        **pretrain_rates(tt, fp, results["peak"], args.precision),
        **loss_windows(losses),
        **held_out_losses(held, models, tokenizer),
    }
