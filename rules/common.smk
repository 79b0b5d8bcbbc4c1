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
from dapt.core.errors import UserError, diverged  # noqa: E402

SCRIPTS = BASE / "scripts"


def script(name):
    return str(SCRIPTS / name)


DEFAULT_CONFIG = BASE / "config" / "config.yaml"
CACHE = "results/.cache/downloads"


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
    # one line, the last on stderr, and exit status 2 (as the scripts): no traceback into this file
    print(f"error: {err}", file=sys.stderr, flush=True)
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


RUN = layout.RUN


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


def task_max_length(task):
    return study.task_max_length(config, task)


def checkpoint_of(model, chain):
    """Folder of a checkpoint: the stored base model, or a pretrained chain."""
    return (
        f"results/models/{model}"
        if not chain
        else f"results/pretrain/{model}/{chain}/model"
    )


def variant_checkpoint(wildcards):
    chain = study.chain_for(config, wildcards.variant, wildcards.task)
    return checkpoint_of(wildcards.model, chain)


def variant_pretrain_summary(wildcards):
    chain = study.chain_for(config, wildcards.variant, wildcards.task)
    return [f"results/pretrain/{wildcards.model}/{chain}/summary.json"] if chain else []


def runs():
    """Every (task, model, variant, method folder, seed) of the grid; a swept or sized run's
    method folder names its settings (dapt.study.grid)."""
    return grid.runs(config)


def run_params(wildcards):
    """The hyperparameters of a run (its swept values filled in)."""
    return grid.run_params(config, wildcards.task, wildcards.method)


def method_of(run):
    """The config's method of a run (its method folder without swept settings)."""
    return grid.run_spec(config, run["task"], run["method"]).method


def run_files(pattern):
    return [pattern.format(**r) for r in runs()]


def pretrain_losses():
    return [f"results/pretrain/{m}/{c}/loss.csv" for m, c in pretrain_chains()]


def baseline_metrics():
    return [f"results/baseline/{t}/metrics.json" for t in config["tasks"]]


def warn_failed_runs():
    """One line at the end of a run that has fine-tuning runs recorded as diverged (on_divergence:
    record): the study succeeded, but not every run trained, and the report says which.
    """
    failed = []
    for p in existing(run_files(f"results/finetune/{RUN}/train.json")):
        try:
            if diverged(json.loads(Path(p).read_text())):
                failed.append(p)
        except (OSError, ValueError, AttributeError):
            pass  # a broken file is for the evaluate job to name, not for this summary line
    if failed:
        print(
            f"warning: {len(failed)} fine-tuning run(s) diverged and were recorded as failed"
            f" (on_divergence: record), e.g. {os.path.dirname(failed[0])}; the report's notes"
            " list them (Runs that failed)"
        )


def existing(paths):
    """The paths that exist now (a partial report's inputs: evaluated when the DAG is built)."""
    return [p for p in paths if os.path.exists(p)]


def finished(pattern):
    """`pattern` of every run whose evaluation finished (its metrics.json exists)."""
    done = [
        r
        for r in runs()
        if os.path.exists(f"results/evaluate/{RUN}/metrics.json".format(**r))
    ]
    return [pattern.format(**r) for r in done]


def all_outputs():
    # the deploy stage (rules/deploy.smk) joins the default target when the config has a deploy: block
    deploy = layout.report_files_of(layout.DEPLOY_REPORT) if "deploy" in config else []
    return REPORT_FILES + deploy


def mlm_texts(wildcards):
    kind, name = wildcards.stage.split("-", 1)
    if kind == "dapt":
        return f"results/data/corpora/{name}.parquet"
    # kNN-TAPT: the task's text and its chosen corpus documents (rules/knn.smk)
    if kind == study.KNN_KIND:
        return knn_selection(wildcards.model, wildcards.stage)
    return f"results/data/tasks/{name}"


def corpus_shards(stage):
    kind, name = stage.split("-", 1)
    return study.corpus_shards(config, name) if kind == "dapt" else 1


def mlm_text_file(wildcards, texts):
    """TAPT reads the task's training split only."""
    return texts if wildcards.stage.startswith("dapt-") else f"{texts}/train.parquet"


def tokenize_corpus_inputs(wildcards):
    inputs = {
        "texts": mlm_texts(wildcards),
        "model": f"results/models/{wildcards.model}",
    }
    n = corpus_shards(wildcards.stage)
    if n > 1:
        inputs["shards"] = [
            layout.MLM_SHARD.format(
                model=wildcards.model,
                stage=wildcards.stage,
                length=wildcards.length,
                shard=k,
                shards=n,
            )
            for k in range(1, n + 1)
        ]
    return inputs


def pretrain_inputs(wildcards):
    parent, stage = study.split_chain(wildcards.chain)
    length = study.mlm_params(config, stage)["max_length"]
    inputs = {
        "parent": checkpoint_of(wildcards.model, parent),
        "blocks": layout.MLM_BLOCKS.format(
            model=wildcards.model, stage=stage, length=length
        ),
    }
    if parent:  # the parent stage's summary: totals over the whole chain
        inputs["parent_summary"] = (
            f"results/pretrain/{wildcards.model}/{parent}/summary.json"
        )
    return inputs


def knn_selection(model, stage):
    """The selection folder of a kNN-TAPT stage name (tapt_knn-<task>-<corpus>-k<k>)."""
    return layout.KNN_SELECTION.format(model=model, **settings.selection_of(stage))


def knn_selections():
    """Every selection of the study (the report's notes describe them)."""
    return sorted(
        {
            knn_selection(model, stage)
            for model, chain in pretrain_chains()
            for stage in chain.split("+")
            if stage.startswith(f"{study.KNN_KIND}-")
        }
    )


