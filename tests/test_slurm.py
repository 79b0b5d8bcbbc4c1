"""Run a Snakemake workflow on a real single-node SLURM cluster.

The session fixture ``slurm_cluster`` brings up munged, slurmctld and slurmd
with tests/slurm/cluster.sh (needs root and the packages from
.ci/install_slurm.sh) and stops exactly those daemons at the end.  Workflows
are run through ``snakemake --workflow-profile profiles/slurm`` by
:func:`run_snakemake_on_slurm`.

For now the test drives a toy workflow that uses the real rule names, so the
profile's set-resources/set-threads/groups apply.  To run the real study
instead, call::

    run_snakemake_on_slurm(REPO / "Snakefile", tmp_path,
                           ["--configfile", str(REPO / "tests/config/tiny.yaml")])

Run: ``pytest -m slurm tests/test_slurm.py``.
Set DAPT_SLURM_KEEP_STATE=1 to keep the cluster's state directory (configs,
daemon logs) after the session.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SH = REPO / "tests" / "slurm" / "cluster.sh"
PROFILE = REPO / "profiles" / "slurm"
DAEMONS = ("munged", "slurmctld", "slurmd")

# Whole Snakemake run; the toy workflow needs well under a minute.
SNAKEMAKE_TIMEOUT_S = int(os.environ.get("DAPT_SLURM_TIMEOUT", "900"))


def _process_gone(pid: int) -> bool:
    """True if ``pid`` does not exist or is a zombie (PID 1 may reap late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    state = stat.rsplit(")", 1)[1].split()[0]
    return state in ("Z", "X")


def _daemon_pids(state_dir: Path) -> dict[str, int]:
    files = {
        "munged": state_dir / "munge" / "munged.pid",
        "slurmctld": state_dir / "pids" / "slurmctld.pid",
        "slurmd": state_dir / "pids" / "slurmd.pid",
    }
    pids = {}
    for name, f in files.items():
        text = f.read_text().strip() if f.exists() else ""
        if text.isdigit():
            pids[name] = int(text)
    return pids


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<{exc}>"


class SlurmCluster:
    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.slurm_conf = state_dir / "etc" / "slurm.conf"

    def cluster_sh(self, action: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(CLUSTER_SH), action, str(self.state_dir)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def daemon_logs(self) -> str:
        out = []
        for log in ("log/slurmctld.log", "log/slurmd.log", "munge/munged.log"):
            out.append(f"----- {log} -----\n{_tail(self.state_dir / log)}")
        return "\n".join(out)


@pytest.fixture(scope="session")
def slurm_cluster():
    if shutil.which("slurmctld") is None and not Path("/usr/sbin/slurmctld").exists():
        pytest.skip("slurmctld is not installed (run .ci/install_slurm.sh as root)")

    # Under /tmp, not pytest's 0700 tmp dirs: munged runs as user "munge" and
    # must reach its socket/key directory inside the state dir.
    state_dir = Path(tempfile.mkdtemp(prefix="dapt-slurm-", dir="/tmp"))
    cluster = SlurmCluster(state_dir)
    t0 = time.monotonic()
    try:
        started = cluster.cluster_sh("start")
    except subprocess.TimeoutExpired as exc:
        started = subprocess.CompletedProcess(exc.cmd, -1, exc.stdout or "", exc.stderr or "")
    if started.returncode != 0:
        cluster.cluster_sh("stop")
        pytest.fail(
            f"could not start the SLURM test cluster (rc={started.returncode}, "
            f"state in {state_dir}; needs root):\n{started.stdout}\n{started.stderr}",
            pytrace=False,
        )
    print(f"\nSLURM test cluster up in {time.monotonic() - t0:.1f}s ({state_dir})")
    pids = _daemon_pids(state_dir)
    assert set(pids) == set(DAEMONS), f"missing pid files: {pids}"

    old_conf = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.slurm_conf)
    try:
        yield cluster
    finally:
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        stopped = cluster.cluster_sh("stop")
        left = {n: p for n, p in pids.items() if not _process_gone(p)}
        if not os.environ.get("DAPT_SLURM_KEEP_STATE") and stopped.returncode == 0 and not left:
            shutil.rmtree(state_dir, ignore_errors=True)
        assert stopped.returncode == 0, f"cluster.sh stop failed:\n{stopped.stderr}"
        assert not left, f"daemons still running after stop: {left}"


def run_snakemake_on_slurm(
    snakefile: Path | str,
    workdir: Path | str,
    extra_args: list[str] | tuple[str, ...] = (),
    timeout: float = SNAKEMAKE_TIMEOUT_S,
) -> subprocess.CompletedProcess:
    """Run ``snakemake -s SNAKEFILE --directory WORKDIR`` with profiles/slurm.

    Needs the ``slurm_cluster`` fixture (it exports SLURM_CONF).  Fails the
    test, with Snakemake's output and the SLURM job logs, if Snakemake exits
    non-zero or runs past ``timeout`` seconds.
    """
    workdir = Path(workdir)
    env = dict(os.environ)
    # Jobs run `python -m snakemake` again inside SLURM (sbatch --export=ALL):
    # make this interpreter's environment (the venv) the one they find.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("SLURM_JOB_ID", None)  # never look like we run inside a job
    cmd = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(snakefile),
        "--directory", str(workdir),
        "--workflow-profile", str(PROFILE),
        *map(str, extra_args),
    ]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        # SIGTERM lets the SLURM executor scancel its jobs.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        timed_out = True
    elapsed = time.monotonic() - t0
    print(f"snakemake on SLURM: rc={proc.returncode} in {elapsed:.1f}s")
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, "")
    if timed_out or proc.returncode != 0:
        job_logs = sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
        details = "\n".join(f"----- {p} -----\n{_tail(p)}" for p in job_logs[-6:])
        squeue = subprocess.run(["squeue", "--states=all"], capture_output=True, text=True)
        pytest.fail(
            f"snakemake {'timed out' if timed_out else 'failed'} "
            f"(rc={proc.returncode}, {elapsed:.0f}s): {' '.join(cmd)}\n"
            f"{out[-8000:]}\n----- squeue -----\n{squeue.stdout}{squeue.stderr}\n{details}",
            pytrace=False,
        )
    return result


