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

from dapt.errors import UserError

RUN = "{task}/{model}/{variant}/{method}/seed{seed}"
RUN_KEYS = ("task", "model", "variant", "method", "seed")
REPORT_DIR = "results/report"
BENCHMARK_DIR = "results/benchmarks"
#: Packed MLM blocks of a pretraining stage: a folder of tokens.bin + index.json (dapt.blocks).
MLM_BLOCKS = "results/tokenized/{model}/mlm/{stage}.L{length}"
#: One of a corpus's `shards` token streams (numbered from 1), gathered into MLM_BLOCKS, then removed.
MLM_SHARD = MLM_BLOCKS + ".shards/{shard}-of-{shards}"
#: A task tokenized for a model: `long_text` is "" for the head strategy (the default), else a suffix
#: naming the strategy and its settings (`long_text_suffix`), so each setting has its own cache.
TOKENIZED_TASK = "results/tokenized/{model}/tasks/{task}.L{length}{long_text}"
#: The suffixes `long_text_suffix` writes (the rule's wildcard constraint).
LONG_TEXT_SUFFIX = r"(\.head_tail-h\d+|\.windows-s\d+-n\d+-(mean|max))?"


@dataclass(frozen=True)
class ReportFile:
    """One file of the report; `caption` (report/<caption>.rst) puts it in Snakemake's HTML report."""

    name: str
    caption: str | None = None
    category: str | None = None


REPORT = (
    ReportFile("table.md", "table", "Tables"),
    ReportFile("table.csv"),
    ReportFile("table.tex"),
    ReportFile("table_paper.tex"),
    ReportFile("results.csv", "results", "Tables"),
    ReportFile("notes.md", "notes", "Tables"),
    ReportFile("ensemble.csv"),
    ReportFile("majority.csv", "majority", "Tables"),
    ReportFile("significance.csv", "significance", "Tables"),
    ReportFile("runtime.csv", "runtime", "Cost"),
    ReportFile("runtime.md"),
    ReportFile("scores.png", "scores", "Plots"),
    ReportFile("mlm_loss.png", "mlm_loss", "Plots"),
    ReportFile("finetune_curves.png", "finetune_curves", "Plots"),
    ReportFile("f1_vs_params.png", "f1_vs_params", "Plots"),
    ReportFile("provenance.json", "provenance", "Provenance"),
)
REPORT_FILES = tuple(f.name for f in REPORT)
#: The deploy stage's table and plot (rules/deploy.smk, rule deploy_report; dapt.deploy.report writes them).
DEPLOY_REPORT = (
    ReportFile("deploy.md", "deploy", "Deployment"),
    ReportFile("deploy.csv"),
    ReportFile("deploy.tex"),
    ReportFile("deploy.png", "deploy_plot", "Deployment"),
)


def report_files(folder: str = REPORT_DIR) -> list[str]:
    """Paths of every report file in `folder` (the workflow's final targets)."""
    return [f"{folder}/{name}" for name in REPORT_FILES]


def report_files_of(files: tuple[ReportFile, ...], folder: str = REPORT_DIR) -> list[str]:
    """Paths of some report files (e.g. `DEPLOY_REPORT`) in `folder`."""
    return [f"{folder}/{f.name}" for f in files]


def long_text_suffix(settings: Mapping[str, Any]) -> str:
    """'' (head), '.head_tail-h64' or '.windows-s128-n8-mean' (stride, cap, pool) of resolved
    `dapt.config.long_text_params`."""
    if settings["strategy"] == "head_tail":
        return f".head_tail-h{settings['head']}"
    if settings["strategy"] == "windows":
        return f".windows-s{settings['stride']}-n{settings['max_windows']}-{settings['pool']}"
    return ""


def tokenized_task(model: str, task: str, length: int, settings: Mapping[str, Any]) -> str:
    """Folder of a task tokenized for a model at a length with a long_text setting."""
    return TOKENIZED_TASK.format(model=model, task=task, length=length, long_text=long_text_suffix(settings))


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
        raise UserError(str(path), "benchmark path is not results/benchmarks/{rule}/...tsv",
                        "benchmark files must live under a 'benchmarks' folder named by rule")
    i = idx[-1]
    return parts[i + 1], parts[i + 2:]  # a job without wildcards: benchmarks/{rule}.tsv
