"""Data parallel training: 2 processes give the numbers 1 process gives, with the same global batch.

scripts/finetune.py and scripts/pretrain.py run with ``--gpus 2`` and ``DAPT_FORCE_CPU_DDP=1``:
dapt.runtime.devices relaunches them under torch.distributed.run as 2 gloo processes on CPU, each taking the
rank-strided half of every global batch. The inputs are the tiny study's, prepared here in-process,
with dropout switched off in the model so that both runs compute the same forward passes.

What this shows, and what the README may claim: with dropout off, N processes train the same model
as 1 (losses, validation scores and final weights, fine-tuning and pretraining alike). With dropout
on they do not: each rank draws its own dropout masks for its half of the batch, where one process
draws them for the whole batch in another order, so the runs are equally valid but not equal.

Tolerance: the runs are not bit-identical, only equal up to float32 rounding. With 2 ranks every
gradient is the sum of two half-batch gradients, all-reduced (a different summation order than one
process summing the whole batch), and the logged losses are summed across ranks the same way. Here
that makes step losses differ by ~1e-7 relative and final weights by ~2e-7 after 30 Adam steps at
lr 1e-3. So: losses to 1e-4 relative, every weight to 1e-5 relative (plus 1e-6 absolute, for weights
near zero such as the attention key biases, which get no gradient), and validation scores to one
example in 60 (a prediction sitting at p = 0.5 may flip). MLM masking must not differ: it is drawn for the
whole global batch from one stream that every rank shares. With the former per-rank masking streams
the MLM step losses differed by 0.03-0.4 % (and the token counts by a few), which this test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import REPO, tiny_config
from safetensors.torch import load_file, save_file

LOSS_RTOL = 1e-4
WEIGHT_RTOL, WEIGHT_ATOL = 1e-5, 1e-6  # |w_2 - w_1| <= WEIGHT_ATOL + WEIGHT_RTOL * |w_1|, weight by weight
SCORE_ATOL = 1.0 / 60 + 1e-9  # one of the 60 validation examples

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """The tiny study's model (dropout off), tokenized task and MLM blocks.

    225 training examples in batches of 16: the last batch of each epoch holds 1 example, so with
    2 ranks one rank has nothing of it (it must still join the gradient all-reduce). The model for
    pretraining has no MLM head, so pretraining starts by training the new head alone (the encoder
    frozen: DDP must cope with parameters that get no gradient).
    """
    from dapt.data.model_store import prepare_model
    from dapt.data.prepare import prepare_corpus, prepare_task
    from dapt.study import config as study
    from dapt.tokenize.blocks import tokenize_corpus
    from dapt.tokenize.tasks import tokenize_task_dir

    root = tmp_path_factory.mktemp("ddp")
    config = tiny_config()
    for spec in (config["corpora"]["imdb"], config["tasks"]["rt_polarity"]):
        spec["source"]["path"] = str(REPO / spec["source"]["path"])
    config["tasks"]["rt_polarity"]["max_examples"] = {"train": 225}
    config["finetune"]["batch_size"] = 16
    cache = root / "cache"
    prepare_model(config["models"]["tiny"], "tiny", root / "model", cache)
    model_config = json.loads((root / "model" / "config.json").read_text())
    model_config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (root / "model" / "config.json").write_text(json.dumps(model_config))
    shutil.copytree(root / "model", root / "headless")
    weights = load_file(str(root / "model" / "model.safetensors"))
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("cls.")},
        str(root / "headless" / "model.safetensors"),
        metadata={"format": "pt"},
    )
    prepare_task(config["tasks"]["rt_polarity"], "rt_polarity", root / "task", 0, cache)
    tokenize_task_dir(str(root / "task"), str(root / "model"), 48, str(root / "tokenized"))
    prepare_corpus(config["corpora"]["imdb"], "imdb", root / "imdb.parquet", cache)
    tokenize_corpus(str(root / "imdb.parquet"), str(root / "model"), 64, str(root / "blocks"))
    return {
        "root": root,
        "finetune": study.finetune_params(config, "rt_polarity", "full"),
        "mlm": study.mlm_params(config, "dapt"),
    }


def run_script(script: str, out: Path, gpus: int, args: list[str]) -> str:
    """Run a training script like the workflow does; returns its log (stdout + stderr)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "LOCAL_RANK", "RANK", "WORLD_SIZE")
    }
    # no GPU ids at all, even on a GPU machine; 2 "GPUs" become 2 gloo processes on CPU
    env.update(DAPT_GPU_IDS="", DAPT_FORCE_CPU_DDP="1", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        str(REPO / "scripts" / script),
        *args,
        "--seed",
        "1",
        "--gpus",
        str(gpus),
        "--threads",
        "1",
        "--precision",
        "fp32",
        "--checkpoints",
        str(out.parent / f"{out.name}.ckpt"),
        "--out",
        str(out),
    ]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    log = proc.stdout + proc.stderr
    print(f"{script} --gpus {gpus}: {time.monotonic() - t0:.1f}s")
    assert proc.returncode == 0, log[-5000:]
    return log


def assert_same_weights(one: Path, two: Path) -> None:
    """The two saved models hold the same finite tensors, equal within WEIGHT_RTOL/WEIGHT_ATOL: the final
    weights are what a run is for, and the last update is in no logged loss."""
    w1, w2 = (load_file(str(d / "model" / "model.safetensors")) for d in (one, two))
    assert w1.keys() == w2.keys()
    assert all(torch.isfinite(w).all() for w in w2.values())
    worst_abs = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    # > 1 where a weight is outside the tolerance
    worst = max(((w1[k] - w2[k]).abs() / (WEIGHT_ATOL + WEIGHT_RTOL * w1[k].abs())).max().item() for k in w1)
    print(f"largest weight difference: {worst_abs:.2e}; {worst:.3f} of the tolerance")
    assert worst <= 1.0, f"weights differ: {worst_abs:.2e} absolute, {worst:.1f} times the tolerance"


