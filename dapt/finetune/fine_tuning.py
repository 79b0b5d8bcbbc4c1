"""Sequence-classification fine-tuning, full or parameter-efficient, with early stopping.

Batches are length-bucketed (shuffled chunks sorted by length) and padded per batch, so short texts
cost short sequences. A task cut into windows (`dapt.tokenize.longtext`) trains on every window with its
document's label and validates per document, its windows' probabilities pooled. The best epoch on the
validation metric is kept, and what is saved is what the
method trains (`dapt.finetune.methods`). The optimizer step, its checkpoints and the progress lines are
`dapt.runtime.optimizer_step`, shared with pretraining; what is fine-tuning's own is here: the classification loss,
validation at each epoch's end, early stopping and the best epoch.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dapt.core.errors import Diverged, UserError
from dapt.core.files import atomic_path, read_json
from dapt.finetune.capabilities import check_model_supports
from dapt.finetune.evaluation import predict_proba
from dapt.finetune.methods import (
    after_optimizer_step,
    apply_method,
    load_classifier,
    method_penalty,
    method_state,
    resume_method,
)
from dapt.finetune.metrics import compute_metrics
from dapt.finetune.regularizers import EmbeddingNoise, changes_encoder_input, robust_loss, robust_settings
from dapt.finetune.run_files import LOG_COLUMNS, make_summary, write_outputs
from dapt.finetune.task_data import TaskData, load_task, with_copies
from dapt.runtime.batching import bucketed_batches, collate, rank_share
from dapt.runtime.checkpoints import clear_checkpoints
from dapt.runtime.context import (
    Runtime,
    Timer,
    check_finite,
    count_params,
    linear_schedule,
    make_optimizer,
    trainable_state,
    unwrap,
)
from dapt.runtime.distributed import all_reduce_sums
from dapt.runtime.optimizer_step import Progress, Stepper, split_micro
from dapt.runtime.tracking import log_finetune
from dapt.study.defaults import FINETUNE_DEFAULTS
from dapt.tokenize.longtext import per_document


def new_state() -> dict:
    """What a checkpoint records of the run beyond weights and optimizer (`log`: one row per epoch,
    `losses`: this epoch's step losses, so a resumed log matches an uninterrupted one)."""
    return {"step": 0, "best": -1.0, "best_epoch": 0, "bad_epochs": 0, "log": [], "epochs_run": 0, "losses": []}


class FineTuning:
    """One run's training: the model, its data and the loop's state, with the steps named."""

    def __init__(self, base_dir: str, data: TaskData, ckpt_dir: str, params: dict, seed: int, runtime: Runtime):
        self.data, self.ckpt_dir, self.seed, self.runtime = data, Path(ckpt_dir), seed, runtime
        batch = params["batch_size"]
        self.steps_per_epoch = -(-len(data.lengths) // batch)
        self.total = int(round(params["epochs"] * self.steps_per_epoch))
        self.params = params = {**params, "total_steps": self.total}
        torch.manual_seed(seed)
        self.model = apply_method(load_classifier(base_dir, data.labels), params).to(runtime.device)
        self.model.train()
        self.trainable, self.total_params = count_params(self.model)
        if self.trainable == 0:
            raise UserError(f"methods.{params['kind']}", "leaves no trainable parameters")
        self.train_model = self.model
        if runtime.world_size > 1:
            self.train_model = torch.nn.parallel.DistributedDataParallel(self.model)
        self.stepper = Stepper(
            runtime,
            self.train_model,
            self.model.parameters,
            params["max_grad_norm"],
            f"finetune {params['kind']}",
            lambda step: after_optimizer_step(self.model, params, step),
            check_loss=False,
        )
        optimizer = make_optimizer(list(self.model.named_parameters()), params["lr"], params["weight_decay"])
        self.stepper.use(optimizer, linear_schedule(optimizer, int(params["warmup_ratio"] * self.total), self.total))
        self.state = new_state()
        self.noise = EmbeddingNoise(self.model) if robust_settings(params)["adversarial"] != "none" else None

    def best_path(self, epoch: int) -> Path:
        """One file per best epoch: the state a checkpoint records always names weights that exist,
        even if a kill fell between writing a new best and the checkpoint after it."""
        return self.ckpt_dir / f"best-epoch{epoch}.safetensors"

    def resume(self) -> None:
        resumed = self.stepper.resume(self.ckpt_dir)
        if resumed is not None:
            self.state = resumed
            resume_method(self.model, self.params, resumed.get("method_state"))
            print(f"resumed from checkpoint at step {resumed['step']}/{self.total}", flush=True)

    def micro_step(self, part: np.ndarray, weight: float) -> tuple[torch.Tensor, float]:
        """The classification loss of one micro-batch; a method's regulariser (AdaLoRA) only trains."""
        device, train = self.runtime.device, self.data.train
        ids, mask = collate(train["input_ids"], part, self.data.pad_id)
        labels = torch.from_numpy(train["label"][part]).to(device)
        objective, loss = robust_loss(
            self._forward(self.train_model),
            ids.to(device),
            mask.to(device),
            labels,
            self.params,
            self.noise,
            self._forward(self.model),
        )
        objective = (objective + method_penalty(self.model, self.params)) * len(part) * weight
        value = loss.item() * len(part) * weight / self.runtime.world_size
        return objective, value if math.isfinite(objective.item()) else math.nan  # train_step checks it

    def _forward(self, model: torch.nn.Module):
        def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            with self.runtime.autocast():
                return model(input_ids=ids, attention_mask=mask).logits

        return forward

    def train_step(self, idx: np.ndarray) -> float:
        """One optimizer step over the global batch `idx`; returns its mean loss over all ranks."""
        shard, weight = rank_share(idx, self.runtime.rank, self.runtime.world_size)
        parts = split_micro(shard, self.params["grad_accum"])
        loss = self.stepper.step(parts, lambda part: self.micro_step(part, weight), self.state["step"])
        loss = all_reduce_sums({"loss": loss}, self.runtime.device)["loss"]
        check_finite(loss, self.stepper.where, self.state["step"] + 1)  # the same on every rank: they stop together
        return loss

    def end_epoch(self, timer: Timer) -> None:
        """Validate, log the epoch, keep its weights if they are the best so far."""
        state, metric = self.state, self.params["metric"]
        probs = predict_proba(
            self.model, self.data.val["input_ids"], self.data.pad_id, self.runtime, self.params["eval_batch_size"]
        )
        _, gold, probs = per_document(self.data.val, probs)  # windows: one prediction per document
        scores = compute_metrics(gold, probs.argmax(1), self.data.labels)
        epoch = -(-state["step"] // self.steps_per_epoch)
        losses = state["losses"]
        state["epochs_run"] = epoch
        state["log"].append(
            [
                epoch,
                state["step"],
                float(np.mean(losses)) if losses else float("nan"),
                scores["accuracy"],
                scores["macro_f1"],
                self.stepper.scheduler.get_last_lr()[0],
            ]
        )
        if self.runtime.is_main:
            print(
                f"epoch {epoch} step {state['step']}/{self.total} train_loss {state['log'][-1][2]:.4f} "
                f"val_{metric} {scores[metric]:.4f} ({timer.seconds():.0f}s)",
                flush=True,
            )
        losses.clear()
        if scores[metric] > state["best"]:
            state.update(best=scores[metric], best_epoch=epoch, bad_epochs=0)
            if self.runtime.is_main:
                with atomic_path(self.best_path(epoch)) as tmp:
                    save_file(trainable_state(self.model, only_trainable=True), str(tmp))
        else:
            state["bad_epochs"] += 1

    def save_checkpoint(self, timer: Timer) -> None:
        self.state["seconds"] = timer.seconds()
        self.state["method_state"] = method_state(self.model, self.params)
        self.stepper.save(self.ckpt_dir, self.state)
        for old in self.ckpt_dir.glob("best-epoch*.safetensors"):  # the checkpoint names only its own
            if old != self.best_path(self.state["best_epoch"]):
                old.unlink(missing_ok=True)

    def run(self) -> float:
        """Train until the last step or early stopping; returns the seconds spent (resumes included)."""
        state, params = self.state, self.params
        timer = self.timer = Timer()
        timer.start -= state.get("seconds", 0.0)  # time spent before a kill counts too
        progress = Progress(
            self.total, state["step"], every=max(1, self.steps_per_epoch // 10), enabled=self.runtime.is_main
        )
        while state["step"] < self.total and state["bad_epochs"] < params["patience"]:
            epoch, offset = divmod(state["step"], self.steps_per_epoch)
            order = bucketed_batches(
                self.data.lengths, params["batch_size"], torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            )
            for idx in order[offset:]:
                if state["step"] >= self.total:
                    break
                loss = self.train_step(idx)
                state["step"] += 1
                state["losses"].append(loss)
                progress.update(state["step"], loss, len(idx), f" (epoch {epoch + 1})")
                end_of_epoch = state["step"] % self.steps_per_epoch == 0 or state["step"] == self.total
                if end_of_epoch:
                    self.end_epoch(timer)
                if self.runtime.is_main and Stepper.checkpoint_due(
                    state["step"], self.total, params["save_steps"], end_of_epoch
                ):
                    self.save_checkpoint(timer)
                if state["bad_epochs"] >= params["patience"]:
                    break
        return timer.seconds()

    def keep_best(self) -> None:
        """Load the best epoch's weights (rank 0; other ranks: rank 0 may be deleting the file)."""
        best = self.best_path(self.state["best_epoch"])
        if self.runtime.is_main and self.state["best_epoch"] and best.exists():
            unwrap(self.model).load_state_dict(load_file(str(best)), strict=False)


def finetune(
    base_dir: str,
    tokenized_dir: str,
    out_dir: str,
    ckpt_dir: str,
    params: dict,
    seed: int,
    runtime: Runtime,
    pretrain_info: dict | None = None,
    augmented: str | None = None,
    on_divergence: str = "fail",
) -> dict:
    """Fine-tune one run, resuming from its checkpoint if there is one; write model/, log.csv and
    train.json to `out_dir` (rank 0) and return the summary. `augmented`: the run's augmented
    training rows (`dapt.data.augment`), added to the training split. `on_divergence: record` writes a
    diverged run as a failed one (train.json `status: diverged`, no weights) instead of raising, so a
    sweep's too-large learning rate does not stop the study: evaluation and the report say so."""
    missing = sorted({*FINETUNE_DEFAULTS, "kind", "metric"} - set(params))
    if missing:  # the rule passes dapt.study.config.finetune_params, defaults included
        raise UserError("--params", f"missing {missing}", "pass every fine-tuning setting, as the rule does")
    # the model job checked the study's methods already; a run started by hand is checked here, before training
    reading = read_json(Path(tokenized_dir) / "stats.json").get("long_text")
    check_model_supports(
        base_dir, None, {params["kind"]: params}, {Path(tokenized_dir).name: reading} if reading else None
    )
    data = load_task(tokenized_dir, base_dir)
    if params.get("train_size"):  # a learning-curve point: a nested subset of the training split
        from dapt.study.sweeps import subset_examples

        data = TaskData(
            data.labels,
            subset_examples(data.train, params["train_size"], params["train_subset_seed"]),
            data.val,
            data.pad_id,
        )
    if augmented:
        data = TaskData(data.labels, with_copies(data.train, augmented, tokenized_dir, base_dir), data.val, data.pad_id)
        print(f"augment: {len(data.lengths)} training rows with the augmented copies of {augmented}", flush=True)
    run = FineTuning(base_dir, data, ckpt_dir, params, seed, runtime)
    run.resume()
    restore_encoder = None
    if params["kind"] == "head" and runtime.world_size == 1 and not changes_encoder_input(params):
        from dapt.finetune.adapters import store_frozen_encoder

        restore_encoder = store_frozen_encoder(
            run.model, [data.train["input_ids"], data.val["input_ids"]], data.pad_id, runtime, params["eval_batch_size"]
        )
        print(f"head: encoder outputs {'stored once' if restore_encoder else 'recomputed every step'}", flush=True)
    failure: dict = {}
    try:
        seconds = run.run()
    except Diverged as err:
        if on_divergence != "record":
            raise
        failure, seconds = err.record(), run.timer.seconds()
    finally:
        if restore_encoder:
            restore_encoder()
    if not failure:
        run.keep_best()
    summary = {**make_summary(run, seconds, pretrain_info, read_json(Path(tokenized_dir) / "stats.json")), **failure}
    if runtime.is_main:
        if failure:
            print(f"warning: {failure['error']}; recorded as a failed run (on_divergence: record)", flush=True)
        write_outputs(run, summary, Path(out_dir))
        clear_checkpoints(ckpt_dir)
        log_finetune(summary, run.state["log"], LOG_COLUMNS)  # experiment tracking, if the study has it
    return summary
