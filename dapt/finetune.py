"""Sequence-classification fine-tuning, full or parameter-efficient, with early stopping.

Batches are length-bucketed (shuffled chunks sorted by length) and padded per batch, so short texts
cost short sequences. The best epoch on the validation metric is kept, and what is saved is what the
method trains: the whole model for ``full``, the adapter (and classifier) for the others.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dapt.devices import all_reduce_sums
from dapt.evaluate import collate, compute_metrics, predict_proba
from dapt.files import atomic_path, read_json, write_json
from dapt.tokenization import read_examples
from dapt.train import (Runtime, Timer, check_finite, clear_checkpoints, count_params,
                        linear_schedule, load_checkpoint, make_optimizer, peak_memory_mb, save_checkpoint,
                        trainable_state, unwrap)
from dapt.errors import UserError

PEFT_KINDS = ("lora", "adalora", "ia3", "prefix", "prompt")
METHOD_KEYS = ("kind", "r", "alpha", "dropout", "target_modules", "num_virtual_tokens", "reduction_factor", "placement",
               "train_layernorm", "target_r", "tinit_ratio", "tfinal_ratio", "orth_reg_weight", "prefix_projection")


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


def load_classifier(model_dir: str, labels: list[str], trust: bool | None = None):
    """Safetensors weights only; custom model code only if the model's config entry opted in
    (`trust`: that opt-in, when `model_dir` is an artifact that does not record it itself)."""
    from transformers import AutoModelForSequenceClassification

    from dapt.models import trusts_remote_code

    model_dir = str(model_dir)
    remote = trusts_remote_code(model_dir) if trust is None else trust
    return AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={l: i for i, l in enumerate(labels)}, use_safetensors=True, trust_remote_code=remote)


def _position_budget(model: torch.nn.Module) -> int | None:
    """Positions the embeddings can address (RoBERTa's start after its padding index)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is None:
        return None
    emb = getattr(getattr(model, model.base_model_prefix, model), "embeddings", None)
    pad = getattr(emb, "padding_idx", None)
    return limit - (pad + 1 if isinstance(pad, int) else 0)


def peft_config(model: torch.nn.Module, params: dict):
    """The peft config of a method. The task head trains and is saved with the adapter: peft adds
    ``classifier``/``score``; BERT's ``pooler``, which the classifier reads, is added here (an MLM
    checkpoint may lack it; frozen at a random init it could not be restored from the artifact)."""
    import peft

    from dapt.adapters import head_module_names

    kind = params["kind"]
    task = peft.TaskType.SEQ_CLS
    extra = ["pooler"] if f"{model.base_model_prefix}.pooler" in head_module_names(model) else None
    common = dict(task_type=task, modules_to_save=extra)
    if kind == "lora":
        return peft.LoraConfig(**common, r=params.get("r", 8), lora_alpha=params.get("alpha", 16),
                               lora_dropout=params.get("dropout", 0.1), target_modules=params.get("target_modules"))
    if kind == "adalora":
        total = params.get("total_steps")
        if not total:
            raise UserError("methods: kind adalora", "needs the number of training steps (total_steps)")
        init_r = params.get("r", 12)
        target_r = params.get("target_r", min(8, init_r))
        if target_r > init_r:
            raise UserError("methods: target_r", f"target_r {target_r} exceeds the initial rank r {init_r}")
        # the AdaLoRA schedule: full rank for tinit steps, cubic budget decay, fixed ranks for tfinal steps
        tinit = int(params.get("tinit_ratio", 0.1) * total)
        tfinal = int(params.get("tfinal_ratio", 0.2) * total)
        if tinit >= total - tfinal:
            tinit, tfinal = 0, 0
        return peft.AdaLoraConfig(**common, init_r=init_r, target_r=target_r, lora_alpha=params.get("alpha", 32),
                                  lora_dropout=params.get("dropout", 0.1), total_step=total, tinit=tinit,
                                  tfinal=tfinal, deltaT=1, orth_reg_weight=params.get("orth_reg_weight", 0.5),
                                  target_modules=params.get("target_modules"))
    if kind == "ia3":
        return peft.IA3Config(**common, target_modules=params.get("target_modules"))
    tokens = params.get("num_virtual_tokens", 20)
    budget = _position_budget(model)
    if budget is not None and params.get("max_length", 0) + tokens > budget:
        raise UserError(f"methods: kind {kind}",
                        f"max_length {params.get('max_length')} + {tokens} virtual tokens exceed the model's "
                        f"{budget} positions", "lower the task's max_length or num_virtual_tokens")
    if kind == "prefix":
        return peft.PrefixTuningConfig(**common, num_virtual_tokens=tokens,
                                       prefix_projection=params.get("prefix_projection", False))
    return peft.PromptTuningConfig(**common, num_virtual_tokens=tokens)


def apply_method(model: torch.nn.Module, params: dict) -> torch.nn.Module:
    """Wrap or freeze the model for the method; returns the module to train."""
    kind = params["kind"]
    if kind == "full":
        return model
    if kind == "head":
        from dapt.adapters import train_only_head

        return train_only_head(model)
    if kind == "adapter":
        from dapt.adapters import add_adapters

        return add_adapters(model, params.get("reduction_factor", 16), params.get("placement", "pfeiffer"),
                            params.get("train_layernorm"))
    if kind in PEFT_KINDS:
        import peft

        return peft.get_peft_model(model, peft_config(model, params))
    raise UserError(f"methods.{kind}", f"unknown method kind '{kind}'")


def method_penalty(model: torch.nn.Module, params: dict) -> torch.Tensor | float:
    """A method's own training regulariser, added to the loss: AdaLoRA's orthogonality penalty on
    P and Q (the mean of ||PP^T - I||_F and ||Q^TQ - I||_F), as peft adds when it computes the loss."""
    if params["kind"] != "adalora":
        return 0.0
    weight = params.get("orth_reg_weight", 0.5)
    if weight <= 0:
        return 0.0
    terms = []
    for name, p in unwrap(model).base_model.model.named_parameters():
        if p.requires_grad and (".lora_A." in name or ".lora_B." in name) and p.numel():
            cov = p @ p.T if ".lora_A." in name else p.T @ p
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(*cov.shape, device=cov.device, dtype=cov.dtype)))
    return weight * torch.stack(terms).mean() if terms else 0.0


