"""Sequence-classification fine-tuning, full or parameter-efficient, with early stopping.

Batches are length-bucketed (shuffled chunks sorted by length) and padded per batch, so short texts
cost short sequences. The best epoch on the validation metric is kept, and what is saved is what the
method trains: the whole model for ``full``, the adapter (and classifier) for the others.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dapt.evaluate import collate, compute_metrics, predict_proba
from dapt.io import atomic_path, read_json, write_json
from dapt.tokenize import read_examples
from dapt.train import (Runtime, Timer, check_finite, clear_checkpoints, count_params,
                        linear_schedule, load_checkpoint, make_optimizer, peak_memory_mb, save_checkpoint,
                        trainable_state, unwrap)
from dapt.errors import UserError

PEFT_KINDS = ("lora", "adalora", "ia3", "prefix", "prompt")
METHOD_KEYS = ("kind", "r", "alpha", "dropout", "target_modules", "num_virtual_tokens", "reduction_factor", "placement")


def bucketed_batches(lengths: np.ndarray, batch_size: int, generator: torch.Generator, chunk: int = 50) -> list[np.ndarray]:
    """Shuffle, sort within chunks of `chunk` batches by length, then shuffle the batches."""
    order = torch.randperm(len(lengths), generator=generator).numpy()
    batches = []
    for start in range(0, len(order), batch_size * chunk):
        part = order[start : start + batch_size * chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    perm = torch.randperm(len(batches), generator=generator).numpy()
    return [batches[i] for i in perm]


def load_classifier(model_dir: str, labels: list[str]):
    from transformers import AutoModelForSequenceClassification

    model_dir = str(model_dir)
    config_path = Path(model_dir) / "config.json"
    remote = read_json(config_path).get("dapt_trust_remote_code", False) if config_path.exists() else False
    return AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={l: i for i, l in enumerate(labels)}, use_safetensors=True, trust_remote_code=remote)


def apply_method(model: torch.nn.Module, params: dict) -> torch.nn.Module:
    """Wrap or freeze the model for the method; returns the module to train."""
    kind = params["kind"]
    if kind == "full":
        return model
    if kind == "head":
        head = {n for n, _ in model.named_parameters() if not n.startswith(model.base_model_prefix + ".")}
        for n, p in model.named_parameters():
            p.requires_grad = n in head
        return model
    if kind == "adapter":
        from dapt.adapters import add_adapters

        return add_adapters(model, params.get("reduction_factor", 16), params.get("placement", "pfeiffer"))
    if kind in PEFT_KINDS:
        import peft

        task = peft.TaskType.SEQ_CLS
        if kind == "lora":
            config = peft.LoraConfig(task_type=task, r=params.get("r", 8), lora_alpha=params.get("alpha", 16),
                                     lora_dropout=params.get("dropout", 0.1), target_modules=params.get("target_modules"))
        elif kind == "adalora":
            config = peft.AdaLoraConfig(task_type=task, init_r=params.get("r", 12), target_r=max(1, params.get("r", 12) // 2),
                                        lora_alpha=params.get("alpha", 32), lora_dropout=params.get("dropout", 0.1),
                                        total_step=params["total_steps"], target_modules=params.get("target_modules"))
        elif kind == "ia3":
            config = peft.IA3Config(task_type=task, target_modules=params.get("target_modules"))
        elif kind == "prefix":
            config = peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=params.get("num_virtual_tokens", 20))
        else:
            config = peft.PromptTuningConfig(task_type=task, num_virtual_tokens=params.get("num_virtual_tokens", 20))
        return peft.get_peft_model(model, config)
    raise UserError(f"methods.{kind}", f"unknown method kind '{kind}'")


def save_artifact(model: torch.nn.Module, params: dict, labels: list[str], out_dir: Path) -> None:
    model = unwrap(model)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        kind = params["kind"]
        if kind == "full":
            model.save_pretrained(tmp)
        elif kind in PEFT_KINDS:
            model.save_pretrained(tmp)
        else:  # head, adapter: only what was trained
            save_file(trainable_state(model, only_trainable=True), str(tmp / "trainable.safetensors"))
        write_json(tmp / "method.json", {"method": {k: params[k] for k in METHOD_KEYS if k in params},
                                         "labels": labels, "total_steps": params.get("total_steps")})


def load_finetuned(artifact_dir: str, base_dir: str, labels: list[str]) -> tuple[torch.nn.Module, int]:
    """Rebuild the trained classifier from its artifact (and the base checkpoint it was trained from)."""
    from transformers import AutoTokenizer

    artifact = Path(artifact_dir)
    info = read_json(artifact / "method.json")
    params = info["method"]
    pad_id = AutoTokenizer.from_pretrained(str(base_dir)).pad_token_id
    if params["kind"] == "full":
        model = load_classifier(str(artifact), labels)
    elif params["kind"] in PEFT_KINDS:
        import peft

        model = peft.PeftModel.from_pretrained(load_classifier(base_dir, labels), str(artifact))
    else:
        model = apply_method(load_classifier(base_dir, labels), {**params, "total_steps": info.get("total_steps")})
        missing = set(load_file(str(artifact / "trainable.safetensors")))
        model.load_state_dict(load_file(str(artifact / "trainable.safetensors")), strict=False)
        if not missing:
            raise UserError(str(artifact), "no trained weights in the artifact")
    return model.eval(), pad_id


def finetune(base_dir: str, tokenized_dir: str, out_dir: str, ckpt_dir: str, params: dict, seed: int,
             runtime: Runtime, pretrain_info: dict | None = None) -> dict:
    from transformers import AutoTokenizer

    tok_dir = Path(tokenized_dir)
    labels = read_json(tok_dir / "labels.json")
    train, val = read_examples(tok_dir / "train.parquet"), read_examples(tok_dir / "validation.parquet")
    pad_id = AutoTokenizer.from_pretrained(str(base_dir)).pad_token_id
    lengths = np.array([len(x) for x in train["input_ids"]])

    batch, accum = params["batch_size"], params["grad_accum"]
    steps_per_epoch = -(-len(lengths) // batch)
    epochs = int(np.ceil(params["epochs"]))
    total = int(round(params["epochs"] * steps_per_epoch))
    params = {**params, "total_steps": total}

    torch.manual_seed(seed)
    model = apply_method(load_classifier(base_dir, labels), params).to(runtime.device)
    model.train()
    trainable, total_params = count_params(model)
    if trainable == 0:
        raise UserError(f"methods.{params['kind']}", "leaves no trainable parameters")
    train_model = model
    if runtime.world_size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = make_optimizer(list(model.named_parameters()), params["lr"], params["weight_decay"])
    scheduler = linear_schedule(optimizer, int(params["warmup_ratio"] * total), total)
    scaler = torch.amp.GradScaler(runtime.device.type) if runtime.precision.get("use_scaler") else None
    metric = params["metric"]

    state = {"step": 0, "best": -1.0, "best_epoch": 0, "bad_epochs": 0, "log": [], "epochs_run": 0, "losses": []}
    best_path = Path(ckpt_dir) / "best.safetensors"
    resumed = load_checkpoint(ckpt_dir, train_model, optimizer, scheduler, scaler=scaler)
    if resumed is not None:
        state = resumed
        print(f"resumed from checkpoint at step {state['step']}/{total}", flush=True)

    timer = Timer()
    losses = state["losses"]  # this epoch's step losses; part of the checkpoint so a resumed log matches
    while state["step"] < total and state["bad_epochs"] < params["patience"]:
        epoch, offset = divmod(state["step"], steps_per_epoch)
        batches = bucketed_batches(lengths, batch, torch.Generator().manual_seed(seed * 100_003 + epoch))
        for idx in batches[offset:]:
            if state["step"] >= total:
                break
            optimizer.zero_grad(set_to_none=True)
            shard = idx[runtime.rank :: runtime.world_size]
            micro = -(-len(shard) // accum)
            step_loss = 0.0
            for start in range(0, len(shard), micro):
                part = shard[start : start + micro]
                ids, mask = collate(train["input_ids"], part, pad_id)
                with runtime.autocast():
                    logits = train_model(input_ids=ids.to(runtime.device), attention_mask=mask.to(runtime.device)).logits
                loss = torch.nn.functional.cross_entropy(logits.float(), torch.from_numpy(train["label"][part]).to(runtime.device))
                check_finite(loss, f"finetune {params['kind']}", state["step"])
                scaled = loss * len(part) / len(shard)
                (scaler.scale(scaled) if scaler else scaled).backward()
                step_loss += scaled.item()
            if scaler:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), params["max_grad_norm"])
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if params["kind"] == "adalora":
                unwrap(model).base_model.update_and_allocate(state["step"])
            scheduler.step()
            state["step"] += 1
            losses.append(step_loss)
            end_of_epoch = state["step"] % steps_per_epoch == 0 or state["step"] == total
            if end_of_epoch:
                probs = predict_proba(model, val["input_ids"], pad_id, runtime, params["eval_batch_size"])
                scores = compute_metrics(val["label"], probs.argmax(1), labels)
                epoch_no = -(-state["step"] // steps_per_epoch)
                state["epochs_run"] = epoch_no
                state["log"].append([epoch_no, state["step"], float(np.mean(losses)) if losses else float("nan"),
                                     scores["accuracy"], scores["macro_f1"], scheduler.get_last_lr()[0]])
                print(f"epoch {epoch_no} step {state['step']}/{total} train_loss {state['log'][-1][2]:.4f} "
                      f"val_{metric} {scores[metric]:.4f} ({timer.seconds():.0f}s)", flush=True)
                losses.clear()
                if scores[metric] > state["best"]:
                    state.update(best=scores[metric], best_epoch=epoch_no, bad_epochs=0)
                    if runtime.is_main:
                        with atomic_path(best_path) as tmp:
                            save_file(trainable_state(model, only_trainable=True), str(tmp))
                else:
                    state["bad_epochs"] += 1
            if runtime.is_main and (end_of_epoch or state["step"] % params["save_steps"] == 0) and state["step"] < total:
                save_checkpoint(ckpt_dir, train_model, optimizer, scheduler, state, scaler=scaler)
            if state["bad_epochs"] >= params["patience"]:
                break

    if best_path.exists():
        unwrap(model).load_state_dict(load_file(str(best_path)), strict=False)
    summary = {"n_train": len(lengths), "n_validation": len(val["label"]), "train_steps": state["step"],
               "epochs_run": state["epochs_run"], "best_epoch": state["best_epoch"], "best_validation": state["best"],
               "trainable_params": trainable, "total_params": total_params,
               "trainable_pct": 100.0 * trainable / total_params, "peak_memory_mb": peak_memory_mb(runtime.device),
               "seconds": timer.seconds(), "pretrain": pretrain_info or {}, "params": params, **runtime.describe()}
    stats = read_json(tok_dir / "stats.json")
    summary["truncated"] = {s: stats[s]["truncated"] for s in ("train", "validation", "test")}
    if runtime.is_main:
        out = Path(out_dir)
        save_artifact(model, params, labels, out / "model")
        with atomic_path(out / "log.csv") as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["epoch", "step", "train_loss", "val_accuracy", "val_macro_f1", "lr"])
            w.writerows(state["log"])
        write_json(out / "train.json", summary)
        clear_checkpoints(ckpt_dir)
    return summary
