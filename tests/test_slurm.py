"""Run a Snakemake workflow on a real single-node SLURM cluster.

The module fixture ``slurm_cluster`` brings up munged, slurmctld and slurmd
with tests/slurm/cluster.sh (needs root and the packages from
.ci/install_slurm.sh) and stops them when this module's tests are done, also
when a test or the start-up fails; its teardown fails if any process the
cluster started (daemons, job steps, job scripts) is still alive.  A watchdog
process stops the cluster if pytest itself dies first (SIGKILL, or SIGTERM
from ``timeout``, which skip finalizers).  Workflows are run through
``snakemake --workflow-profile profiles/slurm`` by :func:`run_snakemake_on_slurm`.

The test runs the tiny study (tests/config/tiny.yaml on a reduced grid: one
seed, method full, variants base and dapt) end to end: prepare_* and report
run in the Snakemake process (localrules), tokenize_* are CPU jobs, pretrain
and finetune are GPU jobs, and the two evaluate jobs go into one SLURM job
(the profile's group "evaluation").  Every training/evaluation script writes
a ``[dapt.job] start`` line into its log under results/logs/ with the SLURM
job id, the CPUs SLURM gave it and the CUDA_VISIBLE_DEVICES it saw; the test
reads those back.  The GPU is a fake one (a device file, see cluster.sh), so
torch still runs on CPU.

Run: ``pytest -m slurm tests/test_slurm.py`` (about 4 minutes on 2 cores).
Set DAPT_SLURM_KEEP_STATE=1 to keep the cluster's state directory (configs,
daemon logs) after the session.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import make_workdir, tiny_config

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SH = REPO / "tests" / "slurm" / "cluster.sh"
PROFILE = REPO / "profiles" / "slurm"
DAEMONS = ("munged", "slurmctld", "slurmd")

# Whole Snakemake run; the reduced tiny study takes about 4 minutes on 2 busy cores.
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


def cluster_processes(state_dir: Path, also: dict[str, int] | None = None) -> dict[int, str]:
    """Live processes of this cluster: {pid: command}.

    The daemons may lose their pid files and job steps have none, so a process counts as the
    cluster's when its command line or its environment names the state directory: the daemons'
    arguments, and SLURM_CONF=<state>/etc/slurm.conf, which cluster.sh exports to the daemons and
    they pass on to slurmstepd and the job scripts. ``also``: pids known otherwise (the pid files).
    Zombies count as gone. Not this process: its SLURM_CONF was set after it started.
    """
    marker = str(state_dir).encode()
    found = {pid: name for name, pid in (also or {}).items() if not _process_gone(pid)}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            named = marker in cmdline or marker in (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile
            continue
        if named and not _process_gone(int(entry.name)):
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    return found


def kill_all(pids: dict[int, str], grace_s: float = 10) -> None:
    """SIGTERM, then SIGKILL what is still alive after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and not all(_process_gone(p) for p in pids):
            time.sleep(0.1)


