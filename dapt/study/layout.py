"""Where results live: the one description of the results folder that the rules and the report share.

A run's outputs, logs and benchmark are named by its wildcards (`RUN`); the report finds which run a
file belongs to by reading that path back, so both directions are defined here, next to each
other. The report's file list is here too: rules/report.smk declares it as the rule's outputs and
the report writes exactly it (a test checks both), so no file is written undeclared.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dapt.core.errors import UserError

RUN = "{task}/{model}/{variant}/{method}/seed{seed}"
RUN_KEYS = ("task", "model", "variant", "method", "seed")
REPORT_DIR = "results/report"
#: The partial report of `snakemake report_available` (what finished; never part of `all`).
REPORT_AVAILABLE_DIR = REPORT_DIR + "_available"
#: One file per job: `{LOG_DIR}/{rule}/<wildcards>.log` and `{BENCHMARK_DIR}/{rule}/<wildcards>.tsv`
#: (`log_path`, `benchmark_path`; `benchmark_key` reads a benchmark's path back).
LOG_DIR = "results/logs"
BENCHMARK_DIR = "results/benchmarks"
#: Downloads, kept across studies (dapt.data.sources checks each against its sha256).
CACHE = "results/.cache/downloads"
#: A model's stored copy: the base checkpoint of every chain and run.
MODEL = "results/models/{model}"
#: The record that a stored model can take every method and long-text reading of the study (check_model).
MODEL_CHECK = "results/models/{model}.checked.json"
#: A corpus's documents and a task's splits, normalized (dapt.data.prepare).
CORPUS = "results/data/corpora/{corpus}.parquet"
TASK = "results/data/tasks/{task}"
#: A pretrained chain (stage+stage+...): its model, MLM loss curve and summary (totals over the chain).
PRETRAIN = "results/pretrain/{model}/{chain}"
PRETRAIN_MODEL = PRETRAIN + "/model"
PRETRAIN_LOSS = PRETRAIN + "/loss.csv"
PRETRAIN_SUMMARY = PRETRAIN + "/summary.json"
#: Resumable checkpoints, outside the declared outputs: Snakemake does not wipe them when it reruns a killed job.
PRETRAIN_CHECKPOINTS = "results/checkpoints/pretrain/{model}/{chain}"
#: A fine-tuning run: its model (or adapter), training log and train.json.
FINETUNE = "results/finetune/" + RUN
FINETUNE_MODEL = FINETUNE + "/model"
FINETUNE_LOG = FINETUNE + "/log.csv"
FINETUNE_TRAIN = FINETUNE + "/train.json"
FINETUNE_CHECKPOINTS = "results/checkpoints/finetune/" + RUN
#: A run's evaluation on the test split (and its perturbed copies).
EVALUATE = "results/evaluate/" + RUN
EVALUATE_METRICS = EVALUATE + "/metrics.json"
EVALUATE_PREDICTIONS = EVALUATE + "/predictions.csv"
EVALUATE_ROBUSTNESS = EVALUATE + "/robustness.json"
#: The TF-IDF baseline of a task (dapt.finetune.tfidf_baseline).
BASELINE = "results/baseline/{task}/metrics.json"
#: The deploy stage: the best run of a task and method exported, then measured.
DEPLOY = "results/deploy/{task}/{method}"
DEPLOY_EXPORT = DEPLOY + "/export"
DEPLOY_MEASURE = DEPLOY + "/measure.json"
#: A pruned copy of the deployed run (`pruning`: distilled, or hard labels only; dapt.deploy.prune): exported
#: and measured like it, its fine-tuning resumable from checkpoints outside the declared outputs.
DEPLOY_PRUNED = DEPLOY + "/pruned/{pruning}"
DEPLOY_PRUNED_EXPORT = DEPLOY_PRUNED + "/export"
DEPLOY_PRUNED_MEASURE = DEPLOY_PRUNED + "/measure.json"
DEPLOY_PRUNED_CHECKPOINTS = "results/checkpoints/deploy/{task}/{method}/{pruning}"
#: Packed MLM blocks of a pretraining stage: a folder of tokens.bin + index.json (dapt.tokenize.blocks).
MLM_BLOCKS = "results/tokenized/{model}/mlm/{stage}.L{length}"
#: One of a corpus's `shards` token streams (numbered from 1), gathered into MLM_BLOCKS, then removed.
MLM_SHARD = MLM_BLOCKS + ".shards/{shard}-of-{shards}"
#: A task tokenized for a model: `long_text` is "" for the head strategy (the default), else a suffix
#: naming the strategy and its settings (`long_text_suffix`), so each setting has its own cache.
TOKENIZED_TASK = "results/tokenized/{model}/tasks/{task}.L{length}{long_text}"
#: The suffixes `long_text_suffix` writes (the rule's wildcard constraint).
LONG_TEXT_SUFFIX = r"(\.head_tail-h\d+|\.windows-s\d+-n\d+-(mean|max))?"
#: kNN-TAPT's selection (dapt.pretrain.knn_selection): train.parquet (the task's training text + the chosen
#: corpus documents, what the stage's MLM blocks are made of), neighbours.parquet and selection.json; per encoder model.
KNN_SELECTION = "results/knn/{model}/{task}/{corpus}-k{k}"
#: Augmented copies of a task's training rows, one file per augment setting (dapt.study.settings.augment_name).
AUGMENTED = "results/data/augmented/{task}/{augment}.parquet"
#: A perturbed copy of a task's test split (dapt.data.augment.write_perturbed): one file, read by every run.
PERTURBED = "results/data/perturbed/{task}/{perturbation}.parquet"
#: WordNet's synonyms (lemma -> synonyms), for the synonym operation.
WORDNET = "results/data/wordnet/synonyms.json"
_NAME = r"[A-Za-z][A-Za-z0-9_]*"
#: A pretraining stage's folder name (dapt.study.config.stage_name): dapt-<corpus>, tapt-<task>,
#: tapt_knn-<task>-<corpus>-k<k>.
STAGE_WILDCARD = rf"(?:(?:dapt|tapt)-{_NAME}|tapt_knn-{_NAME}-{_NAME}-k\d+)"
#: A chain of stages, each continuing from the one before: stage+stage+...
CHAIN_WILDCARD = rf"{STAGE_WILDCARD}(?:\+{STAGE_WILDCARD})*"


@dataclass(frozen=True)
class ReportFile:
    """One file of the report; `caption` (report/<caption>.rst) puts it in Snakemake's HTML report."""

    name: str
    caption: str | None = None
    category: str | None = None
    #: None: every report has it; "sweeps" / "curves" / "robustness": only a study that sweeps
    #: hyperparameters / has learning-curve sizes (dapt.study.grid.has_sweeps / has_sizes) / a robustness:
    #: block writes and declares it.
    when: str | None = None


