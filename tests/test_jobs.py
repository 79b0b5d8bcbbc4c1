"""What every job is started with: the precision the config asks for, the evaluation batch size of the
config, thread pools limited to the rule's threads, and only the imports the job needs."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from conftest import REPO, make_workdir, run_snakemake, tiny_config


def planned_commands(workdir) -> list[tuple[str, str]]:
    proc = run_snakemake(workdir, "-n", "--printshellcmds", "--forceall")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return re.findall(r"python \S+/scripts/(\w+)\.py (.*)$", proc.stdout + proc.stderr, re.M)


def test_default_study_plans_precision_auto(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "-n",
            "--printshellcmds",
            "--cores",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    commands = re.findall(r"python \S+/scripts/(pretrain|finetune|evaluate)\.py (.*)$", proc.stdout, re.M)
    assert {script for script, _ in commands} == {"pretrain", "finetune", "evaluate"}
    assert all(re.search(r"--precision auto\b", args) for _, args in commands)


def test_evaluation_batch_size_comes_from_the_config(tmp_path):
    config = tiny_config()
    config["finetune"]["eval_batch_size"] = 7
    config["methods"]["lora"]["eval_batch_size"] = 5  # a method's own value wins for its runs
    commands = planned_commands(make_workdir(tmp_path, config))
    evaluations = [args for script, args in commands if script == "evaluate"]
    assert evaluations
    for args in evaluations:
        params = json.loads(re.search(r"--params '([^']*)'", args).group(1))
        expected = 5 if '"method": "lora"' in args else 7
        assert params == {"eval_batch_size": expected}, args
        assert "--train-json results/finetune/" in args


def test_evaluation_runs_with_that_batch_size(clean_run):
    """The reliability study's evaluation: its metrics say which batch size predicted the test split."""
    from conftest import EVALUATE

    from dapt.study.defaults import FINETUNE_DEFAULTS

    metrics = json.loads((clean_run / EVALUATE / "metrics.json").read_text())
    assert metrics["evaluation"]["batch_size"] == FINETUNE_DEFAULTS["eval_batch_size"] != 128


def test_tokenize_jobs_get_the_rule_threads(tmp_path):
    commands = planned_commands(make_workdir(tmp_path, tiny_config()))
    tokenize = [args for script, args in commands if script == "tokenize_data"]
    assert tokenize and all(re.search(r"--threads 1\b", args) for args in tokenize)


def test_thread_pools_follow_the_job_threads():
    code = (
        "from dapt.runtime import cli; cli.limit_threads(1); import os, torch; "
        "print(torch.get_num_threads(), os.environ['RAYON_RS_NUM_CPUS'], os.environ['OMP_NUM_THREADS'], "
        "os.environ['TOKENIZERS_PARALLELISM'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "1", "1", "false"]


def test_full_finetuning_and_evaluation_import_only_what_they_need(tmp_path):
    """peft and scikit-learn cost seconds of CPU per job; a full fine-tuning or evaluation job, which
    uses neither, must not import them (nor pandas' or pyarrow's dataset layers)."""
    from conftest import minilm_dir
    from transformers import BertConfig, BertForSequenceClassification

    BertForSequenceClassification(
        BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(tmp_path)
    code = f"""
import sys
import dapt.runtime.cli, dapt.finetune.evaluation, dapt.finetune.fine_tuning, dapt.runtime.context
from dapt.finetune.methods import apply_method, load_classifier
model = apply_method(load_classifier({str(tmp_path)!r}, ["a", "b"]), {{"kind": "full"}})
heavy = [m for m in ("peft", "sklearn", "pandas", "pyarrow.dataset", "datasets", "matplotlib") if m in sys.modules]
apply_method(load_classifier({str(tmp_path)!r}, ["a", "b"]), {{"kind": "lora", "r": 2}})
print(heavy, "peft" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=minilm_dir())
    assert out.stdout.strip() == "[] True", out.stdout + out.stderr[-2000:]
