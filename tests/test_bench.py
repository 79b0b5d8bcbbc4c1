"""Smoke test of bench/bench.py: a tiny random BERT, a few steps; the output's shape, no timings."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO, tiny_config

LAST_LINE = re.compile(r"^pretrain_speedup=(\d+\.\d\d) finetune_speedup=(\d+\.\d\d) "
                       r"eval_speedup=(\d+\.\d\d) pretrain_mfu=(\d+\.\d\d)$")
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "seed": 0}


def test_bench_smoke(tmp_path):
    config = tiny_config()
    for section in ("corpora", "tasks"):  # the bench reads them from its own folder: absolute paths
        for spec in config[section].values():
            spec["source"]["path"] = str(REPO / spec["source"]["path"])
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [sys.executable, str(REPO / "bench" / "bench.py"), "--config", str(tmp_path / "study.yaml"),
           "--random-init", json.dumps(TINY), "--precision", "fp32", "--pretrain-steps", "3", "--batch-size", "4",
           "--seq-len", "32", "--max-docs", "10", "--ft-train-examples", "48", "--eval-repeats", "1",
           "--eval-blocks", "4", "--peak-n", "128", "--no-workflow", "--workdir", str(tmp_path / "work"),
           "--json", str(tmp_path / "bench.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    match = LAST_LINE.match(lines[-1])
    assert match, lines[-1]
    assert all(float(x) > 0 for x in match.groups()), lines[-1]
    assert any(line.startswith("PRETRAINING") for line in lines)
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["pretrain"]["ours_tokens_per_s"] > 0 and result["pretrain"]["recipe_tokens_per_s"] > 0
    assert result["finetune"]["ours_examples_per_s"] > 0 and result["eval"]["recipe_examples_per_s"] > 0
    # the work was done, and counted: every step, every test example, masked-only vs full projection
    assert result["pretrain"]["ours"]["turns"] == 2 and result["pretrain"]["recipe"]["turns"] == 2
    assert 0 < result["pretrain"]["ours_masked_fraction"] < 0.5
    assert result["eval"]["n_test"] == 100
    assert 0 <= result["eval"]["agreement"] <= 1
    assert not list((tmp_path / "work").glob("run-*"))  # its temporary outputs are gone
