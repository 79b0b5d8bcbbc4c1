import json
import os
import sys
from pathlib import Path

import yaml
from snakemake.utils import min_version, validate

min_version("9.0")

# The workflow's Python package sits beside this file; jobs (local, conda or cluster) import it.
BASE = Path(workflow.basedir)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in [str(BASE), os.environ.get("PYTHONPATH", "")] if p
)
# `python` in job commands is this interpreter unless a conda env puts its own first.
os.environ["PATH"] = os.pathsep.join(
    [str(Path(sys.executable).parent), os.environ.get("PATH", "")]
)
sys.path.insert(0, str(BASE))

from dapt import config as study  # noqa: E402
from dapt.errors import UserError  # noqa: E402

SCRIPTS = BASE / "scripts"
DEFAULT_CONFIG = BASE / "config" / "config.yaml"
CACHE = "results/.cache/downloads"


def _load_study_config():
    """--configfile replaces the default study (no merging of models/tasks); --config overrides keys."""
    if workflow.configfiles:
        return ", ".join(str(f) for f in workflow.configfiles)
    default = yaml.safe_load(DEFAULT_CONFIG.read_text())
    overrides = dict(config)
    config.clear()
    config.update(default)
    config.update(overrides)
    return str(DEFAULT_CONFIG.relative_to(BASE))


CONFIG_SOURCE = _load_study_config()
validate(config, BASE / "config" / "schema.yaml")
try:
    study.validate_config(config, CONFIG_SOURCE)
except UserError as err:
    raise WorkflowError(f"error: {err}")


wildcard_constraints:
    model=r"[A-Za-z][A-Za-z0-9_]*",
    corpus=r"[A-Za-z][A-Za-z0-9_]*",
    task=r"[A-Za-z][A-Za-z0-9_]*",
    variant=r"[A-Za-z][A-Za-z0-9_]*",
    method=r"[A-Za-z][A-Za-z0-9_]*",
    seed=r"\d+",
    length=r"\d+",
    stage=r"(dapt|tapt)-[A-Za-z][A-Za-z0-9_]*",
    chain=r"(dapt|tapt)-[A-Za-z][A-Za-z0-9_]*(\+(dapt|tapt)-[A-Za-z][A-Za-z0-9_]*)*",


RUN = "{task}/{model}/{variant}/{method}/seed{seed}"


def as_json(obj):
    """Keeps the config's order: the report lists variants and methods as the config does."""
    return json.dumps(obj)


def download_args():
    return " --allow-unverified" if config.get("allow_unverified_downloads") else ""


def runtime_args():
    """Flags every training script takes from the study config."""
    flags = f"--precision {config.get('precision', 'auto')}"
    return flags + (" --deterministic" if config.get("deterministic") else "")


def task_max_length(task):
    return config["tasks"][task].get("max_length", 128)


def checkpoint_of(model, chain):
    """Folder of a checkpoint: the stored base model, or a pretrained chain."""
    return f"results/models/{model}" if not chain else f"results/pretrain/{model}/{chain}/model"


def variant_checkpoint(wildcards):
    chain = study.chain_for(config, wildcards.variant, wildcards.task)
    return checkpoint_of(wildcards.model, chain)


def variant_pretrain_summary(wildcards):
    chain = study.chain_for(config, wildcards.variant, wildcards.task)
    return [f"results/pretrain/{wildcards.model}/{chain}/summary.json"] if chain else []


def runs():
    """Every (task, model, variant, method, seed) of the grid."""
    for task in config["tasks"]:
        for model in config["models"]:
            for variant in config["variants"]:
                for method in config["methods"]:
                    for seed in config["seeds"]:
                        yield dict(task=task, model=model, variant=variant, method=method, seed=seed)


def run_files(pattern):
    return [pattern.format(**r) for r in runs()]


def all_outputs():
    return REPORT_FILES
