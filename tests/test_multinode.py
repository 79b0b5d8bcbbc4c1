"""Multi-node pretraining: ``--nodes M`` inside a SLURM allocation becomes one ``srun`` step with one
torchrun agent per node, meeting at a c10d rendezvous on the allocation's first host.

No multi-node SLURM cluster is available here, so:

* the command is checked as built from a fake SLURM environment, with a fake ``scontrol`` on PATH
  (and the real one, where installed, for the node-list expansion);
* on the real single-node test cluster (tests/slurm/cluster.sh, needs root), a batch job runs the
  command built for 1 node x 2 processes: scontrol and srun are real there, and the job drops its
  SLURM_* variables as Snakemake's job step does;
* the launch itself runs for real on one machine: scripts/pretrain.py ``--gpus 2 --nodes 2`` under a
  fake SLURM job, whose ``srun`` (a stand-in on PATH) starts the built command once per "node" as
  two local processes. That makes two torchrun agents with one gloo worker each, which meet at the
  c10d rendezvous on 127.0.0.1, and train the tiny model (dropout off, inputs of tests/test_ddp.py)
  to the losses and weights of one plain process, within the tolerances of tests/test_ddp.py.

What this cannot show: real srun placement, GPUs per node under SLURM, NCCL across hosts.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from conftest import REPO
from test_ddp import (
    LOSS_RTOL,
    assert_same_weights,
    inputs,  # noqa: F401  (a fixture)
    run_script,
)
from test_slurm import slurm_cluster  # noqa: F401  (a fixture: the single-node test cluster)

from dapt.core.errors import UserError
from dapt.runtime import distributed

# scontrol stand-in: logs its arguments; `show hostnames` prints $FAKE_HOSTS, `show job` a node list
FAKE_SCONTROL = """#!/bin/sh
echo "$@" >> "$FAKE_SCONTROL_LOG"
case "$1 $2" in
  "show hostnames") printf '%s\\n' $FAKE_HOSTS ;;
  "show job") echo "JobId=$4 JobName=pretrain ReqNodeList=(null) ExcNodeList=(null)" \\
    "NodeList=gpu[07-08] BatchHost=gpu07" ;;
  *) exit 1 ;;
