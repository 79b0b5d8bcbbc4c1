"""The recipe side of bench/bench_study.py: the shell script a user would write to run the study's grid
with the Hugging Face example scripts, built from the same config the workflow runs.

One ``run_mlm.py`` per pretraining chain (TAPT continued from the DAPT output for DAPT+TAPT), one
``run_classification.py --do_train --do_eval --do_predict`` per full fine-tuning run, and
``study_peft.py`` (a user's short peft script) per LoRA or linear-probe run; every value comes from the
workflow's own resolution of the config (`dapt.study.config.mlm_params`, `dapt.study.grid.run_params`),
so both sides train with the same steps, epochs, batch sizes, learning rates, warm-up, weight decay,
lengths, seeds and precision.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

#: The scripts a command runs: the two example scripts (from --recipes) and the peft script beside this file.
MLM = "run_mlm.py"
CLASSIFY = "run_classification.py"
PEFT = "study_peft.py"
METRIC = "accuracy"  # the metric folder run_classification.py and study_peft.py load (evaluate.load)


@dataclass
class Command:
    name: str  # "mlm/<chain>" or "ft/<variant>/<method>"
    script: str  # MLM, CLASSIFY or PEFT
    args: list[str] = field(default_factory=list)
    run: dict | None = None  # the fine-tuning run (task, model, variant, method, seed), None for MLM

    @property
    def out(self) -> str:
        return self.name


def _num(x: float) -> str:
    return f"{x:g}"


def precision_flags(precision: str) -> list[str]:
    """The Trainer's switch for the precision the workflow resolved: bf16 autocast, or nothing (fp32)."""
    if precision == "bf16":
        return ["--bf16", "True"]
    if precision == "fp32":
        return []
    raise ValueError(f"the recipes run fp32 or bf16 on a CPU, not {precision!r}")


def stage_file(stage: str) -> str:
    """The text file `study_to_files.py` writes for a stage: the corpus for DAPT, the task's training
    text for TAPT."""
    return "files/corpus.json" if stage.startswith("dapt-") else "files/tapt.json"


def mlm_commands(cfg: dict, task: str, model_dir: str, precision: str) -> list[Command]:
    """One run_mlm.py per chain prefix the variants need, parents first."""
    from dapt.study import config as study

    chains: list[str] = []
    for variant in cfg["variants"]:
        chain = study.chain_for(cfg, variant, task)
        stages = chain.split("+") if chain else []
        for i in range(len(stages)):
            prefix = "+".join(stages[: i + 1])
            if prefix not in chains:
                chains.append(prefix)
    out = []
    for chain in chains:
        parent, stage = study.split_chain(chain)
        p = study.mlm_params(cfg, stage)
        args = [
            "--model_name_or_path", f"mlm/{parent}" if parent else model_dir,
            "--train_file", stage_file(stage),
            # the smallest held-out part the script accepts (0 % fails): the workflow holds out none
            "--validation_split_percentage", "1",
            "--do_train",
            "--max_seq_length", str(p["max_length"]),  # packed blocks (group_texts), no --line_by_line
            "--mlm_probability", _num(p["mlm_probability"]),
            "--per_device_train_batch_size", str(p["batch_size"]),
            "--gradient_accumulation_steps", str(p.get("grad_accum", 1)),
            "--learning_rate", _num(p["lr"]),
            "--weight_decay", _num(p["weight_decay"]),
            "--warmup_steps", _num(p["warmup_ratio"]),  # a float < 1: the ratio of the steps (transformers 5)
            "--max_grad_norm", _num(p.get("max_grad_norm", 1.0)),
            *(["--max_steps", str(p["max_steps"])] if p.get("max_steps") else []),
            *(["--num_train_epochs", _num(p["epochs"])] if not p.get("max_steps") else []),
            "--save_steps", str(p["save_steps"]),
            "--save_total_limit", "1",
            "--seed", str(cfg.get("pretrain_seed", 0)),
            *precision_flags(precision),
            "--output_dir", f"mlm/{chain}",
        ]  # fmt: skip
        out.append(Command(f"mlm/{chain}", MLM, args))
    return out


