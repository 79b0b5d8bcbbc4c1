"""Continued masked-language-model pretraining (DAPT on a corpus, TAPT on a task's training text).

Two choices make it fast and sound on small budgets:
- the vocabulary projection (about half the FLOPs of a small encoder) runs only at the masked
  positions, not at every position as the models' standard MLM forward does (`dapt.pretrain.mlm`);
- a checkpoint without an MLM head (e.g. a sentence-embedding model) first trains only the new head
  (``head_warmup_steps`` at ``head_lr``), so the random head sends no noisy gradients into the encoder.
Weights the MLM model does not use (BERT's pooler) are carried over from the parent checkpoint, so a
classifier fine-tuned from the result starts from the trained pooler, not a random one.
"""

from __future__ import annotations

import csv
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dapt.core.errors import UserError
from dapt.core.files import atomic_path, read_json, write_json
from dapt.data.model_store import TOKENIZER_FILES
from dapt.pretrain.mlm import MaskedOnlyMLM, apply_masking, masking_draws
from dapt.runtime.checkpoints import checkpoint_step, clear_checkpoints
from dapt.runtime.context import Runtime, Timer, count_params, linear_schedule, make_optimizer, peak_memory_mb, unwrap
from dapt.runtime.distributed import all_reduce_sums
from dapt.runtime.optimizer_step import Progress, Stepper, split_micro
from dapt.runtime.tracking import log_pretrain
from dapt.study.defaults import MLM_DEFAULTS
from dapt.tokenize.blocks import read_blocks


def head_parameter_names(model: torch.nn.Module, missing: set[str]) -> set[str]:
    return {n for n, _ in model.named_parameters() if n in missing}


def save_mlm_checkpoint(model: torch.nn.Module, tokenizer_dir: Path, parent_dir: Path, out_dir: Path) -> None:
    """config + one safetensors file (tied copies dropped) + parent weights the MLM model lacks + tokenizer."""
    model = unwrap(model)
    prefix = model.base_model_prefix
    state, seen = {}, set()
    # of tied copies, the encoder's is kept (the word embeddings, not the MLM decoder): a classifier loads
    # only the encoder, and some MLM classes (XLM-R, DeBERTa-v2) list their head first
    items = sorted(model.state_dict().items(), key=lambda kv: not kv[0].startswith(prefix + "."))
    for key, value in items:
        if value.data_ptr() in seen:
            continue  # tied to a tensor already saved (decoder = word embeddings)
        seen.add(value.data_ptr())
        state[key] = value.detach().cpu().contiguous().clone()
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
        for pattern in TOKENIZER_FILES:
            for file in sorted(tokenizer_dir.glob(pattern)):
                shutil.copy(file, tmp / file.name)
        # the model's origin and its trust_remote_code opt-in (with its code) travel along the chain
        if (parent_dir / "source.json").exists():
            shutil.copy(parent_dir / "source.json", tmp / "source.json")
            if read_json(parent_dir / "source.json").get("trust_remote_code"):
                for code in parent_dir.glob("*.py"):
                    shutil.copy(code, tmp / code.name)


