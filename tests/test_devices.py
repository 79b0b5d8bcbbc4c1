"""dapt.runtime.devices on a CPU-only machine: GPUs are faked with DAPT_GPU_IDS, jobs are subprocesses."""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dapt.core.errors import UserError
from dapt.runtime import devices, distributed

ROOT = Path(__file__).resolve().parents[1]

JOB = ROOT / "tests" / "helpers" / "device_job.py"
_ENV_VARS = (
    "DAPT_GPU_IDS",
    "DAPT_GPU_SLOT_DIR",
    "DAPT_FORCE_CPU_DDP",
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "LOCAL_RANK",
    "RANK",
    "WORLD_SIZE",
    "SLURM_JOB_ID",
    "SLURM_STEP_GPUS",
    "SLURM_JOB_GPUS",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No GPU/scheduler variables leak in from the machine running the tests."""
    for var in _ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    yield
    devices.release_devices()


def job_env(slot_dir: Path, ids: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _ENV_VARS}
    env.update(DAPT_GPU_IDS=ids, DAPT_GPU_SLOT_DIR=str(slot_dir), **extra)
    return env


def start_claim(slot_dir: Path, ids: str, k: int, out: Path, hold_s: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(JOB), "claim", str(k), str(out), str(hold_s)],
        env=job_env(slot_dir, ids),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_claimed(proc: subprocess.Popen) -> str:
    """Block until the job says it holds its ids; return its CUDA_VISIBLE_DEVICES."""
    line = proc.stdout.readline()
    assert line.startswith("claimed "), (line, proc.stderr.read())
    return line.split()[1]


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()]


def is_locked(slot_dir: Path, dev_id: str) -> bool:
    with open(slot_dir / f"gpu-{dev_id}.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


# --------------------------------------------------------------------------- claiming


def test_concurrent_jobs_never_share_a_device(tmp_path):
    """6 jobs of 2 ids on 4 fake GPUs: jobs alive at the same time must have disjoint ids."""
    out, slots = tmp_path / "jobs.jsonl", tmp_path / "slots"
    procs = [start_claim(slots, "0,1,2,3", 2, out, 0.6) for _ in range(6)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    jobs = records(out)
    assert len(jobs) == 6
    for job in jobs:
        assert len(job["ids"]) == 2 and len(set(job["ids"])) == 2
        assert set(job["ids"]) <= {"0", "1", "2", "3"}
        assert job["cvd"] == ",".join(job["ids"])
    overlapping = 0
    for a, b in itertools.combinations(jobs, 2):
        if a["start"] < b["end"] and b["start"] < a["end"]:
            overlapping += 1
            assert not set(a["ids"]) & set(b["ids"]), (a, b)
    assert overlapping > 0, "jobs never ran concurrently, so the test proved nothing"
    # The recorded windows lie inside the lock-holding time, so at most 2 jobs fit at any moment.
    for job in jobs:
        alive = [j for j in jobs if j["start"] <= job["start"] < j["end"]]
        assert len(alive) <= 2


def test_waiting_job_proceeds_when_devices_come_free(tmp_path):
    out, slots = tmp_path / "jobs.jsonl", tmp_path / "slots"
    a = start_claim(slots, "0,1", 2, out, 3.0)  # long enough for B to start and wait
    assert wait_claimed(a) == "0,1"
    b = start_claim(slots, "0,1", 1, out, 0.0)
    _, err_b = b.communicate(timeout=60)
    a.communicate(timeout=60)
    assert a.returncode == 0 and b.returncode == 0, err_b
    assert "waiting for 1 free GPU(s)" in err_b
    assert f"held by pid {a.pid} on " in err_b  # the lock file tells humans who holds it
    job_a, job_b = sorted(records(out), key=lambda r: r["pid"] != a.pid)
    assert job_b["start"] >= job_a["end"]
    assert len(job_b["ids"]) == 1


def test_sigkilled_job_gives_its_devices_back(tmp_path):
    out, slots = tmp_path / "jobs.jsonl", tmp_path / "slots"
    a = start_claim(slots, "0,1", 2, out, 60)
    wait_claimed(a)
    assert is_locked(slots, "0") and is_locked(slots, "1")
    a.send_signal(signal.SIGKILL)
    a.wait(timeout=10)
    assert not is_locked(slots, "0") and not is_locked(slots, "1")
    b = start_claim(slots, "0,1", 2, out, 0.0)
    _, err_b = b.communicate(timeout=30)
    assert b.returncode == 0, err_b
    assert "waiting" not in err_b
    assert sorted(records(out)[0]["ids"]) == ["0", "1"]


def test_claim_in_process_exports_ids_and_is_idempotent(tmp_path, monkeypatch):
    monkeypatch.setenv("DAPT_GPU_IDS", "5,6,7")
    ids = devices.claim_devices(2, slot_dir=str(tmp_path))
    assert ids == ["5", "6"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5,6"
    assert devices.claim_devices(2, slot_dir=str(tmp_path)) == ids
    assert (tmp_path / "gpu-5.lock").read_text().startswith(f"pid {os.getpid()} on ")
    devices.release_devices()
    assert not is_locked(tmp_path, "5")


def test_visible_argument_overrides_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DAPT_GPU_IDS", "0,1")
    assert devices.claim_devices(1, slot_dir=str(tmp_path), visible="GPU-abc") == ["GPU-abc"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-abc"


def test_zero_gpus_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("DAPT_GPU_IDS", "0,1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert devices.claim_devices(0, slot_dir=str(tmp_path)) == []
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert list(tmp_path.iterdir()) == []


def test_no_devices_means_cpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert devices.claim_devices(1, slot_dir=str(tmp_path)) == []
    assert "running on CPU" in capsys.readouterr().err
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""


def test_more_gpus_than_exist_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DAPT_GPU_IDS", "0,1")
    with pytest.raises(UserError, match="asks for 3 GPUs but only 2"):
        devices.claim_devices(3, slot_dir=str(tmp_path))


def test_slurm_assignment_is_respected(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert devices.claim_devices(1, slot_dir=str(tmp_path)) == ["3"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert list(tmp_path.iterdir()) == [] and devices._held == []


def test_slurm_allocation_shared_by_several_jobs_is_split(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert devices.claim_devices(1, slot_dir=str(tmp_path)) == ["0"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert is_locked(tmp_path / "slurm-4242", "0")


def test_distributed_child_claims_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("DAPT_GPU_IDS", "0,1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert devices.claim_devices(2, slot_dir=str(tmp_path)) == ["2", "3"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert list(tmp_path.iterdir()) == []


def test_claiming_does_not_load_torch(tmp_path):
    """torch must not be imported before CUDA_VISIBLE_DEVICES is final."""
    code = (
        "import sys; from dapt.runtime import devices, distributed; devices.claim_devices(1); "
        "distributed.maybe_relaunch_distributed(1, sys.argv); assert 'torch' not in sys.modules"
    )
    run = subprocess.run([sys.executable, "-c", code], env=job_env(tmp_path, "0"), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "claimed GPU(s) 0" in run.stderr


def test_nvidia_smi_listing_is_parsed():
    plain = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1111)\nGPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-2222)\n"
    assert devices._parse_nvidia_smi(plain) == ["0", "1"]
    mig = (
        "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-1111)\n"
        "  MIG 3g.20gb     Device  0: (UUID: MIG-aaaa-bbbb)\n"
        "  MIG 3g.20gb     Device  1: (UUID: MIG-cccc-dddd)\n"
    )
    assert devices._parse_nvidia_smi(mig) == ["MIG-aaaa-bbbb", "MIG-cccc-dddd"]
    assert devices._parse_nvidia_smi("") == []


# --------------------------------------------------------------------------- distributed


def test_dist_info_defaults_and_env(monkeypatch):
    assert distributed.dist_info() == (0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.dist_info() == (3, 4, 1)


def test_no_relaunch_without_enough_devices(monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    distributed.maybe_relaunch_distributed(2, ["train.py"])  # would sys.exit if it relaunched
    assert "running one process" in capsys.readouterr().err
    distributed.maybe_relaunch_distributed(1, ["train.py"])


def test_two_gloo_ranks_on_cpu(tmp_path):
    env = job_env(tmp_path / "slots", "", DAPT_FORCE_CPU_DDP="1", OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, str(JOB), "ddp", "2", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr
    ranks = sorted((json.loads(p.read_text()) for p in tmp_path.glob("rank-*.json")), key=lambda r: r["rank"])
    assert [r["rank"] for r in ranks] == [0, 1]
    for r in ranks:
        assert r["world_size"] == 2 and r["joined"] is True and r["device"] == "cpu"
        assert r["all_reduce"] == 3.0  # (0 + 1) + (1 + 1): both ranks took part
        assert r["sums"] == {"n": 2.0, "rank": 1.0}
    assert sorted(r["local_rank"] for r in ranks) == [0, 1]


def test_failing_rank_fails_the_job(tmp_path):
    env = job_env(tmp_path / "slots", "", DAPT_FORCE_CPU_DDP="1", OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, str(JOB), "ddp", "2", str(tmp_path), "fail"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode != 0


def test_sigterm_is_forwarded_to_the_launched_processes(tmp_path):
    marker = tmp_path / "got-sigterm"
    child = [sys.executable, str(JOB), "sleep", str(marker)]
    code = f"import sys; from dapt.runtime import distributed; sys.exit(distributed._run_forwarding_signals({child!r}))"
    parent = subprocess.Popen(
        [sys.executable, "-c", code],
        env=job_env(tmp_path, ""),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout.readline().strip() == "ready"  # the child inherits stdout
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=15) == 143
    assert marker.read_text() == str(int(signal.SIGTERM))


def test_pick_device_on_cpu():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("checks the CPU fallback")
    assert distributed.pick_device() == torch.device("cpu")