def after_optimizer_step(model: torch.nn.Module, params: dict, step: int) -> None:
    """AdaLoRA: update importance scores, and mask ranks to the scheduled budget (after
    ``optimizer.step()``, before the gradients are cleared)."""
    if params["kind"] == "adalora":
        unwrap(model).base_model.update_and_allocate(step)


ALLOCATOR_STATE = ("ipt", "exp_avg_ipt", "exp_avg_unc")


def method_state(model: torch.nn.Module, params: dict) -> dict:
    """Method state that the weights do not hold, for checkpoints. AdaLoRA: its rank allocator's
    importance scores and their moving averages, which decide the ranks it keeps."""
    if params["kind"] != "adalora":
        return {}
    allocator = unwrap(model).base_model.rankallocator
    return {key: {n: t.detach().to("cpu", copy=True) for n, t in getattr(allocator, key).items()}
            for key in ALLOCATOR_STATE}


def resume_method(model: torch.nn.Module, params: dict, saved: dict | None = None) -> None:
    """Restore method state that the checkpointed weights do not hold. AdaLoRA: peft's rank pattern,
    which its final phase masks by (and fails without), rebuilt from the weights, in which the ranks
    it drops have E = 0; and the allocator's importance averages (`method_state`), so a resumed run
    allocates ranks exactly as an uninterrupted one."""
    if params["kind"] != "adalora":
        return
    peft_model = unwrap(model)
    peft_model.peft_config["default"].rank_pattern = {
        name: (p.detach() != 0).view(-1).tolist()
        for name, p in peft_model.base_model.model.named_parameters() if ".lora_E.default" in name}
    if saved:
        allocator = peft_model.base_model.rankallocator
        devices = {n: p.device for n, p in peft_model.base_model.model.named_parameters()}
        for key in ALLOCATOR_STATE:
            setattr(allocator, key, {n: t.to(devices.get(n, t.device)) for n, t in saved[key].items()})


def _settle_adalora_ranks(model) -> None:
    """Save AdaLoRA's ranks as they are in memory. With a ``rank_pattern`` in its config, peft saves
    (and reloads) only the ranks of the latest mask, while the weights kept may be an earlier, best
    epoch's; and even where they agree, the smaller matrices round differently (~1e-7). Without it,
    the adapter is saved at its initial rank, pruned ranks as zero singular values (E): the same
    function, bit for bit, for a few more kilobytes."""
    model.peft_config["default"].rank_pattern = None


