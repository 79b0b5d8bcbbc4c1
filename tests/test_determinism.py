"""Same config and seed, two study folders, on CPU: byte-identical predictions and identical metrics.

Also checks the `deterministic` config option end to end: config -> `--deterministic` on every
training and evaluation command -> `torch.use_deterministic_algorithms(True)` in the job.
"""

from __future__ import annotations

import json
import re

import torch
import yaml
from conftest import (
    EVALUATE,
    FINETUNE,
    PRETRAIN,
    RELIABILITY_TARGETS,
    assert_same_results,
    copy_prepared,
    reliability_config,
    run_snakemake,
)


def test_two_runs_same_seed_identical_results(clean_run, reliability_inputs, tmp_path):
    workdir = copy_prepared(reliability_inputs, tmp_path / "again")
    proc = run_snakemake(workdir, *RELIABILITY_TARGETS)
    assert proc.returncode == 0, proc.stderr[-4000:]

    assert_same_results(workdir, clean_run)
    # the predictions carry information (probabilities), not only a constant class
    probs = [line.split(",")[-1] for line in (workdir / EVALUATE / "predictions.csv").read_text().splitlines()[1:]]
    assert len(set(probs)) > 10


def test_deterministic_option_reaches_every_training_command(clean_run, tmp_path):
    config = {**reliability_config(), "deterministic": True}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    proc = run_snakemake(tmp_path, "-n", "--printshellcmds", *RELIABILITY_TARGETS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    commands = re.findall(r"python \S+/scripts/(pretrain|finetune|evaluate)\.py (.*)$", proc.stdout + proc.stderr, re.M)
    assert sorted(script for script, _ in commands) == ["evaluate", "finetune", "pretrain"]
    assert all("--deterministic" in args.split() for _, args in commands)
    # off by default, and the jobs record what torch ran with
    for path in (f"{FINETUNE}/train.json", f"{PRETRAIN}/summary.json"):
        assert json.loads((clean_run / path).read_text())["deterministic"] is False


def test_deterministic_flag_switches_torch_to_deterministic_algorithms():
    from dapt.runtime import cli

    try:
        args = cli.parser("test").parse_args(["--deterministic", "--precision", "fp32"])
        cli.start(args)
        assert torch.are_deterministic_algorithms_enabled()
        cli.start(cli.parser("test").parse_args(["--precision", "fp32"]))
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