def finetune_commands(cfg: dict, model_dir: str, precision: str) -> list[Command]:
    """One fine-tuning run per run of the grid: run_classification.py (full) or study_peft.py (lora, head)."""
    from dapt.study import config as study
    from dapt.study import grid

    out = []
    for run in grid.runs(cfg):
        hp = grid.run_params(cfg, run["task"], run["method"])
        chain = study.chain_for(cfg, run["variant"], run["task"])
        kind = hp["kind"]
        common = [
            "--model_name_or_path", f"mlm/{chain}" if chain else model_dir,
            "--train_file", "files/train.csv",
            "--validation_file", "files/validation.csv",
            "--test_file", "files/test.csv",
            "--max_seq_length", str(hp["max_length"]),
            "--train_sampling_strategy", "group_by_length",  # transformers 5's --group_by_length
            "--per_device_train_batch_size", str(hp["batch_size"]),
            "--gradient_accumulation_steps", str(hp.get("grad_accum", 1)),
            "--per_device_eval_batch_size", str(hp["eval_batch_size"]),
            "--learning_rate", _num(hp["lr"]),
            "--weight_decay", _num(hp["weight_decay"]),
            "--warmup_steps", _num(hp["warmup_ratio"]),
            "--max_grad_norm", _num(hp["max_grad_norm"]),
            "--num_train_epochs", _num(hp["epochs"]),
            # the workflow validates every epoch and keeps the best epoch's weights
            "--eval_strategy", "epoch",
            "--save_strategy", "epoch",
            "--save_total_limit", "1",
            "--load_best_model_at_end", "True",
            "--metric_for_best_model", METRIC,
            "--seed", str(run["seed"]),
            *precision_flags(precision),
        ]  # fmt: skip
        name = f"ft/{run['variant']}/{run['method']}/seed{run['seed']}"
        if kind == "full":
            args = ["--do_train", "--do_eval", "--do_predict", "--pad_to_max_length", "False", *common]
            out.append(Command(name, CLASSIFY, [*args, "--output_dir", name], run))
        elif kind in ("lora", "head"):
            lora = (
                ["--lora_r", str(hp["r"]), "--lora_alpha", str(hp["alpha"]), "--lora_dropout", _num(hp["dropout"])]
                if kind == "lora"
                else []
            )
            out.append(Command(name, PEFT, ["--method", kind, *lora, *common, "--output_dir", name], run))
        else:
            raise ValueError(f"method kind {kind!r} has no recipe counterpart here (full, lora, head)")
    return out


def script_text(
    commands: list[Command], python: str, recipes: Path, peft_script: Path, to_files: Path, corpus: str, task_dir: str
) -> str:
    """The shell script: convert the prepared data, put the metric folder where evaluate.load looks first,
    then every run, one after the other, each logging to logs/<name>.log and its time (bash's `time`:
    wall, user and system seconds, children included) to logs/times.txt."""
    where = {MLM: recipes / MLM, CLASSIFY: recipes / CLASSIFY, PEFT: peft_script}
    q = shlex.quote
    lines = [
        "#!/usr/bin/env bash",
        "# The study's grid run with the Hugging Face example scripts (generated by bench/bench_study.py).",
        "set -euo pipefail",
        'export HF_HOME="$PWD/hf_home" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1',
        f"PY={q(python)}",
        "mkdir -p logs",
        "TIMEFORMAT='%R %U %S'",
        "step() { local name=$1; shift; printf '%s ' \"$name\" >> logs/times.txt; "
        r'{ time "$@" > "logs/${name//\//_}.log" 2>&1 ; } 2>> logs/times.txt; }',
        f'step files "$PY" {q(str(to_files))} --corpus {q(corpus)} --task {q(task_dir)} --out files',
        f"cp -r {q(str(recipes / METRIC))} {METRIC}  # evaluate.load('{METRIC}') reads ./{METRIC}/{METRIC}.py",
    ]
    for c in commands:
        args = " ".join(q(a) for a in c.args)
        lines.append(f'step {q(c.name)} "$PY" {q(str(where[c.script]))} {args}')
    return "\n".join(lines) + "\n"