def start_watchdog(state_dir: Path) -> subprocess.Popen:
    """A process, in its own session, that runs ``cluster.sh stop`` once pytest is gone.

    It waits for end-of-file on a pipe only pytest holds, so any death of pytest (SIGKILL, or the
    SIGTERM of ``timeout``, which skip fixture finalizers) releases it; it ignores the signals
    that are sent to pytest's process group. The finalizer kills it when it stopped the cluster itself.
    """
    script = f'trap "" INT TERM HUP; read -r _; exec bash {CLUSTER_SH} stop {state_dir} >/dev/null 2>&1'
    return subprocess.Popen(
        ["bash", "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


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


@pytest.fixture(scope="module")
def slurm_cluster():
    """The test cluster, for this module's tests only (not kept up through the rest of the session).

    Stopped in the finalizer whatever happened (a failed start, a failed test); the teardown
    fails if ``cluster.sh stop`` left any of the cluster's processes alive (they are then killed).
    """
    if shutil.which("slurmctld") is None and not Path("/usr/sbin/slurmctld").exists():
        pytest.skip("slurmctld is not installed (run .ci/install_slurm.sh as root)")

    # Under /tmp, not pytest's 0700 tmp dirs: munged runs as user "munge" and
    # must reach its socket/key directory inside the state dir.
    state_dir = Path(tempfile.mkdtemp(prefix="dapt-slurm-", dir="/tmp"))
    cluster = SlurmCluster(state_dir)
    watchdog = start_watchdog(state_dir)
    old_conf = os.environ.get("SLURM_CONF")
    pids: dict[str, int] = {}
    try:
        t0 = time.monotonic()
        try:
            started = cluster.cluster_sh("start")
        except subprocess.TimeoutExpired as exc:
            started = subprocess.CompletedProcess(exc.cmd, -1, exc.stdout or "", exc.stderr or "")
        pids = _daemon_pids(state_dir)
        if started.returncode != 0:
            pytest.fail(
                f"could not start the SLURM test cluster (rc={started.returncode}, "
                f"state in {state_dir}; needs root):\n{started.stdout}\n{started.stderr}",
                pytrace=False,
            )
        print(f"\nSLURM test cluster up in {time.monotonic() - t0:.1f}s ({state_dir})")
        assert set(pids) == set(DAEMONS), f"missing pid files: {pids}"
        os.environ["SLURM_CONF"] = str(cluster.slurm_conf)
        yield cluster
    finally:
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        try:
            stopped = cluster.cluster_sh("stop")
        except subprocess.TimeoutExpired as exc:
            stopped = subprocess.CompletedProcess(exc.cmd, -1, exc.stdout or "", f"timed out: {exc.stderr or ''}")
        watchdog.kill()
        watchdog.wait()
        left = cluster_processes(state_dir, also=pids)
        kill_all(left)  # whatever stop missed: never leave daemons behind, even when failing
        still = cluster_processes(state_dir, also=pids)
        if not os.environ.get("DAPT_SLURM_KEEP_STATE") and stopped.returncode == 0 and not left:
            shutil.rmtree(state_dir, ignore_errors=True)
        assert stopped.returncode == 0, f"cluster.sh stop failed:\n{stopped.stderr}"
        assert not left, f"processes of the cluster alive after cluster.sh stop (killed now): {left}"
        assert not still, f"processes of the cluster survive SIGKILL: {still}"


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


# --------------------------------------------------------------------------- the tiny study

JOB_START = re.compile(r"^\[dapt\.job\] start \S+ epoch=[\d.]+ (.*)$", re.M)
RUNTIME = re.compile(r"^runtime: (\{.*\})$", re.M)


def reduced_tiny_config() -> dict:
    """tests/config/tiny.yaml on a smaller grid: 1 seed, method full, variants base and dapt.

    (A config file rather than --config overrides: Snakemake merges --config into nested
    mappings key by key, so it cannot drop variants or methods, and it reads `seeds=[1]` as
    strings.)
    """
    config = tiny_config()
    config["variants"] = {name: config["variants"][name] for name in ("base", "dapt")}
    config["methods"] = {"full": config["methods"]["full"]}
    config["seeds"] = [1]
    return config


def job_record(log: Path) -> dict:
    """The `[dapt.job] start` fields and the runtime line a training/evaluation script logged."""
    text = log.read_text(errors="replace")
    starts = JOB_START.findall(text)
    runtimes = RUNTIME.findall(text)
    assert len(starts) == 1 and len(runtimes) == 1, f"{log}: want one start and one runtime line:\n{text[-3000:]}"
    return {
        "log": log.name,
        "text": text,
        **dict(re.findall(r"(\w+)=(\S+)", starts[0])),
        "runtime": json.loads(runtimes[0]),
    }


def slurm_jobs_by_rule(workdir: Path) -> dict[str, set[str]]:
    """{rule_<rule> or group_<group>: SLURM job ids}, from the plugin's per-job logs."""
    jobs: dict[str, set[str]] = {}
    for log in (workdir / ".snakemake" / "slurm_logs").rglob("*.log"):
        top = log.relative_to(workdir / ".snakemake" / "slurm_logs").parts[0]
        if top.startswith("group_"):  # group_<group>_<rules of its members>
            top = "_".join(top.split("_")[:2])
        jobs.setdefault(top, set()).add(log.stem)
    return jobs


def test_tiny_study_on_slurm(slurm_cluster, tmp_path):
    cpus = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True).stdout
    assert int(cpus.split()[0]) >= 2, "profiles/slurm asks for 2 CPUs per job; node has fewer"
    workdir = make_workdir(tmp_path / "study", reduced_tiny_config())

    run_snakemake_on_slurm(
        REPO / "Snakefile",
        workdir,
        ["--configfile", workdir / "study.yaml",
         # first status poll sooner than the profile's 10 s: the tiny jobs are short
         "--slurm-init-seconds-before-status-checks", "3"],
    )  # fmt: skip

    report = workdir / "results" / "report"
    assert "rt_polarity" in (report / "table.md").read_text()
    assert json.loads((report / "provenance.json").read_text())["runs"]["count"] == 2

    # Which rules ran as SLURM jobs: prepare_* and report are localrules, the evaluate jobs are
    # one group job; the classical baseline (TF-IDF + LR, minutes on a large task) is a job of its own.
    by_rule = slurm_jobs_by_rule(workdir)
    print({name: sorted(ids) for name, ids in by_rule.items()})
    assert set(by_rule) == {
        "rule_tokenize_corpus",
        "rule_tokenize_task",
        "rule_pretrain",
        "rule_finetune",
        "rule_baseline",
        "group_evaluation",
    }, by_rule
    assert len(by_rule["rule_finetune"]) == 2 and len(by_rule["group_evaluation"]) == 1

    logs = workdir / "results" / "logs"
    run = "rt_polarity/tiny/{}/full/seed1.log"
    pretrain = job_record(logs / "pretrain" / "tiny" / "dapt-imdb.log")
    finetunes = [job_record(logs / "finetune" / run.format(v)) for v in ("base", "dapt")]
    evaluates = [job_record(logs / "evaluate" / run.format(v)) for v in ("base", "dapt")]
    for job in (pretrain, *finetunes, *evaluates):
        # a GPU rule (resources gpu=1 -> sbatch --gpus=1) ran in a SLURM job and saw its GPU
        assert job["slurm_job"].isdigit(), job["log"]
        assert job["CUDA_VISIBLE_DEVICES"] == "0", job["log"]
        assert f"SLURM job {job['slurm_job']} assigned GPU(s) 0; claiming nothing" in job["text"]
        assert job["gpus_requested"] == "1" and job["gpus_claimed"] == "0"
        assert job["runtime"]["device"].startswith("cpu (")  # the GPU is a fake: torch runs on CPU
    assert pretrain["slurm_job"] in by_rule["rule_pretrain"]
    assert {j["slurm_job"] for j in finetunes} == by_rule["rule_finetune"]
    # the profile's set-threads became --cpus-per-task, and the script's torch threads
    for job in (pretrain, *finetunes):
        assert job["slurm_cpus"] == "2" and job["runtime"]["threads"] == 2, job["log"]
    # both evaluations ran one after the other inside the one group job
    assert {j["slurm_job"] for j in evaluates} == by_rule["group_evaluation"]
    assert all(j["runtime"]["threads"] == 1 for j in evaluates)

    for variant in ("base", "dapt"):
        metrics = json.loads(
            (workdir / "results/evaluate/rt_polarity/tiny" / variant / "full/seed1/metrics.json").read_text()
        )
        assert metrics["device"].startswith("cpu (") and metrics["precision"] == "fp32"
