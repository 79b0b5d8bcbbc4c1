"""What every training script's command line shares: devices first, then torch.

GPU ids must be claimed and exported in CUDA_VISIBLE_DEVICES before torch starts CUDA, so scripts
parse their arguments, call `start()`, and only then import the modules that import torch.
"""

from __future__ import annotations

import argparse
import json
import sys


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", type=json.loads, default={}, help="hyperparameters as a JSON object")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpus", type=int, default=0, help="GPUs this job may use (the rule's resources.gpu)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--deterministic", action="store_true")
    return p


def start(args: argparse.Namespace):
    """Claim devices (relaunching under torchrun for several GPUs), then set up torch."""
    from dapt.devices import claim_devices, maybe_relaunch_distributed

    claim_devices(args.gpus)
    maybe_relaunch_distributed(args.gpus, sys.argv)
    from dapt.train import setup_runtime

    runtime = setup_runtime(args.seed, args.precision, args.threads or None, args.deterministic)
    print(f"runtime: {json.dumps(runtime.describe())}", flush=True)
    return runtime