def check_only_rank0_wrote(out: Path, log: str, expected: set[str]) -> None:
    assert {p.name for p in out.iterdir()} == expected
    assert not (out.parent / f"{out.name}.ckpt").exists()  # checkpoints cleared once done
    assert "launching 2 processes" in log and "torch.distributed.run" in log
    assert log.count("done:") == 2  # each rank finished (each prints its summary)


def test_a_diverging_two_process_run_stops_on_every_rank_and_is_recorded(inputs):
    """Each rank checks the step's all-reduced loss, so all stop at the same step (a rank that stopped
    alone would leave the others waiting in the gradient all-reduce); rank 0 records the failed run."""
    root = inputs["root"]
    args = [
        "--base",
        str(root / "model"),
        "--tokenized",
        str(root / "tokenized"),
        "--params",
        json.dumps({**inputs["finetune"], "lr": 1e6}),
        "--on-divergence",
        "record",
    ]
    log = run_script("finetune.py", root / "ft_nan", 2, args)
    train = json.loads((root / "ft_nan" / "train.json").read_text())
    assert train["status"] == "diverged" and train["diverged_step"] >= 1
    assert log.count(f"done: diverged at step {train['diverged_step']}, recorded as a failed run") == 2  # both ranks
    assert sorted(p.name for p in (root / "ft_nan" / "model").iterdir()) == ["diverged.json"]


def test_finetune_two_processes_match_one(inputs):
    root = inputs["root"]
    args = [
        "--base",
        str(root / "model"),
        "--tokenized",
        str(root / "tokenized"),
        "--params",
        json.dumps(inputs["finetune"]),
    ]
    log1 = run_script("finetune.py", root / "ft1", 1, args)
    log2 = run_script("finetune.py", root / "ft2", 2, args)
    check_only_rank0_wrote(root / "ft2", log2, {"model", "log.csv", "train.json"})
    assert 'world_size": 2' in log2 and 'world_size": 1' in log1
    assert log2.count("epoch 1 step") == 1  # progress is printed by rank 0 only

    one, two = (pd.read_csv(root / d / "log.csv") for d in ("ft1", "ft2"))
    print(pd.concat({"1 process": one, "2 processes": two}, axis=1).to_string())
    assert list(one["step"]) == list(two["step"])
    assert two["train_loss"].to_numpy() == pytest.approx(one["train_loss"].to_numpy(), rel=LOSS_RTOL)
    for col in ("val_accuracy", "val_macro_f1"):
        assert two[col].to_numpy() == pytest.approx(one[col].to_numpy(), abs=SCORE_ATOL)

    # the trained weights agree too (rank 0 saved them)
    assert_same_weights(root / "ft1", root / "ft2")

    t1, t2 = (json.loads((root / d / "train.json").read_text()) for d in ("ft1", "ft2"))
    assert t2["world_size"] == 2 and t1["world_size"] == 1
    assert t2["train_steps"] == t1["train_steps"] == 30 and t2["n_train"] == 225
    assert t2["best_validation"] == pytest.approx(t1["best_validation"], abs=SCORE_ATOL)
    for summary in (t1, t2):  # what ran is recorded with the results
        assert summary["device"].startswith("cpu (") and summary["precision"] == "fp32"


def test_pretrain_two_processes_match_one(inputs):
    root = inputs["root"]
    args = [
        "--parent",
        str(root / "headless"),
        "--blocks",
        str(root / "blocks"),
        "--stage",
        "dapt-imdb",
        "--params",
        json.dumps(inputs["mlm"]),
    ]
    run_script("pretrain.py", root / "pt1", 1, args)
    log2 = run_script("pretrain.py", root / "pt2", 2, args)
    check_only_rank0_wrote(root / "pt2", log2, {"model", "loss.csv", "summary.json"})
    last = inputs["mlm"]["max_steps"]  # the last step always prints a line (others are spaced in time)
    assert log2.count(f"step {last}/{last} ") == 1  # progress is printed by rank 0 only

    one, two = (pd.read_csv(root / d / "loss.csv") for d in ("pt1", "pt2"))
    diff = (two["loss"] - one["loss"]).abs() / one["loss"]
    print(
        pd.DataFrame(
            {"step": one["step"], "loss 1 process": one["loss"], "loss 2 processes": two["loss"], "rel diff": diff}
        ).to_string()
    )
    assert len(one) == len(two) == inputs["mlm"]["max_steps"]
    assert list(two["tokens"]) == list(one["tokens"])  # the global batch, counted once
    assert two["lr"].to_numpy() == pytest.approx(one["lr"].to_numpy(), rel=1e-6)
    assert two["loss"].to_numpy() == pytest.approx(one["loss"].to_numpy(), rel=LOSS_RTOL)

    # the pretrained weights agree (encoder and the MLM head trained in the warm-up), not only the losses
    assert_same_weights(root / "pt1", root / "pt2")

    s1, s2 = (json.loads((root / d / "summary.json").read_text()) for d in ("pt1", "pt2"))
    assert s2["world_size"] == 2 and s2["tokens"] == s1["tokens"] and s2["head_warmup_steps"] == 3
    assert s2["device"].startswith("cpu (") and s2["precision"] == "fp32"
