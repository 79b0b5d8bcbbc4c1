"""Knowledge distillation (Hinton et al., 2015) into a smaller classifier, through fine-tuning's own loop.

The student (e.g. a pruned copy of the teacher, `dapt.deploy.prune`) is fine-tuned as a `full` run by
`dapt.finetune.fine_tuning.FineTuning`: the same optimizer step (`dapt.runtime.optimizer_step.Stepper`:
precision, gradient accumulation, clipping), checkpoints and resume, validation per epoch, early stopping and
best epoch. Only a micro-batch's loss differs:

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)

with the teacher's logits computed once over the training split before the first step (the teacher is
then freed). `alpha: 0` is plain fine-tuning on the hard labels (no teacher is run), the comparison that
shows what distillation buys.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dapt.core.errors import UserError
from dapt.core.files import read_json
from dapt.finetune.fine_tuning import FineTuning
from dapt.finetune.methods import load_classifier
from dapt.finetune.run_files import make_summary, write_outputs
from dapt.finetune.task_data import load_task
from dapt.runtime.batching import collate, length_sorted_batches
from dapt.runtime.checkpoints import clear_checkpoints
from dapt.runtime.context import Runtime
from dapt.study.defaults import FINETUNE_DEFAULTS


def distill_loss(
    student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor, temperature: float, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(objective, hard-label cross-entropy) of one batch, means over its rows."""
    student = student.float()
    hard = F.cross_entropy(student, labels)
    if teacher is None or alpha == 0:
        return hard, hard
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student / t, dim=-1),
        F.log_softmax(teacher.float() / t, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    return alpha * t * t * soft + (1 - alpha) * hard, hard


@torch.no_grad()
def teacher_logits(
    teacher_dir: str | Path, input_ids: list, labels: list[str], pad_id: int, runtime: Runtime, batch_size: int
) -> torch.Tensor:
    """The teacher's logits over every row (fp32, on the CPU), in the rows' order."""
    model = load_classifier(str(teacher_dir), labels, trust=False).to(runtime.device).eval()
    out = torch.zeros(len(input_ids), len(labels))
    for idx in length_sorted_batches([len(x) for x in input_ids], batch_size):
        ids, mask = collate(input_ids, idx, pad_id)
        with runtime.autocast():
            logits = model(input_ids=ids.to(runtime.device), attention_mask=mask.to(runtime.device)).logits
        out[torch.as_tensor(np.asarray(idx))] = logits.float().cpu()
    del model
    return out


class Distillation(FineTuning):
    """A fine-tuning run whose micro-batch loss is the distillation loss (`teacher`: the training rows'
    teacher logits, or None for hard labels only)."""

    def __init__(self, *args, teacher: torch.Tensor | None, temperature: float, alpha: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher, self.temperature, self.alpha = teacher, temperature, alpha

    def micro_step(self, part: np.ndarray, weight: float) -> tuple[torch.Tensor, float]:
        device, train = self.runtime.device, self.data.train
        ids, mask = collate(train["input_ids"], part, self.data.pad_id)
        labels = torch.from_numpy(train["label"][part]).to(device)
        student = self._forward(self.train_model)(ids.to(device), mask.to(device))
        teacher = None if self.teacher is None else self.teacher[torch.as_tensor(np.asarray(part))].to(device)
        objective, loss = distill_loss(student, teacher, labels, self.temperature, self.alpha)
        objective = objective * len(part) * weight
        value = loss.item() * len(part) * weight / self.runtime.world_size
        return objective, value if math.isfinite(objective.item()) else math.nan


def distill(
    student_dir: str | Path,
    teacher_dir: str | Path | None,
    tokenized_dir: str | Path,
    out_dir: str | Path,
    ckpt_dir: str | Path,
    params: dict,
    seed: int,
    runtime: Runtime,
    temperature: float,
    alpha: float,
) -> dict:
    """Fine-tune the classifier in `student_dir` (a `full` run) on the task's training split, distilled from
    the classifier in `teacher_dir` (alpha > 0), resuming from `ckpt_dir`; write model/, log.csv and
    train.json to `out_dir` (rank 0) and return the summary (its `distill` entry: the loss's settings)."""
    params = {**FINETUNE_DEFAULTS, **params, "kind": "full"}
    params.setdefault("metric", "macro_f1")
    if alpha > 0 and teacher_dir is None:
        raise UserError("deploy.prune.distill.alpha", f"{alpha} needs a teacher", "set alpha: 0 for hard labels only")
    data = load_task(tokenized_dir, student_dir)
    teacher = None
    if alpha > 0:
        teacher = teacher_logits(
            teacher_dir, data.train["input_ids"], data.labels, data.pad_id, runtime, params["eval_batch_size"]
        )
        print(f"distill: teacher logits over {len(teacher)} training rows (T={temperature}, alpha={alpha})", flush=True)
    run = Distillation(
        str(student_dir),
        data,
        str(ckpt_dir),
        params,
        seed,
        runtime,
        teacher=teacher,
        temperature=temperature,
        alpha=alpha,
    )
    run.resume()
    seconds = run.run()
    run.keep_best()
    stats = read_json(Path(tokenized_dir) / "stats.json")
    summary = {
        **make_summary(run, seconds, None, stats),
        "distill": {"teacher": str(teacher_dir) if alpha > 0 else None, "temperature": temperature, "alpha": alpha},
    }
    if runtime.is_main:
        write_outputs(run, summary, Path(out_dir))
        clear_checkpoints(ckpt_dir)
    return summary
