"""A training job killed with SIGKILL resumes from its last checkpoint and ends exactly as if never killed.

The end-to-end test kills the whole Snakemake process group twice (during pretraining, then during
fine-tuning, each after a checkpoint), reruns the same command each time, and compares every
scientific output with an uninterrupted run. What a rerun after a kill needs:
``snakemake --unlock`` (the killed Snakemake leaves its lock), then the same command again; it reruns
the incomplete job thanks to ``rerun-incomplete: true`` in profiles/default, which Snakemake applies
to every run of this Snakefile (pass ``--rerun-incomplete`` with ``--workflow-profile none``).
The fast unit tests below cover kills inside a checkpoint write and stale checkpoints of other runs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    EVALUATE,
    FINETUNE,
    PRETRAIN,
    RELIABILITY_RUN,
    RELIABILITY_TARGETS,
    assert_same_results,
    copy_prepared,
    run_snakemake,
    snakemake_command,
)

from dapt.core import files
from dapt.runtime import checkpoints
from dapt.runtime.checkpoints import checkpoint_step, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.resume


def kill_after_checkpoint(workdir: Path, ckpt_dir: str, min_step: int, timeout: float = 400) -> int:
    """Run the study's targets; SIGKILL Snakemake and its jobs once `ckpt_dir` holds a checkpoint of
    step >= min_step. Returns that step."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    with open(workdir / "killed-run.txt", "ab") as out:
        proc = subprocess.Popen(
            snakemake_command(workdir, *RELIABILITY_TARGETS),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )  # its own process group: Snakemake and its jobs
        trainer = workdir / ckpt_dir / "last" / "trainer.pt"
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    pytest.fail(f"the run ended (status {proc.returncode}) before a checkpoint of step {min_step}")
                step = None
                if trainer.exists():
                    try:
                        step = torch.load(trainer, weights_only=True)["state"]["step"]
                    except (OSError, RuntimeError, EOFError):  # replaced while being read: look again
                        pass
                if step is not None and step >= min_step:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return step
                time.sleep(0.01)
            pytest.fail(f"no checkpoint of step {min_step} in {ckpt_dir} within {timeout} s")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def unlock(workdir: Path) -> None:
    proc = run_snakemake(workdir, "--unlock", *RELIABILITY_TARGETS)
    assert proc.returncode == 0, proc.stderr[-3000:]


def resumed_step(log: Path) -> int:
    steps = re.findall(r"resumed from checkpoint at step (\d+)/", log.read_text())
    assert len(steps) == 1, log.read_text()[-3000:]
    return int(steps[0])


def test_sigkill_then_rerun_ends_exactly_as_an_uninterrupted_run(clean_run, reliability_inputs, tmp_path):
    started = time.perf_counter()
    workdir = copy_prepared(reliability_inputs, tmp_path / "killed")

    # 1. kill during pretraining, after the head warm-up (3 steps) so both optimizer phases are exercised
    killed_pretrain = kill_after_checkpoint(workdir, "results/checkpoints/pretrain/tiny/dapt-imdb", 6)
    assert 6 <= killed_pretrain < 16 and not (workdir / PRETRAIN / "summary.json").exists()
    unlock(workdir)

    # 2. the same command resumes pretraining; kill fine-tuning after epoch 1 (its best weights) and more steps
    killed_finetune = kill_after_checkpoint(workdir, f"results/checkpoints/finetune/{RELIABILITY_RUN}", 35)
    assert 35 <= killed_finetune < 60 and not (workdir / FINETUNE / "train.json").exists()
    unlock(workdir)

    # 3. the same command again finishes the job
    proc = run_snakemake(workdir, *RELIABILITY_TARGETS)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Using workflow specific profile" in proc.stdout + proc.stderr  # rerun-incomplete comes from it

    assert resumed_step(workdir / "results/logs/pretrain/tiny/dapt-imdb.log") >= killed_pretrain
    assert resumed_step(workdir / f"results/logs/finetune/{RELIABILITY_RUN}.log") >= killed_finetune

    assert_same_results(workdir, clean_run)
    metrics = json.loads((workdir / EVALUATE / "metrics.json").read_text())
    clean_metrics = json.loads((clean_run / EVALUATE / "metrics.json").read_text())
    assert (metrics["accuracy"], metrics["macro_f1"]) == (clean_metrics["accuracy"], clean_metrics["macro_f1"])

    # finished jobs leave no checkpoints, and no temporary files anywhere
    assert [p for p in (workdir / "results/checkpoints").rglob("*") if p.is_file()] == []
    assert [p for p in (workdir / "results").rglob("*.tmp")] == []
    print(
        f"kill at pretrain step {killed_pretrain} and finetune step {killed_finetune}, "
        f"resume: {time.perf_counter() - started:.0f}s"
    )


