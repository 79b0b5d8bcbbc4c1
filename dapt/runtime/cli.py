"""What every training script's command line shares: devices first, then torch.

GPU ids must be claimed and exported in CUDA_VISIBLE_DEVICES before torch starts CUDA, so scripts
parse their arguments, call `start()`, and only then import the modules that import torch.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import socket
import sys
import time
from datetime import datetime, timezone


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", type=json.loads, default={}, help="hyperparameters as a JSON object")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpus", type=int, default=0, help="GPUs this job may use (the rule's resources.gpu)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--deterministic", action="store_true")
    return p


#: Thread pools a job may start besides torch's own: OpenMP/BLAS (numpy, torch's interop) and the
#: Rust thread pool of Hugging Face tokenizers (rayon), which otherwise takes every core.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "RAYON_RS_NUM_CPUS",
    "RAYON_NUM_THREADS",
)


def limit_threads(threads: int) -> None:
    """Give every thread pool the job's share of cores, so that N jobs on N cores do not
    oversubscribe them. Must run before numpy, torch or tokenizers start their pools."""
    if threads <= 0:
        return
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"


def quiet_progress_bars() -> None:
    """No tqdm bars in job logs (they are files: a bar there is one unreadable line per refresh);
    the jobs print their own progress lines instead."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _job_line(event: str, fields: dict) -> None:
    """One ``[dapt.job]`` line on stderr (the job's log): what a scheduler or slot check reads back."""
    now = time.time()
    stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    print(f"[dapt.job] {event} {stamp} epoch={now:.6f} {text}", file=sys.stderr, flush=True)


def start(args: argparse.Namespace, model_dir: str | None = None):
    """Claim devices (relaunching under torchrun for several GPUs), then set up torch.

    The process that holds the GPU claim (not the ranks a multi-GPU launch starts) logs a
    ``[dapt.job] start`` line once its devices are claimed and a ``[dapt.job] end`` line when it
    exits, both with the claimed ids, CUDA_VISIBLE_DEVICES and the SLURM job id: a job's
    log shows which devices it held and when. `model_dir`: the model whose matrix shapes the CPU
    precision probe uses.
    """
    limit_threads(args.threads)
    quiet_progress_bars()
    from dapt.runtime.devices import claim_devices
    from dapt.runtime.distributed import maybe_relaunch_distributed

    nodes = getattr(args, "nodes", 1)  # scripts with a --nodes option (pretrain)
    # several nodes: this launcher uses no GPU itself; each node's ranks use what SLURM gave that node
    ids = claim_devices(args.gpus if nodes == 1 else 0)
    if "LOCAL_RANK" not in os.environ:
        fields = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "slurm_job": os.environ.get("SLURM_JOB_ID", "none"),
            "slurm_cpus": os.environ.get("SLURM_CPUS_PER_TASK", "none"),
            "gpus_requested": args.gpus,
            "gpus_claimed": ",".join(ids) or "none",
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
        }
        if nodes != 1:
            fields["nodes"] = nodes
        _job_line("start", fields)
        atexit.register(_job_line, "end", {k: fields[k] for k in ("pid", "gpus_claimed")})
    maybe_relaunch_distributed(args.gpus, sys.argv, nodes, args.threads)
    from dapt.runtime.context import setup_runtime

    runtime = setup_runtime(args.seed, args.precision, args.threads or None, args.deterministic, model_dir)
    if runtime.world_size > 1:
        from dapt.runtime.distributed import destroy_distributed

        atexit.register(destroy_distributed)  # every rank leaves the process group on its way out
    print(f"runtime: {json.dumps(runtime.describe())}", flush=True)
    if runtime.precision.get("warning"):
        print(runtime.precision["warning"], flush=True)
    return runtime
