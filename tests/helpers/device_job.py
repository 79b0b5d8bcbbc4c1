"""A stand-in training script for tests/test_devices.py, run as a subprocess.

device_job.py claim K OUT HOLD_S   claim K ids, append {ids, start, end} to OUT, hold HOLD_S
device_job.py ddp N OUTDIR [fail]  N-process launch; each rank all-reduces and writes
                                   OUTDIR/rank-R.json ("fail": rank 1 exits with 3)
device_job.py sleep MARKER         write MARKER on SIGTERM and exit 143; else sleep
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from dapt.runtime import devices, distributed


def claim(k: int, out: str, hold_s: float) -> None:
    devices.POLL_SECONDS = 0.05
    ids = devices.claim_devices(k)
    start = time.monotonic()  # CLOCK_MONOTONIC is system-wide on Linux: comparable across jobs
    print(f"claimed {os.environ.get('CUDA_VISIBLE_DEVICES')}", flush=True)
    time.sleep(hold_s)
    record = {
        "pid": os.getpid(),
        "ids": ids,
        "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "start": start,
        "end": time.monotonic(),
    }
    with open(out, "a", encoding="utf-8") as f:  # one short append per job: no interleaving
        f.write(json.dumps(record) + "\n")


def ddp(n: int, outdir: str, fail: bool) -> None:
    devices.claim_devices(n)
    distributed.maybe_relaunch_distributed(n, sys.argv)

    import torch
    import torch.distributed as dist

    device = distributed.pick_device()
    joined = distributed.init_distributed(device)
    rank, world_size, local_rank = distributed.dist_info()
    total = torch.tensor([rank + 1.0])
    dist.all_reduce(total)
    sums = distributed.all_reduce_sums({"n": 1.0, "rank": float(rank)})
    with open(os.path.join(outdir, f"rank-{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(
            {
                "rank": rank,
                "world_size": world_size,
                "local_rank": local_rank,
                "joined": joined,
                "device": str(device),
                "all_reduce": total.item(),
                "sums": sums,
            },
            f,
        )
    distributed.destroy_distributed()
    if fail and rank == 1:
        sys.exit(3)


def sleep(marker: str) -> None:
    def on_term(signum: int, _frame: object) -> None:
        with open(marker, "w", encoding="utf-8") as f:
            f.write(str(signum))
        sys.exit(143)

    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)
    time.sleep(60)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "claim":
        claim(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]))
    elif mode == "ddp":
        ddp(int(sys.argv[2]), sys.argv[3], sys.argv[4:] == ["fail"])
    elif mode == "sleep":
        sleep(sys.argv[2])
    else:
        raise SystemExit(f"unknown mode {mode}")