# --------------------------------------------------------------------------------------------
# Checkpoint files under kills at the worst moments (fast, in-process)
# --------------------------------------------------------------------------------------------


def _trainer(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler


def _train_step(model, optimizer, scheduler) -> None:
    loss = model(torch.randn(3, 4)).square().mean()
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def test_checkpoint_restores_weights_optimizer_and_rng(tmp_path):
    model, optimizer, scheduler = _trainer()
    generator = torch.Generator().manual_seed(5)
    _train_step(model, optimizer, scheduler)
    save_checkpoint(tmp_path, model, optimizer, scheduler, {"step": 1}, generator)
    _train_step(model, optimizer, scheduler)  # its input comes from the global RNG; AdamW uses its moments
    expected_weight, expected_draw = model.weight.detach().clone(), torch.rand(3, generator=generator)

    model2, optimizer2, scheduler2 = _trainer(seed=1)
    generator2 = torch.Generator().manual_seed(99)
    assert load_checkpoint(tmp_path, model2, optimizer2, scheduler2, generator2) == {"step": 1}
    _train_step(model2, optimizer2, scheduler2)
    assert torch.equal(model2.weight, expected_weight)
    assert torch.equal(torch.rand(3, generator=generator2), expected_draw)
    assert scheduler2.last_epoch == scheduler.last_epoch


def test_a_kill_inside_a_checkpoint_write_leaves_a_whole_checkpoint(tmp_path):
    model, optimizer, scheduler = _trainer()
    save_checkpoint(tmp_path, model, optimizer, scheduler, {"step": 1})
    save_checkpoint(tmp_path, model, optimizer, scheduler, {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    # killed between its two renames: the old one moved to prev/, the new one not yet in place
    os.replace(tmp_path / "last", tmp_path / "prev")
    (tmp_path / ".last.x.tmp" / "last").mkdir(parents=True)
    assert checkpoint_step(tmp_path) == 2
    # killed while deleting an old folder: a last/ with one of its two files is no checkpoint
    (tmp_path / "last").mkdir()
    (tmp_path / "last" / "trainer.pt").write_bytes(b"partial")
    assert checkpoint_step(tmp_path) == 2
    save_checkpoint(tmp_path, model, optimizer, scheduler, {"step": 3})
    assert checkpoint_step(tmp_path) == 3 and sorted(p.name for p in tmp_path.iterdir()) == [".last.x.tmp", "last"]


def test_checkpoints_of_another_run_are_discarded(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    inputs = tmp_path / "blocks.parquet"
    inputs.write_bytes(b"v1")
    args = {"params": {"lr": 0.001}, "seed": 0, "gpus": 1, "threads": 2}
    checkpoints.guard_checkpoints(ckpt, checkpoints.job_identity(args, [str(inputs), ""]))
    (ckpt / "last").mkdir()
    # the same job (other resources only) keeps them
    checkpoints.guard_checkpoints(ckpt, checkpoints.job_identity({**args, "gpus": 0, "threads": 1}, [str(inputs), ""]))
    assert (ckpt / "last").is_dir()
    # other hyperparameters: discarded
    checkpoints.guard_checkpoints(ckpt, checkpoints.job_identity({**args, "params": {"lr": 0.01}}, [str(inputs), ""]))
    assert not (ckpt / "last").exists() and "discarding checkpoints" in capsys.readouterr().out
    # a re-made input (Snakemake reran the job upstream): discarded
    (ckpt / "last").mkdir()
    time.sleep(0.01)
    inputs.write_bytes(b"v2")
    checkpoints.guard_checkpoints(ckpt, checkpoints.job_identity({**args, "params": {"lr": 0.01}}, [str(inputs)]))
    assert not (ckpt / "last").exists()


def test_atomic_folder_replace_never_mixes_old_and_new(tmp_path):
    out = tmp_path / "model"
    with files.atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("old")
    (tmp_path / ".model.killed.tmp").mkdir()  # left by a killed attempt
    with pytest.raises(RuntimeError):
        with files.atomic_path(out) as tmp:
            tmp.mkdir()
            (tmp / "a").write_text("half")
            raise RuntimeError("killed")
    assert (out / "a").read_text() == "old"
    with files.atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "b").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"] and [p.name for p in out.iterdir()] == ["b"]
