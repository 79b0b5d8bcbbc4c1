"""Continued masked-language-model pretraining (DAPT on a corpus, TAPT on a task's training text).

Two choices make it fast and sound on small budgets:
- the vocabulary projection (about half the FLOPs of a small encoder) runs only at the masked
  positions, not at every position as the models' standard MLM forward does;
- a checkpoint without an MLM head (e.g. a sentence-embedding model) first trains only the new head
  (``head_warmup_steps`` at ``head_lr``), so the random head sends no noisy gradients into the encoder.
Weights the MLM model does not use (BERT's pooler) are carried over from the parent checkpoint, so a
classifier fine-tuned from the result starts from the trained pooler, not a random one.
"""

from __future__ import annotations

import contextlib
import csv
import math
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from dapt.devices import all_reduce_sums
from dapt.errors import UserError
from dapt.files import atomic_path, read_json, write_json
from dapt.tokenization import read_blocks
from dapt.train import (Runtime, Timer, check_finite, checkpoint_step, clear_checkpoints, count_params,
                        linear_schedule, load_checkpoint, make_optimizer, peak_memory_mb, save_checkpoint, unwrap)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                   "merges.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model", "added_tokens.json")


def mask_tokens(input_ids: torch.Tensor, special: torch.Tensor, probability: float, mask_id: int,
                vocab_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's dynamic masking: pick `probability` of the non-special tokens; 80% [MASK], 10% random, 10% kept."""
    labels = input_ids.clone()
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & ~special
    labels[~chosen] = -100
    inputs = input_ids.clone()
    action = torch.rand(input_ids.shape, generator=generator)
    inputs[chosen & (action < 0.8)] = mask_id
    randomize = chosen & (action >= 0.8) & (action < 0.9)
    inputs[randomize] = torch.randint(vocab_size, input_ids.shape, generator=generator)[randomize]
    return inputs, labels


def mlm_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module mapping hidden states to vocabulary logits (BERT: `cls`, RoBERTa & co: `lm_head`)."""
    for name in ("cls", "lm_head", "vocab_projector"):
        if isinstance(getattr(model, name, None), torch.nn.Module):
            return getattr(model, name)
    return None


class MaskedOnlyMLM(torch.nn.Module):
    """Loss from logits at the masked positions only; a module so DDP can wrap it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.head = mlm_head(model)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy over the masked positions: their mean, or with reduction="sum" their sum."""
        if self.head is None:  # unknown architecture: the standard forward, logits everywhere
            loss = self.model(input_ids=input_ids, labels=labels).loss
            return loss * (labels != -100).sum() if reduction == "sum" else loss
        hidden = self.model.base_model(input_ids=input_ids).last_hidden_state
        selected = labels != -100
        logits = self.head(hidden[selected])
        return F.cross_entropy(logits.float(), labels[selected], reduction=reduction)


def head_parameter_names(model: torch.nn.Module, missing: set[str]) -> set[str]:
    return {n for n, _ in model.named_parameters() if n in missing}


def save_mlm_checkpoint(model: torch.nn.Module, tokenizer_dir: Path, parent_dir: Path, out_dir: Path) -> None:
    """config + one safetensors file (tied copies dropped) + parent weights the MLM model lacks + tokenizer."""
    model = unwrap(model)
    state, seen = {}, set()
    for key, value in model.state_dict().items():
        if value.data_ptr() in seen:
            continue  # tied to a tensor already saved (decoder = word embeddings)
        seen.add(value.data_ptr())
        state[key] = value.detach().cpu().contiguous().clone()
    prefix = model.base_model_prefix
    trained_keys = set(model.state_dict())
    for weights in sorted(parent_dir.glob("*.safetensors")):
        with safe_open(str(weights), "pt") as f:
            parent_keys = list(f.keys())
            bare = not any(k.startswith(prefix + ".") for k in parent_keys)
            for key in parent_keys:
                name = f"{prefix}.{key}" if bare else key
                if name not in trained_keys and key not in trained_keys:
                    state[name] = f.get_tensor(key)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        model.config.architectures = [type(model).__name__]
        model.config.save_pretrained(tmp)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).exists():
                shutil.copy(tokenizer_dir / name, tmp / name)
        # the model's origin and its trust_remote_code opt-in (with its code) travel along the chain
        if (parent_dir / "source.json").exists():
            shutil.copy(parent_dir / "source.json", tmp / "source.json")
            if read_json(parent_dir / "source.json").get("trust_remote_code"):
                for code in parent_dir.glob("*.py"):
                    shutil.copy(code, tmp / code.name)


def pretrain(parent_dir: str, blocks_path: str, out_dir: str, ckpt_dir: str, params: dict, seed: int,
             runtime: Runtime, stage: str = "") -> dict:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    parent = Path(parent_dir)
    from dapt.models import trusts_remote_code

    trust = trusts_remote_code(parent)  # only if the model's config entry opted in
    tokenizer = AutoTokenizer.from_pretrained(str(parent), trust_remote_code=trust)
    model, info = AutoModelForMaskedLM.from_pretrained(str(parent), output_loading_info=True, use_safetensors=True,
                                                       trust_remote_code=trust)
    model.to(runtime.device).train()
    if runtime.device.type == "cpu":
        # with dropout, SDPA falls back to its unfused math path on a CPU, which adds masking passes and
        # copies: eager attention trains MiniLM ~15% faster there (bench/README.md); GPUs keep SDPA
        model.set_attn_implementation("eager")

    blocks = torch.from_numpy(read_blocks(blocks_path)).long()
    special = torch.isin(blocks, torch.tensor(sorted(set(tokenizer.all_special_ids))))
    n = len(blocks)
    batch = params["batch_size"]
    if batch < runtime.world_size:
        raise UserError("pretrain.batch_size", f"{batch} is smaller than the {runtime.world_size} processes",
                        "raise the batch size or use fewer GPUs")
    steps_per_epoch = max(1, n // batch)
    total = params.get("max_steps") or math.ceil(params.get("epochs", 1) * steps_per_epoch)
    new_head = head_parameter_names(model, set(info["missing_keys"]))
    head_steps = min(params["head_warmup_steps"], total - 1) if new_head else 0

    wrapped = MaskedOnlyMLM(model)
    if runtime.world_size > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(wrapped, find_unused_parameters=head_steps > 0)

    def phase_for(step: int):
        """Phase 0 trains only the new head; phase 1 trains everything with warmup + linear decay."""
        if step < head_steps:
            for name, p in model.named_parameters():
                p.requires_grad = name in new_head
            opt = make_optimizer(list(model.named_parameters()), params["head_lr"], params["weight_decay"])
            return opt, linear_schedule(opt, 0, 10**9)
        for p in model.parameters():
            p.requires_grad = True
        opt = make_optimizer(list(model.named_parameters()), params["lr"], params["weight_decay"])
        main_steps = total - head_steps
        return opt, linear_schedule(opt, int(params["warmup_ratio"] * main_steps), main_steps)

    # One masking stream for the whole global batch, the same in every rank: N processes mask exactly
    # what one process would, so the run does not depend on the number of GPUs (and a resumed rank
    # continues the very stream rank 0 saved).
    masking = torch.Generator().manual_seed(seed * 1000)
    step, log = 0, []
    saved = checkpoint_step(ckpt_dir)
    # the optimizer of the phase the checkpoint was saved in, so its state loads into the same shape
    optimizer, scheduler = phase_for(saved - 1 if saved else 0)
    resumed = load_checkpoint(ckpt_dir, wrapped, optimizer, scheduler, generator=masking)
    if resumed is not None:
        step, log = resumed["step"], resumed["log"]
        print(f"resumed from checkpoint at step {step}/{total}", flush=True)

    tokens = log[-1][3] if log else 0
    timer = Timer()
    timer.start -= (resumed or {}).get("seconds", 0.0)  # time spent before a kill counts too
    micro = batch // params["grad_accum"]
    while step < total:
        if head_steps and step == head_steps:
            optimizer, scheduler = phase_for(step)
        epoch, offset = divmod(step, steps_per_epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        idx = order[offset * batch : offset * batch + batch]  # the global batch, identical in every rank
        inputs, labels = mask_tokens(blocks[idx], special[idx], params["mlm_probability"],
                                     tokenizer.mask_token_id, len(tokenizer), masking)
        masked = max(1, int((labels != -100).sum()))  # masked tokens of the global batch
        mine = torch.arange(len(idx))[runtime.rank :: runtime.world_size]  # this rank's rows
        optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for start in range(0, len(mine), micro):
            rows = mine[start : start + micro]
            last = start + micro >= len(mine)
            # gradients are all-reduced once per step, after the last micro-batch
            sync = contextlib.nullcontext() if last or runtime.world_size == 1 else wrapped.no_sync()
            with sync:
                with runtime.autocast():
                    part = wrapped(inputs[rows].to(runtime.device), labels[rows].to(runtime.device), reduction="sum")
                check_finite(part, f"pretrain {stage}", step)
                # DDP averages gradients over the ranks, hence * world_size: the update is the mean over
                # all masked tokens of the global batch, for any number of processes and micro-batches
                (part * (runtime.world_size / masked)).backward()
            loss_sum += part.item()
        step_loss = all_reduce_sums({"loss": loss_sum}, runtime.device)["loss"] / masked
        torch.nn.utils.clip_grad_norm_(model.parameters(), params["max_grad_norm"])
        optimizer.step()
        scheduler.step()
        step += 1
        tokens += int((~special[idx]).sum())
        log.append([step, step_loss, scheduler.get_last_lr()[0], tokens])
        if runtime.is_main and (step % 10 == 0 or step == total):
            print(f"step {step}/{total} loss {step_loss:.4f} lr {log[-1][2]:.2e} ({timer.seconds():.0f}s)", flush=True)
        if runtime.is_main and step % params["save_steps"] == 0 and step < total:
            save_checkpoint(ckpt_dir, wrapped, optimizer, scheduler, {"step": step, "log": log, "seconds": timer.seconds()},
                            masking)

    trainable, total_params = count_params(model)
    summary = {"stage": stage, "steps": total, "head_warmup_steps": head_steps, "new_head_parameters": sorted(new_head),
               "blocks": n, "block_length": blocks.shape[1], "tokens": tokens, "seconds": timer.seconds(),
               "final_loss": log[-1][1], "first_loss": log[0][1], "parameters": total_params,
               "peak_memory_mb": peak_memory_mb(runtime.device), **runtime.describe()}
    # totals over the whole chain (parent stages included), for the report's "what it rests on"
    parent_summary = parent.parent / "summary.json"
    earlier = read_json(parent_summary) if parent_summary.exists() else {}
    summary.update(chain=Path(out_dir).name, total_steps=earlier.get("total_steps", 0) + total,
                   total_tokens=earlier.get("total_tokens", 0) + tokens)
    if runtime.is_main:
        out = Path(out_dir)
        save_mlm_checkpoint(model, parent, parent, out / "model")
        with atomic_path(out / "loss.csv") as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "loss", "lr", "tokens"])
            w.writerows(log)
        write_json(out / "summary.json", summary)
        clear_checkpoints(ckpt_dir)
    return summary