@dataclass
class MLMData:
    """Packed blocks, mapped from disk (n x block length; rows are read when a batch takes them),
    and the ids of the special tokens (never masked)."""

    blocks: np.ndarray
    special_ids: torch.Tensor
    mask_id: int
    vocab_size: int

    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (int64) of the blocks `idx`, in that order, and where their special tokens are."""
        ids = torch.from_numpy(np.array(self.blocks[idx.numpy()], dtype=np.int64))  # only these rows are read
        return ids, torch.isin(ids, self.special_ids)


def load_model(parent: Path, runtime: Runtime) -> tuple[torch.nn.Module, set[str], Any]:
    """The MLM model of a checkpoint, its newly initialised head parameters, and its tokenizer."""
    from transformers import AutoModelForMaskedLM

    from dapt.data.model_store import load_tokenizer, trusts_remote_code

    trust = trusts_remote_code(parent)  # only if the model's config entry opted in
    tokenizer = load_tokenizer(parent)
    model, info = AutoModelForMaskedLM.from_pretrained(
        str(parent), output_loading_info=True, use_safetensors=True, trust_remote_code=trust
    )
    model.to(runtime.device).train()
    if runtime.device.type == "cpu":
        # with dropout, SDPA falls back to its unfused math path on a CPU, which adds masking passes and
        # copies: eager attention trains MiniLM ~15% faster there (bench/README.md); GPUs keep SDPA
        model.set_attn_implementation("eager")
    return model, head_parameter_names(model, set(info["missing_keys"])), tokenizer


class Pretraining:
    """One MLM stage: phases (head warm-up, then everything), global batches, masking stream."""

    def __init__(
        self,
        model: torch.nn.Module,
        new_head: set[str],
        data: MLMData,
        params: dict,
        seed: int,
        runtime: Runtime,
        stage: str,
    ):
        self.model, self.new_head, self.data, self.params = model, new_head, data, params
        self.seed, self.runtime, self.stage = seed, runtime, stage
        n, batch = len(data.blocks), params["batch_size"]
        if batch < runtime.world_size:
            raise UserError(
                "pretrain.batch_size",
                f"{batch} is smaller than the {runtime.world_size} processes",
                "raise the batch size or use fewer GPUs",
            )
        self.steps_per_epoch = max(1, n // batch)
        self.total = params.get("max_steps") or math.ceil(params.get("epochs", 1) * self.steps_per_epoch)
        self.head_steps = min(params["head_warmup_steps"], self.total - 1) if new_head else 0
        self.wrapped: torch.nn.Module = MaskedOnlyMLM(model)
        if runtime.world_size > 1:
            self.wrapped = torch.nn.parallel.DistributedDataParallel(
                self.wrapped, find_unused_parameters=self.head_steps > 0
            )
        self.stepper = Stepper(runtime, self.wrapped, model.parameters, params["max_grad_norm"], f"pretrain {stage}")
        # One masking stream for the whole global batch, the same in every rank: N processes mask exactly
        # what one process would, so the run does not depend on the number of GPUs (and a resumed rank
        # continues the very stream rank 0 saved).
        self.masking = torch.Generator().manual_seed(seed * 1000)
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, its permutation of the blocks)

    def enter_phase(self, step: int) -> None:
        """Phase 0 trains only the new head; phase 1 trains everything with warmup + linear decay."""
        model, params = self.model, self.params
        if step < self.head_steps:
            for name, p in model.named_parameters():
                p.requires_grad = name in self.new_head
            opt = make_optimizer(list(model.named_parameters()), params["head_lr"], params["weight_decay"])
            self.stepper.use(opt, linear_schedule(opt, 0, 10**9))
            return
        for p in model.parameters():
            p.requires_grad = True
        opt = make_optimizer(list(model.named_parameters()), params["lr"], params["weight_decay"])
        main_steps = self.total - self.head_steps
        self.stepper.use(opt, linear_schedule(opt, int(params["warmup_ratio"] * main_steps), main_steps))

    def resume(self, ckpt_dir: str) -> dict:
        saved = checkpoint_step(ckpt_dir)
        # the optimizer of the phase the checkpoint was saved in, so its state loads into the same shape
        self.enter_phase(saved - 1 if saved else 0)
        resumed = self.stepper.resume(ckpt_dir, generator=self.masking)
        if resumed is not None:
            print(f"resumed from checkpoint at step {resumed['step']}/{self.total}", flush=True)
        return resumed or {"step": 0, "log": []}

    def batch_rows(self, step: int) -> torch.Tensor:
        """Block ids of the global batch of `step` (the same in every rank): epoch by epoch, a seeded
        permutation of the blocks, so a resumed run takes the very batches of an uninterrupted one."""
        batch = self.params["batch_size"]
        epoch, offset = divmod(step, self.steps_per_epoch)
        if self._order is None or self._order[0] != epoch:
            seeded = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._order = (epoch, torch.randperm(len(self.data.blocks), generator=seeded))
        return self._order[1][offset * batch : offset * batch + batch]

    def train_step(self, step: int) -> tuple[float, int, int]:
        """One optimizer step on the global batch of `step`; its loss (mean over the masked tokens of
        the global batch), its number of blocks and of non-special tokens. Each rank reads and masks
        only its own rows of the batch."""
        data, params, runtime = self.data, self.params, self.runtime
        idx = self.batch_rows(step)
        mine = torch.arange(len(idx))[runtime.rank :: runtime.world_size]  # this rank's rows
        ids, special = data.rows(idx[mine])
        draws = masking_draws(idx.shape + data.blocks.shape[1:], data.vocab_size, self.masking)
        inputs, labels = apply_masking(
            ids, special, tuple(d[mine] for d in draws), params["mlm_probability"], data.mask_id
        )
        counts = all_reduce_sums(
            {"masked": int((labels != -100).sum()), "tokens": int((~special).sum())}, runtime.device
        )  # of the global batch
        masked = max(1, int(counts["masked"]))
        local = torch.arange(len(mine))

        def micro(rows: torch.Tensor) -> tuple[torch.Tensor, float]:
            with runtime.autocast():
                part = self.wrapped(inputs[rows].to(runtime.device), labels[rows].to(runtime.device), reduction="sum")
            # DDP averages gradients over the ranks, hence * world_size: the update is the mean over
            # all masked tokens of the global batch, for any number of processes and micro-batches
            return part * (runtime.world_size / masked), part.item()

        loss_sum = self.stepper.step(split_micro(local, params["grad_accum"]), micro, step)
        return all_reduce_sums({"loss": loss_sum}, runtime.device)["loss"] / masked, len(idx), int(counts["tokens"])

    def run(self, ckpt_dir: str) -> tuple[list, int, float]:
        """Train to the last step, resuming if a checkpoint exists; (log, tokens seen, seconds)."""
        resumed = self.resume(ckpt_dir)
        step, log = resumed["step"], resumed["log"]
        tokens = log[-1][3] if log else 0
        timer = Timer()
        timer.start -= resumed.get("seconds", 0.0)  # time spent before a kill counts too
        progress = Progress(self.total, step, every=10, unit="blocks", enabled=self.runtime.is_main)
        while step < self.total:
            if self.head_steps and step == self.head_steps:
                self.enter_phase(step)
            loss, blocks, batch_tokens = self.train_step(step)
            step += 1
            tokens += batch_tokens
            log.append([step, loss, self.stepper.scheduler.get_last_lr()[0], tokens])
            progress.update(step, loss, blocks, f" lr {log[-1][2]:.2e} tokens {tokens}")
            if self.runtime.is_main and Stepper.checkpoint_due(step, self.total, self.params["save_steps"]):
                self.stepper.save(ckpt_dir, {"step": step, "log": log, "seconds": timer.seconds()}, self.masking)
        return log, tokens, timer.seconds()


def read_data(blocks_path: str, tokenizer) -> MLMData:
    """The block folder, mapped: memory does not grow with the corpus, and the page cache holding
    it is shared by every process of a data-parallel job."""
    special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    return MLMData(read_blocks(blocks_path), special_ids, tokenizer.mask_token_id, len(tokenizer))


def pretrain(
    parent_dir: str,
    blocks_path: str,
    out_dir: str,
    ckpt_dir: str,
    params: dict,
    seed: int,
    runtime: Runtime,
    stage: str = "",
    parent_summary: str = "",
) -> dict:
    """Run one MLM stage from `parent_dir` on packed blocks; write model/, loss.csv, summary.json.
    `parent_summary`: the parent stage's summary.json, if the parent was pretrained (chain totals)."""
    missing = sorted(set(MLM_DEFAULTS) - {"max_length"} - set(params))
    if missing:  # the rule passes dapt.study.config.mlm_params, defaults included
        raise UserError("--params", f"missing {missing}", "pass every pretraining setting, as the rule does")
    parent = Path(parent_dir)
    model, new_head, tokenizer = load_model(parent, runtime)
    data = read_data(blocks_path, tokenizer)
    run = Pretraining(model, new_head, data, params, seed, runtime, stage)
    log, tokens, seconds = run.run(ckpt_dir)
    _, total_params = count_params(model)
    summary = {
        "stage": stage,
        "steps": run.total,
        "head_warmup_steps": run.head_steps,
        "new_head_parameters": sorted(new_head),
        "blocks": len(data.blocks),
        "block_length": data.blocks.shape[1],
        "tokens": tokens,
        "seconds": seconds,
        "final_loss": log[-1][1],
        "first_loss": log[0][1],
        "parameters": total_params,
        "peak_memory_mb": peak_memory_mb(runtime.device),
        **runtime.describe(),
    }
    # totals over the whole chain (parent stages included), for the report's "what it rests on"
    earlier = read_json(parent_summary) if parent_summary else {}
    summary.update(
        chain=Path(out_dir).name,
        total_steps=earlier.get("total_steps", 0) + run.total,
        total_tokens=earlier.get("total_tokens", 0) + tokens,
    )
    if runtime.is_main:
        out = Path(out_dir)
        save_mlm_checkpoint(model, parent, parent, out / "model")
        with atomic_path(out / "loss.csv") as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "loss", "lr", "tokens"])
            w.writerows(log)
        write_json(out / "summary.json", summary)
        clear_checkpoints(ckpt_dir)
        log_pretrain(params, summary, log)  # experiment tracking, if the study has it
    return summary