REPORT = (
    ReportFile("table.md", "table", "Tables"),
    ReportFile("table.csv"),
    ReportFile("table.tex"),
    ReportFile("table_paper.tex"),
    ReportFile("results.csv", "results", "Tables"),
    ReportFile("notes.md", "notes", "Tables"),
    ReportFile("ensemble.csv"),
    ReportFile("majority.csv", "majority", "Tables"),
    ReportFile("baseline.csv", "baseline", "Tables"),
    ReportFile("sweep.md", "sweep", "Tables", when="sweeps"),
    ReportFile("sweep.csv", when="sweeps"),
    ReportFile("learning_curve.md", "learning_curve", "Tables", when="curves"),
    ReportFile("learning_curve.csv", when="curves"),
    ReportFile("learning_curve.png", "learning_curve_plot", "Plots", when="curves"),
    ReportFile("robustness.md", "robustness", "Robustness", when="robustness"),
    ReportFile("robustness.csv", when="robustness"),
    ReportFile("robustness.png", "robustness_plot", "Robustness", when="robustness"),
    ReportFile("significance.csv", "significance", "Tables"),
    ReportFile("runtime.csv", "runtime", "Cost"),
    ReportFile("runtime.md"),
    ReportFile("scores.png", "scores", "Plots"),
    ReportFile("mlm_loss.png", "mlm_loss", "Plots"),
    ReportFile("finetune_curves.png", "finetune_curves", "Plots"),
    ReportFile("f1_vs_params.png", "f1_vs_params", "Plots"),
    ReportFile("provenance.json", "provenance", "Provenance"),
)
REPORT_FILES = tuple(f.name for f in REPORT if f.when is None)
#: The deploy stage's table and plot (rules/deploy.smk, rule deploy_report; dapt.deploy.table writes them).
DEPLOY_REPORT = (
    ReportFile("deploy.md", "deploy", "Deployment"),
    ReportFile("deploy.csv"),
    ReportFile("deploy.tex"),
    ReportFile("deploy.png", "deploy_plot", "Deployment"),
)


def report_files(folder: str = REPORT_DIR) -> list[str]:
    """Paths of every report file in `folder` (the workflow's final targets)."""
    return [f"{folder}/{name}" for name in REPORT_FILES]


def report_list(sweeps: bool = False, curves: bool = False, robustness: bool = False) -> tuple[ReportFile, ...]:
    """The report's files for a study that does or does not sweep hyperparameters / have learning
    curves / evaluate robustness (the rule declares exactly these; the report writes exactly these)."""
    wanted = {
        None,
        *(["sweeps"] if sweeps else []),
        *(["curves"] if curves else []),
        *(["robustness"] if robustness else []),
    }
    return tuple(f for f in REPORT if f.when in wanted)


