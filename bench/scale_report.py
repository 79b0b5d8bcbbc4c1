"""The rows and summary lines bench/README.md and the README quote, with the CPU they were measured on."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), for the line every published number needs."""
    cpuinfo = Path("/proc/cpuinfo")
    names = (
        [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        if cpuinfo.exists()
        else []
    )
    return names[0] if names else (platform.processor() or platform.machine())


def row(what: str, size: str, threads: int, r: dict) -> dict:
    """A tokenizing run's row, rated by its own count of the tokens it tokenized (each side counts its own)."""
    tokens = r["tokens"]
    rate = tokens / r["seconds"]
    out = {
        "what": what,
        "size": size,
        "threads": threads,
        "tokens": tokens,
        "blocks": r["blocks"],
        "block_tokens": r["block_tokens"],
        "documents": r["documents"],
        "seconds": r["seconds"],
        "tokens_per_s": rate,
        "tokens_per_s_per_core": rate / threads,
        "tokens_per_cpu_s": tokens / r["cpu_s"],
        "peak_mb": r["peak_mb"],
    }
    print(
        f"{what:9s} {size:>6s} threads {threads}  {tokens / 1e6:7.1f}M tokens  {r['blocks']} blocks  "
        f"{r['seconds']:7.1f} s  {rate / 1e6:6.3f} M tokens/s  ({rate / threads / 1e6:.3f} M/s per core, "
        f"{out['tokens_per_cpu_s'] / 1e6:.3f} M per CPU-s)  peak {r['peak_mb']:7.0f} MB",
        flush=True,
    )
    return out


def summarize(rows: list[dict], args: argparse.Namespace) -> None:
    (args.work / "results.json").write_text(json.dumps(rows, indent=1))
    ours = [r for r in rows if r["what"] == "ours" and r["threads"] == args.threads]
    pre = [r for r in rows if r["what"] == "pretrain"]
    largest = ours[-1]
    spread = lambda rs: max(r["peak_mb"] for r in rs) / min(r["peak_mb"] for r in rs) - 1  # noqa: E731
    print(
        f"ours: peak memory {min(r['peak_mb'] for r in ours):.0f}-{max(r['peak_mb'] for r in ours):.0f} MB over "
        f"{', '.join(r['size'] for r in ours)} (spread {spread(ours):.1%}); pretraining start-up "
        f"{min(r['peak_mb'] for r in pre):.0f}-{max(r['peak_mb'] for r in pre):.0f} MB (spread {spread(pre):.1%})"
    )
    rate = largest["tokens_per_s"]
    print(
        f"projection for 1B tokens (at the {largest['size']} rate): {1e9 / rate / 60:.1f} min with "
        f"{args.threads} threads, {1e9 / largest['tokens_per_cpu_s'] / 3600:.2f} CPU-hours; peak memory "
        f"~{largest['peak_mb']:.0f} MB (flat); the block file 2.0 GB (uint16)"
    )
    single = [r for r in rows if r["what"] == "ours" and r["threads"] == 1]
    if single and args.threads > 1:
        same = next(r for r in ours if r["size"] == single[0]["size"])
        print(
            f"ours per core at {single[0]['size']}: 1 thread {single[0]['tokens_per_s'] / 1e6:.3f} M tokens/s, "
            f"{args.threads} threads {same['tokens_per_s_per_core'] / 1e6:.3f} M tokens/s per core "
            f"(scaling {same['tokens_per_s'] / single[0]['tokens_per_s']:.2f}x)"
        )
    peer = {r["size"]: r for r in rows if r["what"] == "peer" and r["threads"] == args.threads}
    both = [r for r in ours if r["size"] in peer]
    if not both:
        print("the peer ran at no size (--peer-sizes)")
        return
    mine = both[-1]
    theirs = peer[mine["size"]]
    for name, r in (("ours", mine), ("run_mlm.py", theirs)):  # each side's own count
        print(
            f"counts at {mine['size']}, {name}: {r['documents']} texts, {r['tokens']} tokens, {r['blocks']} blocks "
            f"holding {r['block_tokens']} ({r['tokens'] - r['block_tokens']} dropped)"
        )
    print(
        f"at {mine['size']}, {args.threads} threads / num_proc {args.threads}: ours {mine['tokens_per_s'] / 1e6:.3f} "
        f"M tokens/s, {mine['peak_mb']:.0f} MB; run_mlm.py {theirs['tokens_per_s'] / 1e6:.3f} M tokens/s, "
        f"{theirs['peak_mb']:.0f} MB"
    )
    print(
        f"tokenize_speedup={mine['tokens_per_s'] / theirs['tokens_per_s']:.2f} "
        f"tokenize_rss_ratio={mine['peak_mb'] / theirs['peak_mb']:.2f}"
    )
