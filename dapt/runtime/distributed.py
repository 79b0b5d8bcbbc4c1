"""Several processes for one job (data parallel): the relaunch under torch.distributed.run, the process
group, and the few collective operations the training loops use. GPU claiming is `dapt.runtime.devices`.

How a training loop uses several processes, so that N processes give the same numbers as one:

* Shard the data, never duplicate it: build the global batch order once from the seed (identical in
  every rank) and let rank r take the rank-strided slice ``batch[r::world_size]``
  (`dapt.runtime.batching.rank_share`). Keep the *global* batch size fixed.
* Wrap the model in ``torch.nn.parallel.DistributedDataParallel``; it averages gradients across ranks.
* Metrics: accumulate *sums and counts* per rank, then `all_reduce_sums` them and divide afterwards.
  Averaging per-rank means is wrong when shards differ in size.
* Only rank 0 writes outputs; `destroy_distributed` at the end.

``DAPT_FORCE_CPU_DDP=1``: with n > 1 and no GPUs, still launch n gloo processes on CPU (tests).

Several nodes (``--nodes M``, the pretrain rule's ``nodes`` resource): inside a SLURM allocation the
job's n processes (its ``gpu`` resource: GPUs of the whole job, what the SLURM plugin passes as
``sbatch --gpus=n``) become one ``srun`` step with one task per node, each task a
``torch.distributed.run --nnodes M --nproc_per_node n/M`` agent meeting the others at a c10d
rendezvous on the allocation's first host (`multinode_command`). ``DAPT_RDZV_PORT`` sets its port.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from dapt.core.errors import UserError
from dapt.runtime import devices

if TYPE_CHECKING:  # torch is imported lazily: the relaunch happens before torch is loaded
    import torch


def dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) as set by torch.distributed.run; (0, 1, 0) otherwise."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def _force_cpu_ddp() -> bool:
    return os.environ.get("DAPT_FORCE_CPU_DDP") == "1"


def _set_pdeathsig() -> None:
    """In the launched child: get SIGTERM if the parent dies, so GPUs are not used unlocked."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG (Linux only; harmless elsewhere)
    except (OSError, AttributeError):
        pass


def _run_forwarding_signals(cmd: list[str]) -> int:
    """Run cmd, pass SIGTERM/SIGINT on to it, and return its exit status (128+sig if killed)."""
    proc = subprocess.Popen(cmd, preexec_fn=_set_pdeathsig if sys.platform == "linux" else None)

    def forward(signum: int, _frame: Any) -> None:
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        rc = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - rc if rc < 0 else rc


#: c10d rendezvous port of a multi-node job unless DAPT_RDZV_PORT says otherwise: torchrun's default
#: 29400 plus the SLURM job id modulo 1000, so that two jobs whose first node is the same differ.
RDZV_BASE_PORT = 29400


def _scontrol(args: list[str]) -> str:
    """Output of ``scontrol <args>``; a UserError if scontrol is missing or fails."""
    exe = shutil.which("scontrol")
    if exe is None:
        raise UserError("resources.nodes", "a multi-node job needs scontrol to find its nodes; it is not on PATH")
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise UserError("resources.nodes", f"scontrol {' '.join(args)} failed: {proc.stderr.strip()[:200]}")
    return proc.stdout


def slurm_first_host(env: dict[str, str]) -> str:
    """The first host of this SLURM job's allocation, where the rendezvous is hosted.

    The node list comes from SLURM_JOB_NODELIST, else (Snakemake's job step drops every SLURM_*
    variable but the job id) from ``scontrol show job``; ``scontrol show hostnames`` expands it.
    """
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        found = re.search(r"\bNodeList=(\S+)", _scontrol(["show", "job", "-o", env["SLURM_JOB_ID"]]))
        if not found or found.group(1) == "(null)":
            raise UserError("resources.nodes", f"no node list for SLURM job {env['SLURM_JOB_ID']}")
        nodelist = found.group(1)
    hosts = _scontrol(["show", "hostnames", nodelist]).split()
    if not hosts:
        raise UserError("resources.nodes", f"scontrol show hostnames {nodelist} listed no host")
    return hosts[0]


