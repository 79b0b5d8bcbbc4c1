"""bench/bench.py on a tiny random BERT, a few steps: the output's shape and what it counts, no timings."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, tiny_config

LAST_LINE = re.compile(
    r"^pretrain_speedup=(\d+\.\d\d) finetune_speedup=(\d+\.\d\d) eval_speedup=(\d+\.\d\d) "
    r"pretrain_mfu=(\d+\.\d\d) finetune_speedup_tuned=(\d+\.\d\d) eval_speedup_tuned=(\d+\.\d\d)$"
)
IMPORTS_LINE = re.compile(r"^imports_cpu_s finetune_full=(\d+\.\d) evaluate=(\d+\.\d)$")
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "seed": 0}
FT_EXAMPLES, FT_EPOCHS = 48, 2  # the tiny config's batch of 16: 3 steps an epoch, validation after each


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> tuple[list[str], dict, Path]:
    """One benchmark run for all tests here (its stdout lines, its JSON, its folder): it is the slow part."""
    tmp_path = tmp_path_factory.mktemp("bench")
    config = tiny_config()
    for section in ("corpora", "tasks"):  # the bench reads them from its own folder: absolute paths
        for spec in config[section].values():
            spec["source"]["path"] = str(REPO / spec["source"]["path"])
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [
        sys.executable,
        str(REPO / "bench" / "bench.py"),
        "--config",
        str(tmp_path / "study.yaml"),
        "--random-init",
        json.dumps(TINY),
        "--precision",
        "fp32",
        "--pretrain-steps",
        "3",
        "--batch-size",
        "4",
        "--seq-len",
        "32",
        "--max-docs",
        "10",
        "--ft-train-examples",
        str(FT_EXAMPLES),
        "--ft-epochs",
        str(FT_EPOCHS),
        "--eval-repeats",
        "1",
        "--eval-blocks",
        "4",
        "--peak-n",
        "128",
        "--no-workflow",
        "--import-repeats",
        "1",
        "--workdir",
        str(tmp_path / "work"),
        "--json",
        str(tmp_path / "bench.json"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=420, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rec = json.loads((tmp_path / "bench.json").read_text())
    # the run's record (bench/record.py): what a number in the docs is traced back to
    assert rec["bench"] == "bench" and "bench.py" in rec["command"] and "--peak-n" in rec["command"]
    assert len(rec["commit"].split("+")[0]) == 40 and rec["machine"]["cpu"] and rec["machine"]["cores"] >= 1
    assert set(rec["machine"]["flags"]) >= {"avx2", "avx512_bf16", "avx512_vnni", "amx_bf16"}
    assert len(rec["load_before"]) == len(rec["load_after"]) == 3 and rec["versions"]["torch"].startswith("2.13")
    assert rec["threads"] == rec["results"]["threads"] >= 1
    return proc.stdout.strip().splitlines(), rec["results"], tmp_path


def test_bench_smoke(bench_run):
    lines, result, tmp_path = bench_run
    match = LAST_LINE.match(lines[-1])
    assert match, lines[-1]
    assert all(float(x) > 0 for x in match.groups()), lines[-1]
    assert any(line.startswith("PRETRAINING") for line in lines)
    assert result["pretrain"]["ours_tokens_per_s"] > 0 and result["pretrain"]["recipe_tokens_per_s"] > 0
    assert result["finetune"]["ours_examples_per_s"] > 0 and result["eval"]["recipe_examples_per_s"] > 0
    # the work was done, and counted: every step, every test example, masked-only vs full projection
    assert result["pretrain"]["ours"]["turns"] == 2 and result["pretrain"]["recipe"]["turns"] == 2
    assert 0 < result["pretrain"]["ours_masked_fraction"] < 0.5
    # the held-out loss: every model scored on the same masked held-out blocks (tests/test_bench_held_out.py)
    assert result["pretrain"]["held_out_blocks"] == 4
    assert len(set(result["pretrain"]["held_out_inputs"].values())) == 1
    assert set(result["pretrain"]["held_out_inputs"]) == {"start", "ours", "recipe"}
    assert result["eval"]["n_test"] == 100
    for side in ("ours", "recipe", "recipe_tuned"):  # each side predicted the whole test split once
        assert result["eval"][f"{side}_examples_per_s"] > 0
    assert 0 <= result["eval"]["agreement"] <= 1 and 0 <= result["eval"]["agreement_tuned"] <= 1
    # the tuned peer evaluates with the recipe's own length grouping, its predictions put back in order
    assert result["eval"]["samplers"]["recipe_tuned"] == "LengthGroupedSampler"
    assert result["eval"]["agreement_tuned"] >= 0.9, result["eval"]["agreement_tuned"]
    assert not list((tmp_path / "work").glob("run-*"))  # its temporary outputs are gone


def test_bench_tuned_recipe_pads_per_batch(bench_run):
    """The tuned recipe pads each batch to its longest (dynamic padding), the default one to 128."""
    _, result, _ = bench_run
    for stage in ("finetune", "eval"):
        r = result[stage]
        assert r["recipe_positions_per_example"] == 128
        assert r["recipe_tuned_tokens_per_example"] <= r["recipe_tuned_positions_per_example"] < 128


def test_bench_counts_training_examples_only(bench_run):
    """Fine-tuning examples/s counts training examples: steps x batch, though our loop validates
    after every epoch (in the same turns) and the recipes do not."""
    _, result, _ = bench_run
    ft = result["finetune"]
    assert ft["epochs"] == FT_EPOCHS and ft["n_train"] == FT_EXAMPLES
    steps = FT_EPOCHS * FT_EXAMPLES // ft["batch_size"]
    assert ft["steps"] == steps
    for side in ("ours", "recipe", "recipe_tuned"):
        counted = ft["runs"][0][side]
        assert counted["steps"] == steps, side
        assert counted["turns"] == steps - 1, side  # step 1 (set-up) is not timed
        assert counted["examples"] == counted["turns"] * ft["batch_size"], (side, counted)


def test_bench_import_cpu(bench_run):
    """The start-up cost of a fine-tuning and an evaluation job is measured and printed."""
    lines, result, _ = bench_run
    assert any(IMPORTS_LINE.match(line) for line in lines), lines[-6:]
    for job in ("finetune_full", "evaluate"):
        r = result["imports"][job]
        assert r["cpu_s"] > 0 and "dapt.finetune.fine_tuning" in r["modules"]
        assert set(r["heavy"]) == {"peft", "sklearn", "pyarrow.dataset"}
