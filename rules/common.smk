# Config loading and validation, wildcard constraints and the helpers several stages use. A stage's
# own input functions live beside its rules (rules/<stage>_helpers.smk, included by rules/<stage>.smk);
# every path comes from dapt.study.layout.
import json
import os
import shlex
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")


envvars:
    "PATH",


BASE = Path(workflow.basedir)
# `python` in job commands is this interpreter unless a conda env puts its own first.
os.environ["PATH"] = os.pathsep.join(
    [str(Path(sys.executable).parent), os.environ["PATH"]]
)

from dapt.study import config as study  # noqa: E402
from dapt.study import grid, layout  # noqa: E402
from dapt.runtime import tracking  # noqa: E402
from dapt.study import defaults, settings  # noqa: E402
from dapt.study.requirements import model_requirements  # noqa: E402
from dapt.core.errors import UserError, diverged  # noqa: E402

SCRIPTS = BASE / "scripts"


def script(name):
    return str(SCRIPTS / name)


DEFAULT_CONFIG = BASE / "config" / "config.yaml"


def _load_study_config():
    """--configfile replaces the default study (no merging of models/tasks); --config overrides keys.
    Files are read with study.read_yaml, which refuses a key given twice (Snakemake's own parse of
    --configfile keeps the last one silently)."""
    if workflow.configfiles:
        for path in workflow.configfiles:
            study.read_yaml(path)
        return ", ".join(str(f) for f in workflow.configfiles)
    default = study.read_yaml(DEFAULT_CONFIG)
    overrides = dict(config)
    config.clear()
    config.update(default)
    config.update(overrides)
    return str(DEFAULT_CONFIG.relative_to(BASE))


# dapt.study.config checks the schema (config/schema.yaml) and the cross-references, and names the first
# problem in one line; snakemake.utils.validate would print the whole schema and config instead.
try:
    CONFIG_SOURCE = _load_study_config()
    study.validate_config(config, CONFIG_SOURCE)
except UserError as err:
    # one line, the last on stderr, and exit status 2 (as the scripts): no traceback into this file;
    # a key given with --config is blamed on --config, not on the file it overrides
    overridden = set(workflow.config_settings.config or {})
    where = err.where.split(": ", 1)
    if len(where) == 2 and where[1].split(".")[0].split("[")[0] in overridden:
        err = UserError(f"--config: {where[1]}", err.problem, err.fix)
    print(f"error: {err}", file=sys.stderr, flush=True)
    sys.exit(2)

# fp16 needs a GPU: where jobs run on this machine and it has none, refuse now, not in the first training job
if config.get("precision", "auto") == "fp16" and workflow.local_exec:
    from dapt.runtime.devices import visible_gpus

    if not visible_gpus()[0]:
        print(
            f"error: {'--config' if 'precision' in (workflow.config_settings.config or {}) else CONFIG_SOURCE}: "
            f"precision: fp16 needs a GPU, and jobs run on this machine, which has none "
            f"({visible_gpus()[1]}) (use auto, bf16 or fp32; on a cluster, submit with its profile)",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(2)


wildcard_constraints:
    model=r"[A-Za-z][A-Za-z0-9_]*",
    corpus=r"[A-Za-z][A-Za-z0-9_]*",
    task=r"[A-Za-z][A-Za-z0-9_]*",
    variant=r"[A-Za-z][A-Za-z0-9_]*",
    method=layout.METHOD_WILDCARD,
    seed=r"\d+",
    length=r"\d+",
    stage=layout.STAGE_WILDCARD,
    chain=layout.CHAIN_WILDCARD,


def as_json(obj, keep_order=False):
    """Sorted keys, so reordering a config reruns nothing; the report keeps the config's order
    (it lists variants and methods as the config does)."""
    return json.dumps(obj, sort_keys=not keep_order)


def download_args():
    return " --allow-unverified" if config.get("allow_unverified_downloads") else ""


def runtime_args():
    """Flags every training script takes from the study config."""
    flags = f"--precision {config.get('precision', 'auto')}"
    return flags + (" --deterministic" if config.get("deterministic") else "")


def tracking_env(job, **tags):
    """DAPT_TRACKING='<json>' before a job's command when the study tracks runs
    (dapt/runtime/tracking.py), else ''. The rules compute it in a param that takes `output`, which
    Snakemake treats as derived and leaves out of its params trigger: turning tracking on
    or off reruns no training job."""
    study_name = Path(CONFIG_SOURCE.split(", ")[0]).stem
    settings = tracking.job_settings(config.get("tracking"), study_name, job, tags)
    return f"{tracking.ENV}={shlex.quote(as_json(settings))} " if settings else ""


def runs():
    """Every (task, model, variant, method folder, seed) of the grid; a swept or sized run's
    method folder names its settings (dapt.study.grid)."""
    return grid.runs(config)


def run_params(wildcards):
    """The hyperparameters of a run (its swept values filled in)."""
    return grid.run_params(config, wildcards.task, wildcards.method)


def run_files(pattern):
    """`pattern` (a layout path of a run's wildcards, layout.RUN) of every run of the grid."""
    return [pattern.format(**r) for r in runs()]


def existing(paths):
    """The paths that exist now (a partial report's inputs: evaluated when the DAG is built)."""
    return [p for p in paths if os.path.exists(p)]


class _RunWildcards:
    """A run dict read as rule wildcards (for the helpers that take wildcards)."""

    def __init__(self, run):
        self.__dict__.update(run)


def checkpoint_of(model, chain):
    """Folder of a checkpoint: the stored base model, or a pretrained chain."""
    if not chain:
        return layout.MODEL.format(model=model)
    return layout.PRETRAIN_MODEL.format(model=model, chain=chain)


def variant_checkpoint(wildcards):
    """The checkpoint a run fine-tunes (rules/finetune.smk; rules/deploy.smk exports from it)."""
    chain = study.chain_for(config, wildcards.variant, wildcards.task)
    return checkpoint_of(wildcards.model, chain)


def report_outputs(files):
    """Report files (dapt.study.layout.REPORT or DEPLOY_REPORT) as a rule's outputs, named by file
    name ('table.md' -> table_md); those with a caption (report/<caption>.rst) go into Snakemake's
    HTML report. (Snakemake's report() is imported under another name: in a function `report` would
    parse as the directive.)"""
    from snakemake.io import report as html_report

    outputs = {}
    for f in files:
        path = f"{layout.REPORT_DIR}/{f.name}"
        if f.caption:
            caption = f"../report/{f.caption}.rst"
            path = html_report(path, caption=caption, category=f.category)
        outputs[f.name.replace(".", "_")] = path
    return outputs