def report_files_of(files: tuple[ReportFile, ...], folder: str = REPORT_DIR) -> list[str]:
    """Paths of some report files (e.g. `DEPLOY_REPORT`) in `folder`."""
    return [f"{folder}/{f.name}" for f in files]


def log_path(rule: str, name: str) -> str:
    """A job's log: `name` is the job's wildcards as a path (`{model}/{chain}`), or the rule's name."""
    return f"{LOG_DIR}/{rule}/{name}.log"


def benchmark_path(rule: str, name: str) -> str:
    """A job's benchmark, named as `benchmark_key` reads it back (rule, then wildcards)."""
    return f"{BENCHMARK_DIR}/{rule}/{name}.tsv"


def long_text_suffix(settings: Mapping[str, Any]) -> str:
    """'' (head), '.head_tail-h64' or '.windows-s128-n8-mean' (stride, cap, pool) of resolved
    `dapt.study.config.long_text_params`."""
    if settings["strategy"] == "head_tail":
        return f".head_tail-h{settings['head']}"
    if settings["strategy"] == "windows":
        return f".windows-s{settings['stride']}-n{settings['max_windows']}-{settings['pool']}"
    return ""


def tokenized_task(model: str, task: str, length: int, settings: Mapping[str, Any]) -> str:
    """Folder of a task tokenized for a model at a length with a long_text setting."""
    return TOKENIZED_TASK.format(model=model, task=task, length=length, long_text=long_text_suffix(settings))


def value_text(value: Any) -> str:
    """A hyperparameter value as exact, path-safe text: 0.001, 2e-5, 16, true, houlsby (floats by
    their shortest exact repr, so two different values never share a name)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        mantissa, e, exponent = repr(value).partition("e")
        return f"{mantissa}e{int(exponent)}" if e else mantissa
    return str(value)


def method_run_name(method: str, settings: Mapping[str, Any], train_size: int | None = None) -> str:
    """The `{method}` folder of a run: the method's name, then `-<key><value>` for each swept key
    (alphabetical) and `-n<size>` for a learning-curve size: `lora-lr0.001-r16`, `full-n100`. A run
    with neither keeps the method's name, so a study without sweeps has the paths it always had."""
    parts = [method, *(f"{k}{value_text(v)}" for k, v in sorted(settings.items()))]
    return "-".join(parts + ([f"n{train_size}"] if train_size is not None else []))


#: What a `{method}` folder may be (the Snakemake wildcard constraint): a method name, then the
#: `-`-separated settings of method_run_name.
METHOD_WILDCARD = r"[A-Za-z][A-Za-z0-9_]*(-[A-Za-z0-9_.]+)*"


def run_key(run: Mapping[str, Any]) -> str:
    """The wildcard path of a run (`RUN` filled in), as its outputs and benchmarks spell it."""
    return RUN.format(**{k: run[k] for k in RUN_KEYS})


def _folders_above(path: str | os.PathLike, n: int, what: str) -> list[str]:
    """The n folder names above a file: its wildcards, by the layout."""
    parts = Path(path).parent.parts
    if len(parts) < n:
        raise UserError(str(path), f"{what} path does not encode its wildcards")
    return list(parts[-n:])


def run_of_file(path: str | os.PathLike, what: str) -> dict[str, str]:
    """The run a per-run file belongs to (`.../{task}/{model}/{variant}/{method}/seed{seed}/<file>`);
    the seed is returned as the text after 'seed'."""
    task, model, variant, method, seed = _folders_above(path, 5, what)
    if not seed.startswith("seed"):
        raise UserError(str(path), f"{what} path lacks the seed{{N}} folder")
    return {"task": task, "model": model, "variant": variant, "method": method, "seed": seed[4:]}


def chain_of_file(path: str | os.PathLike, what: str) -> tuple[str, str]:
    """(model, chain) of a pretraining file (`.../pretrain/{model}/{chain}/<file>`)."""
    model, chain = _folders_above(path, 2, what)
    return model, chain


def benchmark_key(path: str | os.PathLike) -> tuple[str, list[str]]:
    """Rule name and wildcard parts of `.../benchmarks/{rule}/{w1}/.../{wn}.tsv`.

    The path is the only place the benchmark names its job, so it must follow that layout.
    """
    parts = list(Path(path).with_suffix("").parts)
    idx = [i for i, p in enumerate(parts) if p == "benchmarks"]
    if not idx or idx[-1] == len(parts) - 1:
        raise UserError(
            str(path),
            "benchmark path is not results/benchmarks/{rule}/...tsv",
            "benchmark files must live under a 'benchmarks' folder named by rule",
        )
    i = idx[-1]
    return parts[i + 1], parts[i + 2 :]  # a job without wildcards: benchmarks/{rule}.tsv