def multinode_command(
    nodes: int, n: int, argv: list[str], threads: int = 0, env: dict[str, str] | None = None
) -> list[str]:
    """The one command that runs this script as n processes on `nodes` nodes of a SLURM allocation.

    ``srun`` starts one task per node (``--cpus-per-task`` = the job's threads; GPUs: the step gets
    the job's GPUs on each node); each task is a torchrun agent for n/nodes local processes, and
    the agents find each other at a c10d rendezvous on the first host, keyed by the job id.
    Bad resources (n not a multiple of nodes, no SLURM allocation, called inside a job step on
    fewer nodes) are a UserError naming the resource.
    """
    env = dict(os.environ if env is None else env)
    if nodes < 1:
        raise UserError("resources.nodes", f"must be 1 or more, got {nodes}")
    if n < nodes or n % nodes:
        raise UserError(
            "resources.gpu",
            f"{n} processes (GPUs of the whole job) cannot be split evenly over {nodes} nodes",
            "set gpu to nodes x GPUs per node, e.g. gpu=8 for nodes=2 x 4",
        )
    job = env.get("SLURM_JOB_ID")
    if not job:
        raise UserError(
            "resources.nodes",
            f"nodes={nodes} needs a SLURM allocation (SLURM_JOB_ID is unset)",
            "run with --workflow-profile profiles/slurm, or set nodes=1",
        )
    step_nodes = env.get("SLURM_STEP_NUM_NODES")
    if step_nodes and step_nodes.isdigit() and int(step_nodes) < nodes:
        raise UserError(
            "resources.nodes",
            f"nodes={nodes} but this job runs inside a SLURM job step on "
            f"{step_nodes} node(s), which cannot start a step on {nodes}",
            "give the rule mpi, tasks and tasks_per_gpu as profiles/slurm shows",
        )
    port = env.get("DAPT_RDZV_PORT") or str(RDZV_BASE_PORT + (int(job) % 1000 if job.isdigit() else 0))
    if not port.isdigit():
        raise UserError("DAPT_RDZV_PORT", f"must be a port number, got {port!r}")
    cmd = ["srun", "--nodes", str(nodes), "--ntasks", str(nodes), "--ntasks-per-node", "1", "--kill-on-bad-exit=1"]
    if threads > 0:
        cmd += ["--cpus-per-task", str(threads)]
    return [
        *cmd,
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        str(nodes),
        "--nproc_per_node",
        str(n // nodes),
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        f"{slurm_first_host(env)}:{port}",
        "--rdzv_id",
        job,
        *argv,
    ]


def maybe_relaunch_distributed(n: int, argv: list[str], nodes: int = 1, threads: int = 0) -> None:
    """With n > 1, re-run this script as n data-parallel processes and exit with their status.

    `argv` is ``sys.argv`` (script path first). Returns without doing anything when n <= 1,
    inside a launched child (LOCAL_RANK set), or when there are fewer than n GPUs (the job
    then runs as one process; logged) unless DAPT_FORCE_CPU_DDP=1 asks for n CPU processes.
    Otherwise this process keeps holding the GPU locks, runs
    ``python -m torch.distributed.run --standalone --nproc_per_node n <argv>``, forwards
    SIGTERM/SIGINT to it, and never returns (sys.exit with the launcher's status).
    With nodes > 1 it runs `multinode_command` instead (n processes over all nodes; `threads`
    CPUs per node).
    """
    if "LOCAL_RANK" in os.environ:
        return
    if nodes != 1:
        cmd = multinode_command(nodes, n, argv, threads)
        devices._log(f"launching {n} processes on {nodes} nodes: {' '.join(cmd)}")
        sys.exit(_run_forwarding_signals(cmd))
    if n <= 1:
        return
    if not _force_cpu_ddp():
        ids = devices._assigned
        if ids is None:  # claim_devices was not called: trust the environment
            ids = devices._split_ids(os.environ.get("CUDA_VISIBLE_DEVICES"))
        if len(ids) < n:
            devices._log(f"{n} processes wanted but only {len(ids)} GPU(s) visible; running one process")
            return
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(n),
        *argv,
    ]
    devices._log(f"launching {n} processes: {' '.join(cmd)}")
    sys.exit(_run_forwarding_signals(cmd))


def pick_device() -> torch.device:
    """cuda:LOCAL_RANK in a distributed child, cuda:0 alone, cpu without CUDA (or forced)."""
    import torch

    if _force_cpu_ddp() or not torch.cuda.is_available():
        return torch.device("cpu")
    _, _, local_rank = dist_info()
    if local_rank >= torch.cuda.device_count():
        raise UserError(
            "devices",
            f"local rank {local_rank} but only {torch.cuda.device_count()} GPU(s) visible",
        )
    return torch.device("cuda", local_rank)


def init_distributed(device: torch.device | str) -> bool:
    """Join the process group (nccl on CUDA, gloo on CPU) if WORLD_SIZE > 1; True if joined.

    Reads the rendezvous from the env vars torch.distributed.run sets. On CUDA it also makes
    `device` the current device, so NCCL and any bare .cuda() use this rank's GPU.
    """
    import torch
    import torch.distributed as dist

    _, world_size, local_rank = dist_info()
    if world_size <= 1 or dist.is_initialized():
        return dist.is_initialized()
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", device_id=device)
    else:
        dist.init_process_group(backend="gloo")
    return True


def destroy_distributed() -> None:
    """Leave the process group, if joined (avoids the shutdown warning)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sums(values: dict[str, float], device: torch.device | str = "cpu") -> dict[str, float]:
    """Sum each value over all ranks (identity without a process group).

    Pass sums and counts, not means, and divide after: that gives the same metric for any
    number of processes. `device` must be the rank's CUDA device under nccl.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, t.tolist()))