esac
"""

# srun stand-in: runs the command once per node, all on this machine (SLURM_NODEID = 0..M-1), and
# like --kill-on-bad-exit stops the others when one fails (else they would wait for the rendezvous)
FAKE_SRUN = """#!{python}
import json, os, signal, subprocess, sys, time
args = sys.argv[1:]
with open(os.environ["FAKE_SRUN_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
opts, i = {{}}, 0
while args[i].startswith("--"):
    if "=" in args[i]:
        key, value = args[i].split("=", 1)
        i += 1
    else:
        key, value = args[i], args[i + 1]
        i += 2
    opts[key] = value
nodes = int(opts["--nodes"])
procs = [subprocess.Popen(args[i:], env={{**os.environ, "SLURM_NODEID": str(k), "SLURM_PROCID": str(k),
                                          "SLURM_STEP_NUM_NODES": str(nodes)}}) for k in range(nodes)]
def stop(signum, frame):  # the launcher was killed (e.g. the test's timeout): take the tasks with us
    for p in procs:
        p.terminate()
    sys.exit(128 + signum)
signal.signal(signal.SIGTERM, stop)
while True:
    codes = [p.poll() for p in procs]
    bad = [c for c in codes if c not in (None, 0)]
    if bad:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()
        sys.exit(bad[0])
    if all(c == 0 for c in codes):
        sys.exit(0)
    time.sleep(0.2)
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """A bin folder with fake scontrol and srun first on PATH; returns the folder (logs in it)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(FAKE_SCONTROL)
    (bin_dir / "srun").write_text(FAKE_SRUN.format(python=sys.executable))
    for exe in ("scontrol", "srun"):
        (bin_dir / exe).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SCONTROL_LOG", str(bin_dir / "scontrol.log"))
    monkeypatch.setenv("FAKE_SRUN_LOG", str(bin_dir / "srun.log"))
    monkeypatch.setenv("FAKE_HOSTS", "gpu07 gpu08")
    return bin_dir


def torchrun(nodes: int, per_node: int, endpoint: str, job: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        str(nodes),
        "--nproc_per_node",
        str(per_node),
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        endpoint,
        "--rdzv_id",
        job,
    ]


def test_srun_command_from_the_slurm_node_list(fake_slurm):
    env = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    cmd = distributed.multinode_command(2, 8, ["scripts/pretrain.py", "--gpus", "8"], threads=6, env=env)
    assert cmd == [
        "srun",
        "--nodes",
        "2",
        "--ntasks",
        "2",
        "--ntasks-per-node",
        "1",
        "--kill-on-bad-exit=1",
        "--cpus-per-task",
        "6",
        *torchrun(2, 4, "gpu07:29642", "4242"),  # 29400 + 4242 % 1000
        "scripts/pretrain.py",
        "--gpus",
        "8",
    ]
    assert (fake_slurm / "scontrol.log").read_text() == "show hostnames gpu[07-08]\n"
    # another port on request; no --cpus-per-task without a thread count
    cmd = distributed.multinode_command(3, 3, ["s.py"], env={**env, "DAPT_RDZV_PORT": "31000"})
    assert cmd[:7] == ["srun", "--nodes", "3", "--ntasks", "3", "--ntasks-per-node", "1"]
    assert cmd[8:] == [*torchrun(3, 1, "gpu07:31000", "4242"), "s.py"]


def test_node_list_from_scontrol_when_the_job_step_dropped_it(fake_slurm):
    """Snakemake's SLURM job step keeps only SLURM_JOB_ID (and a few ids) of the SLURM_* variables."""
    assert distributed.slurm_first_host({"SLURM_JOB_ID": "99"}) == "gpu07"
    assert (fake_slurm / "scontrol.log").read_text().splitlines() == ["show job -o 99", "show hostnames gpu[07-08]"]


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="scontrol (slurm-client) is not installed")
def test_first_host_with_the_real_scontrol(tmp_path, monkeypatch):
    """The real `scontrol show hostnames` expands a node list offline, given any configuration file."""
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=test\nSlurmctldHost=localhost\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    assert distributed.slurm_first_host({"SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "gpu[07-08],cpu1"}) == "gpu07"


@pytest.mark.parametrize(
    ("nodes", "n", "env", "where", "says"),
    [
        (2, 3, {"SLURM_JOB_ID": "1"}, "resources.gpu", "cannot be split evenly over 2 nodes"),
        (2, 1, {"SLURM_JOB_ID": "1"}, "resources.gpu", "cannot be split evenly"),
        (0, 2, {"SLURM_JOB_ID": "1"}, "resources.nodes", "must be 1 or more"),
        (2, 2, {}, "resources.nodes", "needs a SLURM allocation"),
        (2, 2, {"SLURM_JOB_ID": "1", "SLURM_STEP_NUM_NODES": "1"}, "resources.nodes", "inside a SLURM job step on 1"),
        (
            2,
            2,
            {"SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "a", "DAPT_RDZV_PORT": "x"},
            "DAPT_RDZV_PORT",
            "port number",
        ),
    ],
)
def test_bad_multinode_resources(fake_slurm, nodes, n, env, where, says):
    with pytest.raises(UserError) as err:
        distributed.multinode_command(nodes, n, ["s.py"], env=env)
    assert err.value.where == where and says in err.value.problem


def test_single_node_and_child_processes_do_not_launch(monkeypatch):
    launched = []
    monkeypatch.setattr(distributed, "_run_forwarding_signals", lambda cmd: launched.append(cmd) or 0)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    distributed.maybe_relaunch_distributed(1, ["s.py"], nodes=1)  # one process, one node: nothing to do
    monkeypatch.setenv("LOCAL_RANK", "0")  # a rank started by torchrun never relaunches
    distributed.maybe_relaunch_distributed(8, ["s.py"], nodes=2)
    assert launched == []


def test_several_nodes_outside_slurm_is_one_line_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "LOCAL_RANK"}
    env.update(DAPT_GPU_IDS="")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "pretrain.py"),
            "--parent",
            str(tmp_path),
            "--blocks",
            str(tmp_path),
            "--gpus",
            "2",
            "--nodes",
            "2",
            "--checkpoints",
            str(tmp_path / "ckpt"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: resources.nodes: nodes=2 needs a SLURM allocation")
    assert not (tmp_path / "out").exists()


def profile_multinode_example() -> dict:
    """The commented multi-node example of profiles/slurm (set-resources of pretrain), as a dict."""
    text = (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    block = text.split("Uncomment together:")[1].split("The script then runs")[0].splitlines()[1:]
    return yaml.safe_load("\n".join(line.strip()[1:] for line in block if line.strip().startswith("#")))


def test_profile_example_becomes_a_two_node_sbatch():
    """What the installed SLURM plugin submits for the profile's multi-node example (its own code)."""
    plugin = pytest.importorskip("snakemake_executor_plugin_slurm")
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

    class Resources(dict):
        __getattr__ = dict.__getitem__

    example = profile_multinode_example()
    assert example["nodes"] == 2 and example["gpu"] == 8
    job = SimpleNamespace(resources=Resources(runtime=120, mem_mb=2000, cpus_per_task=2, **example), threads=2)
    validate_slurm_extra(job)  # --gpus-per-node is not among the options the plugin keeps for itself
    params = {"run_uuid": "u", "slurm_logfile": "l", "comment_str": "c", "account": "", "partition": "", "workdir": ""}
    sbatch = (get_submit_command(job, params) + set_gres_string(job)).split()
    print(plugin.__name__, " ".join(sbatch))
    for flag in ("--nodes=2", "--ntasks=2", "--cpus-per-task=2", "--gpus-per-node=4", "--gpus=8"):
        assert flag in sbatch
    assert not any(f.startswith("--ntasks-per-gpu") for f in sbatch)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_train_like_one_process(inputs, fake_slurm):
    root = inputs["root"]
    blocks = next(p for p in (root / "blocks", root / "blocks.parquet") if p.exists())  # block set, or older file
    mlm = {**inputs["mlm"], "max_steps": 6}  # 3 steps of head warm-up, then 3 of the whole model
    args = [
        "--parent",
        str(root / "headless"),
        "--blocks",
        str(blocks),
        "--stage",
        "dapt-imdb",
        "--params",
        json.dumps(mlm),
    ]
    run_script("pretrain.py", root / "one", 1, args)  # one plain process (test_ddp's way of running a script)

    out, port, job = root / "nodes2", free_port(), "7"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CUDA_VISIBLE_DEVICES", "LOCAL_RANK", "RANK", "WORLD_SIZE") and not k.startswith("SLURM_")
    }
    env.update(
        DAPT_GPU_IDS="",
        DAPT_FORCE_CPU_DDP="1",
        OMP_NUM_THREADS="1",
        SLURM_JOB_ID=job,
        SLURM_JOB_NODELIST="node[1-2]",
        FAKE_HOSTS="127.0.0.1 127.0.0.1",
        DAPT_RDZV_PORT=str(port),
    )
    script = str(REPO / "scripts" / "pretrain.py")
    cmd = [
        sys.executable,
        script,
        *args,
        "--seed",
        "1",
        "--gpus",
        "2",
        "--nodes",
        "2",
        "--threads",
        "1",
        "--precision",
        "fp32",
        "--checkpoints",
        str(root / "nodes2.ckpt"),
        "--out",
        str(out),
    ]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    log = proc.stdout + proc.stderr
    print(f"2 nodes x 1 process: {time.monotonic() - t0:.1f}s")
    assert proc.returncode == 0, log[-5000:]

    # one srun step, one task per node, each a torchrun agent of the c10d rendezvous
    steps = [json.loads(line) for line in (fake_slurm / "srun.log").read_text().splitlines()]
    assert steps == [
        [
            "--nodes",
            "2",
            "--ntasks",
            "2",
            "--ntasks-per-node",
            "1",
            "--kill-on-bad-exit=1",
            "--cpus-per-task",
            "1",
            *torchrun(2, 1, f"127.0.0.1:{port}", job),
            *cmd[1:],
        ]
    ]
    assert "launching 2 processes on 2 nodes: srun" in log
    starts = [line for line in log.splitlines() if line.startswith("[dapt.job] start")]
    assert len(starts) == 1, starts  # the launcher; the ranks it started log none
    assert " nodes=2" in starts[0] and " gpus_claimed=none" in starts[0] and f" slurm_job={job} " in starts[0]
    assert log.count('"world_size": 2') == 2 and log.count("done:") == 2  # both ranks ran to the end

    # only global rank 0 wrote: the outputs once, progress once, checkpoints cleared at the end
    assert {p.name for p in out.iterdir()} == {"model", "loss.csv", "summary.json"}
    last = mlm["max_steps"]
    assert log.count(f"step {last}/{last} ") == 1
    assert not (root / "nodes2.ckpt").exists()

    one, two = (pd.read_csv(root / d / "loss.csv") for d in ("one", "nodes2"))
    print(
        pd.DataFrame(
            {
                "step": one["step"],
                "1 process": one["loss"],
                "2 nodes": two["loss"],
                "rel diff": (two["loss"] - one["loss"]).abs() / one["loss"],
            }
        ).to_string()
    )
    assert len(one) == len(two) == last
    assert list(two["tokens"]) == list(one["tokens"])
    assert two["loss"].to_numpy() == pytest.approx(one["loss"].to_numpy(), rel=LOSS_RTOL)
    assert_same_weights(root / "one", out)
    s1, s2 = (json.loads((root / d / "summary.json").read_text()) for d in ("one", "nodes2"))
    assert s1["world_size"] == 1 and s2["world_size"] == 2 and s2["tokens"] == s1["tokens"]


# batch script: keep only SLURM_JOB_ID of the SLURM_*/SRUN_*/SBATCH_* variables, as the plugin's job step
# does before it runs an mpi job's command, then build the command (1 node: the test cluster has one) and run it
SLURM_JOB = """#!/bin/bash
for v in $(env | grep -o '^\\(SLURM\\|SRUN\\|SBATCH\\)_[A-Z_]*'); do [ "$v" = SLURM_JOB_ID ] || unset "$v"; done
echo "kept: $(env | grep '^SLURM_' | tr '\\n' ' ')"
exec {python} -c 'import json, sys
from dapt.runtime import distributed
cmd = distributed.multinode_command(1, 2, json.load(open(sys.argv[1])), threads=2)
print("command:", json.dumps(cmd), flush=True)
sys.exit(distributed._run_forwarding_signals(cmd))' {argv}
"""


@pytest.mark.slurm
def test_srun_step_from_a_real_slurm_batch_job(slurm_cluster, inputs, tmp_path):
    root = inputs["root"]
    blocks = next(p for p in (root / "blocks", root / "blocks.parquet") if p.exists())
    mlm = {**inputs["mlm"], "max_steps": 6}
    out = tmp_path / "out"
    argv = [
        str(REPO / "scripts" / "pretrain.py"),
        "--parent",
        str(root / "headless"),
        "--blocks",
        str(blocks),
        "--stage",
        "dapt-imdb",
        "--params",
        json.dumps(mlm),
        "--seed",
        "1",
        "--gpus",
        "2",
        "--threads",
        "1",
        "--precision",
        "fp32",
        "--checkpoints",
        str(tmp_path / "ckpt"),
        "--out",
        str(out),
    ]
    (tmp_path / "argv.json").write_text(json.dumps(argv))
    job = tmp_path / "job.sh"
    job.write_text(SLURM_JOB.format(python=sys.executable, argv=tmp_path / "argv.json"))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CUDA_VISIBLE_DEVICES", "LOCAL_RANK", "RANK", "WORLD_SIZE") and not k.startswith("SLURM_")
    }
    env.update(SLURM_CONF=str(slurm_cluster.slurm_conf), DAPT_GPU_IDS="", DAPT_FORCE_CPU_DDP="1", OMP_NUM_THREADS="1")
    t0 = time.monotonic()
    job_id = (
        subprocess.run(
            [
                "sbatch",
                "--parsable",
                "-N1",
                "-n1",
                "-c2",
                "--mem=4000",
                "-D",
                str(tmp_path),
                "-o",
                str(tmp_path / "job.out"),
                str(job),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        )
        .stdout.strip()
        .split(";")[0]
    )
    state = ""
    while time.monotonic() - t0 < 600 and state not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY"):
        time.sleep(1)  # (sbatch --wait polls at growing intervals: seen returning 25 s after the job ended)
        state = subprocess.run(
            ["squeue", "-h", "--states=all", "-j", job_id, "-o", "%T"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        ).stdout.strip()
    log = (tmp_path / "job.out").read_text() if (tmp_path / "job.out").exists() else ""
    print(f"SLURM job {job_id}: {state} after {time.monotonic() - t0:.1f}s")
    assert state == "COMPLETED", f"{log[-5000:]}\n{slurm_cluster.daemon_logs()}"
    assert f"kept: SLURM_JOB_ID={job_id} \n" in log  # the node list had to come from scontrol show job
    cmd = json.loads(log.split("command: ", 1)[1].splitlines()[0])
    port = distributed.RDZV_BASE_PORT + int(job_id) % 1000
    assert cmd[:9] == [
        "srun",
        "--nodes",
        "1",
        "--ntasks",
        "1",
        "--ntasks-per-node",
        "1",
        "--kill-on-bad-exit=1",
        "--cpus-per-task",
    ]
    assert cmd[10:] == [*torchrun(1, 2, f"localhost:{port}", job_id), *argv]  # the test node is "localhost"
    assert log.count("done:") == 2 and {p.name for p in out.iterdir()} == {"model", "loss.csv", "summary.json"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 6