def tokenized_task(wildcards):
    return layout.tokenized_task(
        wildcards.model,
        wildcards.task,
        task_max_length(wildcards.task),
        study.long_text_params(config, wildcards.task),
    )


def long_text_args(wildcards):
    """--long-text for a task cut otherwise than by its head (head: the plain cut, no flag).
    The folder's suffix must name the task's setting, as no folder may hold another's.
    """
    settings = study.long_text_params(config, wildcards.task)
    if layout.long_text_suffix(settings) != wildcards.long_text:
        raise ValueError(
            f"{wildcards.task}.L{wildcards.length}{wildcards.long_text}: tasks.{wildcards.task}"
            f".long_text is {settings}, not this folder's setting"
        )
    flag = f" --long-text {shlex.quote(as_json(settings))}"
    return "" if settings["strategy"] == "head" else flag


def pretrain_chains():
    return sorted(
        {(r["model"], study.chain_for(config, r["variant"], r["task"])) for r in runs()}
        - {(model, "") for model in config["models"]}
    )


# --- robustness: augmented training rows, perturbed test sets (rules/robustness.smk) ---

ROBUSTNESS = settings.robustness_settings(config)


def augmented_rows(wildcards):
    """The augmented training rows a run adds (its augment: setting), or none."""
    augment = settings.augment_settings(run_params(wildcards))
    if augment is None:
        return []
    name = settings.augment_name(augment)
    return [layout.AUGMENTED.format(task=wildcards.task, augment=name)]


def augment_setting(wildcards):
    """The augment: setting an augmented file is named by (some run of the task has it)."""
    for r in runs():
        if r["task"] == wildcards.task:
            augment = settings.augment_settings(run_params(_RunWildcards(r)))
            if augment and settings.augment_name(augment) == wildcards.augment:
                return augment
    raise ValueError(
        f"no run of task {wildcards.task} has augment setting {wildcards.augment}"
    )


def perturbed_sets(wildcards):
    """The perturbed test sets every run of the task is scored on (robustness:), by name."""
    if not ROBUSTNESS:
        return []
    return [
        layout.PERTURBED.format(task=wildcards.task, perturbation=p)
        for p in ROBUSTNESS["perturbations"]
    ]


def synonyms_for(ops):
    """WordNet's synonyms, for the steps whose operations include synonym replacement."""
    return [layout.WORDNET] if "synonym" in ops else []


def synonyms_flag(wildcards, input):
    return f" --synonyms {input.synonyms}" if input.synonyms else ""


REPORT_DIR = layout.REPORT_DIR
# the report's files: sweep, learning-curve and robustness files only for a study that has them
REPORT_LIST = grid.report_list(config)
REPORT_FILES = [f"{REPORT_DIR}/{f.name}" for f in REPORT_LIST]


def report_outputs():
    """The report's files (dapt.study.layout.REPORT, the list the report writes), named by file name
    ('table.md' -> table_md); those with a caption (report/<caption>.rst) go into Snakemake's HTML
    report. (Snakemake's report() is imported under another name: in a function `report` would
    parse as the directive.)"""
    from snakemake.io import report as html_report

    return {
        f.name.replace(".", "_"): (
            html_report(
                f"{REPORT_DIR}/{f.name}",
                caption=f"../report/{f.caption}.rst",
                category=f.category,
            )
            if f.caption
            else f"{REPORT_DIR}/{f.name}"
        )
        for f in REPORT_LIST
    }


# --- the deploy stage (rules/deploy.smk) ---


def deploy_candidates(wildcards):
    """Every run of the grid for this task and method: the export step picks the best."""
    return [
        r
        for r in runs()
        if r["task"] == wildcards.task and method_of(r) == wildcards.method
    ]


def deploy_candidate_inputs(wildcards):
    files = []
    for r in deploy_candidates(wildcards):
        files += [
            f"results/finetune/{layout.run_key(r)}/model",
            f"results/finetune/{layout.run_key(r)}/train.json",
            variant_checkpoint(_RunWildcards(r)),
        ]
    return files


class _RunWildcards:
    """A run dict read as rule wildcards (for the helpers that take wildcards)."""

    def __init__(self, run):
        self.__dict__.update(run)


def deploy_candidates_json(wildcards):
    return as_json(
        [
            dict(
                artifact=f"results/finetune/{layout.run_key(r)}/model",
                train_json=f"results/finetune/{layout.run_key(r)}/train.json",
                base=variant_checkpoint(_RunWildcards(r)),
                run=r,
            )
            for r in deploy_candidates(wildcards)
        ]
    )


def deploy_tokenized(wildcards):
    """The task tokenized for each model among the candidates (the chosen run's model is read back)."""
    models = sorted({r["model"] for r in deploy_candidates(wildcards)})
    return {
        m: tokenized_task(_RunWildcards(dict(task=wildcards.task, model=m)))
        for m in models
    }


def deploy_report_outputs():
    """The deploy table and plot (dapt.study.layout.DEPLOY_REPORT), captioned for the HTML report."""
    from snakemake.io import report as html_report

    return {
        f.name.replace(".", "_"): (
            html_report(
                f"{REPORT_DIR}/{f.name}",
                caption=f"../report/{f.caption}.rst",
                category=f.category,
            )
            if f.caption
            else f"{REPORT_DIR}/{f.name}"
        )
        for f in layout.DEPLOY_REPORT
    }


def deploy_measurements():
    return [
        f"results/deploy/{task}/{method}/measure.json"
        for task in config["tasks"]
        for method in study.deploy_methods(config)
        if any(r["task"] == task and method_of(r) == method for r in runs())
    ]


DEPLOY = study.deploy_params(config)