# A toy workflow with the real rule names: prepare_model runs locally,
# tokenize_corpus is a CPU job, pretrain and evaluate are GPU jobs and the two
# evaluate jobs are grouped into one SLURM job by the profile.
TOY_SNAKEFILE = textwrap.dedent(
    r"""
    localrules: all, prepare_model

    rule all:
        input:
            "toy/pretrain.txt",
            expand("toy/eval_{task}.txt", task=["a", "b"]),

    rule prepare_model:
        output: "toy/model.txt"
        shell: "echo SLURM_JOB_ID=${{SLURM_JOB_ID:-none}} > {output}"

    rule tokenize_corpus:
        input: "toy/model.txt"
        output: "toy/tokens.txt"
        shell:
            "echo SLURM_JOB_ID=$SLURM_JOB_ID SLURM_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK "
            "threads={threads} > {output}"

    rule pretrain:
        input: "toy/tokens.txt"
        output: "toy/pretrain.txt"
        resources: gpu=1
        shell:
            "echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES "
            "SLURM_JOB_ID=$SLURM_JOB_ID > {output}"

    rule evaluate:
        input: "toy/pretrain.txt"
        output: "toy/eval_{task}.txt"
        resources: gpu=1
        shell:
            "echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES "
            "SLURM_JOB_ID=$SLURM_JOB_ID > {output}"
    """
)


def _env_line(path: Path) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S*)", path.read_text()))


def test_toy_workflow_on_slurm(slurm_cluster, tmp_path):
    cpus = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True).stdout
    assert int(cpus.split()[0]) >= 2, "profiles/slurm asks for 2 CPUs per job; node has fewer"
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(TOY_SNAKEFILE)
    workdir = tmp_path / "work"
    workdir.mkdir()

    run_snakemake_on_slurm(snakefile, workdir, [])

    toy = workdir / "toy"
    model = _env_line(toy / "model.txt")
    tokens = _env_line(toy / "tokens.txt")
    pretrain = _env_line(toy / "pretrain.txt")
    evals = [_env_line(toy / f"eval_{t}.txt") for t in ("a", "b")]

    # local rule: ran in the Snakemake process, not in a SLURM job
    assert model["SLURM_JOB_ID"] == "none"
    # CPU job: a SLURM job with the profile's set-threads (2) as CPUs
    assert tokens["SLURM_JOB_ID"].isdigit()
    assert tokens["SLURM_CPUS_PER_TASK"] == "2" and tokens["threads"] == "2"
    # GPU job: got the (fake) GPU through --gpus=1
    assert pretrain["SLURM_JOB_ID"].isdigit()
    assert pretrain["CUDA_VISIBLE_DEVICES"] == "0"
    assert pretrain["SLURM_JOB_ID"] != tokens["SLURM_JOB_ID"]
    # grouped evaluate jobs: one SLURM job, one GPU
    assert all(e["CUDA_VISIBLE_DEVICES"] == "0" for e in evals)
    assert evals[0]["SLURM_JOB_ID"] == evals[1]["SLURM_JOB_ID"]
    assert evals[0]["SLURM_JOB_ID"].isdigit()
    assert evals[0]["SLURM_JOB_ID"] not in (pretrain["SLURM_JOB_ID"], tokens["SLURM_JOB_ID"])