def save_artifact(model: torch.nn.Module, params: dict, labels: list[str], out_dir: Path) -> None:
    """Save what the method trained: the whole model (full), peft's adapter files (peft kinds: the
    adapter and the task head), or the trainable weights only (head, adapter)."""
    model = unwrap(model)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        kind = params["kind"]
        if kind == "full":
            model.save_pretrained(tmp)
        elif kind in PEFT_KINDS:
            if kind == "adalora":
                _settle_adalora_ranks(model)
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
        from dapt.models import trusts_remote_code

        model = load_classifier(str(artifact), labels, trust=trusts_remote_code(base_dir))
    elif params["kind"] in PEFT_KINDS:
        import peft

        if not (artifact / "adapter_model.safetensors").is_file():  # peft would fall back to a pickle
            raise UserError(str(artifact), "no adapter_model.safetensors", "only safetensors weights are loaded")
        model = peft.PeftModel.from_pretrained(load_classifier(base_dir, labels), str(artifact))
    else:
        model = apply_method(load_classifier(base_dir, labels), {**params, "total_steps": info.get("total_steps")})
        weights = load_file(str(artifact / "trainable.safetensors"))
        expected = {n for n, p in model.named_parameters() if p.requires_grad}
        unexpected = sorted(set(weights) - set(model.state_dict()))
        missing = sorted(expected - set(weights))
        if unexpected or missing:
            raise UserError(str(artifact), "the artifact does not fit its method: "
                            f"{len(missing)} trained weights missing (e.g. {missing[:2]}), "
                            f"{len(unexpected)} unknown (e.g. {unexpected[:2]})")
        model.load_state_dict(weights, strict=False)
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
    # one file per best epoch: the state a checkpoint records always names weights that exist, even
    # if a kill fell between writing a new best and the checkpoint after it
    def best_path(epoch: int) -> Path:
        return Path(ckpt_dir) / f"best-epoch{epoch}.safetensors"

    resumed = load_checkpoint(ckpt_dir, train_model, optimizer, scheduler, scaler=scaler)
    if resumed is not None:
        state = resumed
        resume_method(model, params, state.get("method_state"))
        print(f"resumed from checkpoint at step {state['step']}/{total}", flush=True)

    timer = Timer()
    timer.start -= state.get("seconds", 0.0)  # time spent before a kill counts too
    restore_encoder = None
    if params["kind"] == "head" and runtime.world_size == 1:
        from dapt.adapters import store_frozen_encoder

        restore_encoder = store_frozen_encoder(model, [train["input_ids"], val["input_ids"]], pad_id, runtime,
                                               params["eval_batch_size"])
        print(f"head: encoder outputs {'stored once' if restore_encoder else 'recomputed every step'}", flush=True)
    losses = state["losses"]  # this epoch's step losses; part of the checkpoint so a resumed log matches
    while state["step"] < total and state["bad_epochs"] < params["patience"]:
        epoch, offset = divmod(state["step"], steps_per_epoch)
        batches = bucketed_batches(lengths, batch, torch.Generator().manual_seed(seed * 100_003 + epoch))
        for idx in batches[offset:]:
            if state["step"] >= total:
                break
            optimizer.zero_grad(set_to_none=True)
            # this rank's share of the global batch; DDP averages gradients over the ranks, so each
            # example weighs world_size / len(idx): the update is the mean over the global batch
            shard, weight = idx[runtime.rank :: runtime.world_size], runtime.world_size / len(idx)
            if len(shard) == 0:  # fewer examples than ranks: join the gradient all-reduce, adding nothing
                shard, weight = idx[:1], 0.0
            micro = -(-len(shard) // accum)
            step_loss = 0.0
            for start in range(0, len(shard), micro):
                part = shard[start : start + micro]
                ids, mask = collate(train["input_ids"], part, pad_id)
                with runtime.autocast():
                    logits = train_model(input_ids=ids.to(runtime.device), attention_mask=mask.to(runtime.device)).logits
                loss = torch.nn.functional.cross_entropy(logits.float(), torch.from_numpy(train["label"][part]).to(runtime.device))
                check_finite(loss, f"finetune {params['kind']}", state["step"])
                # the logged loss is the task loss; a method's regulariser (AdaLoRA) only trains
                scaled = (loss + method_penalty(model, params)) * len(part) * weight
                (scaler.scale(scaled) if scaler else scaled).backward()
                step_loss += loss.item() * len(part) * weight / runtime.world_size
            step_loss = all_reduce_sums({"loss": step_loss}, runtime.device)["loss"]  # the global batch's mean
            if scaler:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), params["max_grad_norm"])
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            after_optimizer_step(model, params, state["step"])
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
                if runtime.is_main:
                    print(f"epoch {epoch_no} step {state['step']}/{total} train_loss {state['log'][-1][2]:.4f} "
                          f"val_{metric} {scores[metric]:.4f} ({timer.seconds():.0f}s)", flush=True)
                losses.clear()
                if scores[metric] > state["best"]:
                    state.update(best=scores[metric], best_epoch=epoch_no, bad_epochs=0)
                    if runtime.is_main:
                        with atomic_path(best_path(epoch_no)) as tmp:
                            save_file(trainable_state(model, only_trainable=True), str(tmp))
                else:
                    state["bad_epochs"] += 1
            if runtime.is_main and (end_of_epoch or state["step"] % params["save_steps"] == 0) and state["step"] < total:
                state["seconds"] = timer.seconds()
                state["method_state"] = method_state(model, params)
                save_checkpoint(ckpt_dir, train_model, optimizer, scheduler, state, scaler=scaler)
                for old in Path(ckpt_dir).glob("best-epoch*.safetensors"):  # the checkpoint names only its own
                    if old != best_path(state["best_epoch"]):
                        old.unlink(missing_ok=True)
            if state["bad_epochs"] >= params["patience"]:
                break

    if restore_encoder:
        restore_encoder()
    if runtime.is_main and state["best_epoch"] and best_path(state["best_epoch"]).exists():  # (other ranks: rank 0 may be deleting it)
        unwrap(model).load_state_dict(load_file(str(best_path(state["best_epoch"]))), strict=False)
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
