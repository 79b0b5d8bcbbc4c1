"""The study's grid of runs, the one place where sweeps and learning-curve sizes become runs.

A run is (task, model, variant, method folder, seed). The method folder is the method's name, or,
for a swept or sized run, the name with its settings (`dapt.study.layout.method_run_name`:
`lora-lr0.001-r16`, `full-n100`), so a study without sweeps keeps the paths it always had. The rules
list runs and their hyperparameters from here; the report reads a method folder back into its
method, swept settings and size from here too.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dapt.core.errors import UserError
from dapt.study import layout
from dapt.study.config import finetune_params, method_variants
from dapt.study.sweeps import is_sweep


@dataclass(frozen=True)
class RunSpec:
    """One method folder of a task: its method, swept settings (sorted by key) and training size."""

    method: str
    name: str
    settings: tuple[tuple[str, Any], ...] = ()
    train_size: int | None = None
    rank: int = 0  # the combination's place in the product of the swept lists (the tie-break order)

    def label(self) -> str:
        """'lr=0.001, r=16' ('' for an unswept run)."""
        return ", ".join(f"{k}={layout.value_text(v)}" for k, v in self.settings)


def swept_values(config: Mapping, task: str, method: str) -> dict[str, list]:
    """The swept keys of a method on a task (after the finetune < task < method precedence) and
    their lists, keys in alphabetical order."""
    params = finetune_params(dict(config), task, method)
    return {k: v for k, v in sorted(params.items()) if is_sweep(k, v)}


def train_sizes(config: Mapping, task: str) -> list[int | None]:
    """A task's learning-curve sizes, smallest first: its max_examples.train list, else the
    top-level train_sizes; [None] (the whole training split) without a curve."""
    cap = (config["tasks"][task].get("max_examples") or {}).get("train")
    if isinstance(cap, list):
        return sorted(cap)
    return sorted(config["train_sizes"]) if config.get("train_sizes") else [None]


def method_runs(config: Mapping, task: str, method: str) -> list[RunSpec]:
    """Every method folder of a method on a task: swept combinations (in the product order of the
    lists) times training sizes."""
    swept = swept_values(config, task, method)
    out = []
    for rank, values in enumerate(itertools.product(*swept.values())):
        settings = tuple(zip(swept, values))
        for size in train_sizes(config, task):
            out.append(RunSpec(method, layout.method_run_name(method, dict(settings), size), settings, size, rank))
    return out


def runs(config: Mapping) -> Iterator[dict]:
    """Every (task, model, variant, method folder, seed) of the grid, in config order."""
    for task in config["tasks"]:
        specs = {m: method_runs(config, task, m) for m in config["methods"]}
        for model in config["models"]:
            for variant in config["variants"]:
                for method in config["methods"]:
                    if variant not in method_variants(dict(config), task, method):
                        continue
                    for spec in specs[method]:
                        for seed in config["seeds"]:
                            yield dict(task=task, model=model, variant=variant, method=spec.name, seed=seed)


def run_spec(config: Mapping, task: str, name: str) -> RunSpec:
    """What a method folder of a task stands for."""
    for method in config["methods"]:
        if name == method or name.startswith(f"{method}-"):
            for spec in method_runs(config, task, method):
                if spec.name == name:
                    return spec
    raise UserError(
        f"run {task}/…/{name}", "not a method folder of the study's grid", "was the config changed since the run?"
    )


def run_params(config: Mapping, task: str, name: str) -> dict:
    """Hyperparameters of a run (dapt.study.config.finetune_params with the run's swept values; a
    learning-curve run also gets `train_size` and the seed of its nested subset, `split_seed`)."""
    spec = run_spec(config, task, name)
    params = finetune_params(dict(config), task, spec.method)
    params.update(spec.settings)
    if spec.train_size is not None:
        params.update(train_size=spec.train_size, train_subset_seed=config.get("split_seed", 0))
    return params


def task_metric(config: Mapping, task: str) -> str:
    """The metric a task is scored by (its default lives in dapt.study.config.finetune_params)."""
    return finetune_params(dict(config), task, next(iter(config["methods"])))["metric"]


def prepare_spec(config: Mapping, task: str) -> dict:
    """The task's config as the data step reads it: a list of max_examples.train sizes caps the
    split at its largest (the smaller sizes are subsets taken at fine-tuning time)."""
    spec = dict(config["tasks"][task])
    cap = (spec.get("max_examples") or {}).get("train")
    if isinstance(cap, list):
        spec["max_examples"] = {**spec["max_examples"], "train": max(cap)}
    return spec


def has_sweeps(config: Mapping) -> bool:
    """Whether any method of any task sweeps a hyperparameter (the report then selects and writes sweep.*)."""
    if not _complete(config):
        return False
    return any(swept_values(config, t, m) for t in config["tasks"] for m in config["methods"])


def has_sizes(config: Mapping) -> bool:
    """Whether any task has learning-curve sizes (the report then writes learning_curve.*)."""
    return _complete(config) and any(train_sizes(config, t) != [None] for t in config["tasks"])


def report_list(config: Mapping) -> tuple[layout.ReportFile, ...]:
    """The report's files for this study: the rule declares exactly these, the report writes exactly these."""
    return layout.report_list(has_sweeps(config), has_sizes(config), bool(config.get("robustness")))


def _complete(config: Mapping) -> bool:
    """Whether the config has a grid at all (the report may be run with a partial config)."""
    return all(
        isinstance(config.get(k), (dict, list)) and config.get(k)
        for k in ("tasks", "methods", "models", "variants", "seeds")
    )
