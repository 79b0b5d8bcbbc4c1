"""GPU slots on a workstation, through Snakemake: concurrent GPU jobs never share a device.

``--resources gpu=2`` only caps how many GPU jobs run at once; which GPU each one gets is decided
by dapt.runtime.devices (flock on one lock file per id). Here the two "GPUs" are fake ids
(``DAPT_GPU_IDS=0,1``), so torch still runs on CPU: with ids that name no real device,
``torch.cuda.is_available()`` is False (and this machine has no CUDA at all).

Every training/evaluation script logs, through ``dapt.runtime.cli.start``::

    [dapt.job] start <iso> epoch=<t> pid=.. host=.. slurm_job=none gpus_requested=1 gpus_claimed=1
                     CUDA_VISIBLE_DEVICES=1
    [dapt.job] end   <iso> epoch=<t> pid=.. gpus_claimed=1

The start line is written once the locks are held and the end line before the process exits
(the kernel drops the locks after that), so each logged interval lies inside the time the job
really held its ids. The test reads these intervals back from results/logs/ and checks that any two
jobs that ran at the same time held different ids, and that some did run at the same time (else
the check would prove nothing).
"""

from __future__ import annotations

import itertools
import re
import time
from pathlib import Path

import pytest
from conftest import make_workdir, run_snakemake, tiny_config

pytestmark = pytest.mark.slow

GPU_RULES = ("pretrain", "finetune", "evaluate")
JOB_LINE = re.compile(r"^\[dapt\.job\] (start|end) \S+ epoch=([\d.]+) (.*)$", re.M)


def job_intervals(log_root: Path) -> list[dict]:
    """One record per GPU job log: rule, log, claimed ids, CUDA_VISIBLE_DEVICES, start/end epoch."""
    jobs = []
    for rule in GPU_RULES:
        for log in sorted((log_root / rule).rglob("*.log")):
            text = log.read_text(errors="replace")
            events = {}
            for event, epoch, rest in JOB_LINE.findall(text):
                events[event] = (float(epoch), dict(re.findall(r"(\w+)=(\S+)", rest)))
            assert set(events) == {"start", "end"}, f"{log}: no [dapt.job] start/end lines:\n{text[-2000:]}"
            fields = events["start"][1]
            ids = [] if fields["gpus_claimed"] == "none" else fields["gpus_claimed"].split(",")
            jobs.append(
                dict(
                    rule=rule,
                    log=str(log.relative_to(log_root)),
                    ids=ids,
                    visible=fields["CUDA_VISIBLE_DEVICES"],
                    slurm_job=fields["slurm_job"],
                    start=events["start"][0],
                    end=events["end"][0],
                )
            )
    return jobs


def overlapping(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def check_exclusive(jobs: list[dict]) -> list[tuple[dict, dict]]:
    """Assert no two overlapping jobs hold the same id; return the overlapping pairs."""
    pairs = [(a, b) for a, b in itertools.combinations(jobs, 2) if overlapping(a, b)]
    for a, b in pairs:
        shared = set(a["ids"]) & set(b["ids"])
        assert not shared, (
            f"GPU(s) {sorted(shared)} held by two jobs at once: {a['log']} "
            f"[{a['start']:.2f}, {a['end']:.2f}] and {b['log']} [{b['start']:.2f}, {b['end']:.2f}]"
        )
    return pairs


def test_exclusive_check_catches_a_shared_gpu():
    """The checker itself can fail: overlapping jobs on one id are reported, sequential ones are not."""
    a = dict(log="a", ids=["0"], start=0.0, end=10.0)
    b = dict(log="b", ids=["0"], start=5.0, end=15.0)
    c = dict(log="c", ids=["0"], start=10.0, end=20.0)  # starts when a ends: fine
    d = dict(log="d", ids=["1"], start=5.0, end=15.0)
    with pytest.raises(AssertionError, match=r"GPU\(s\) \['0'\] held by two jobs at once"):
        check_exclusive([a, b])
    assert check_exclusive([a, c, d]) == [(a, d), (c, d)]


def test_concurrent_gpu_jobs_never_share_a_device(tmp_path, monkeypatch):
    # Reduced grid: one variant, one method, two seeds -> the two fine-tuning jobs (1 thread each
    # in profiles/default) become ready together and run side by side, as do the two evaluations.
    config = tiny_config()
    config["variants"] = {"base": []}
    config["methods"] = {"full": {}}
    config["seeds"] = [1, 2]
    workdir = make_workdir(tmp_path / "study", config)
    slots = tmp_path / "slots"
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "LOCAL_RANK", "RANK", "WORLD_SIZE", "DAPT_FORCE_CPU_DDP"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DAPT_GPU_IDS", "0,1")
    monkeypatch.setenv("DAPT_GPU_SLOT_DIR", str(slots))

    t0 = time.monotonic()
    proc = run_snakemake(workdir, "--resources", "gpu=2", timeout=300)  # conftest adds --cores 2
    print(f"snakemake --cores 2 --resources gpu=2: rc={proc.returncode} in {time.monotonic() - t0:.0f}s")
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert (workdir / "results/report/table.md").exists()

    jobs = job_intervals(workdir / "results/logs")
    assert sorted(j["rule"] for j in jobs) == ["evaluate"] * 2 + ["finetune"] * 2
    for job in jobs:
        assert len(job["ids"]) == 1 and job["ids"][0] in ("0", "1"), job
        assert job["visible"] == job["ids"][0], job  # torch only ever sees the claimed GPU
        assert job["slurm_job"] == "none"
    pairs = check_exclusive(jobs)
    for a, b in pairs:
        print(f"ran together: {a['log']} on GPU {a['ids']} and {b['log']} on GPU {b['ids']}")
    assert pairs, "no two GPU jobs ran at the same time: the test proved nothing"
    assert sorted(p.name for p in slots.glob("*.lock")) == ["gpu-0.lock", "gpu-1.lock"]
    # the runs themselves still ran on CPU
    import json

    train = json.loads((workdir / "results/finetune/rt_polarity/tiny/base/full/seed1/train.json").read_text())
    assert train["device"].startswith("cpu (") and train["precision"] == "fp32"
