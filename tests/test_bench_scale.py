"""bench/bench_scale.py at a tiny size: every kind of child job runs, and the summary lines read back."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pandas as pd
from conftest import REPO

IMDB_SAMPLE = REPO / "tests" / "data" / "imdb_sample.jsonl"


def test_bench_scale_smoke(tmp_path):
    corpus = tmp_path / "corpus.parquet"
    texts = pd.read_json(IMDB_SAMPLE, lines=True)["review"].str.strip()
    pd.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": texts}).to_parquet(corpus)
    cmd = [
        sys.executable,
        str(REPO / "bench" / "bench_scale.py"),
        "--corpus",
        str(corpus),
        "--sizes",
        "0.1",
        "--peer-sizes",
        "0.1",
        "--per-core-size",
        "0",
        "--threads",
        "1",
        "--pretrain-steps",
        "1",
        "--block",
        "64",
        "--work",
        str(tmp_path / "work"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    last = re.fullmatch(r"tokenize_speedup=(\d+\.\d\d) tokenize_rss_ratio=(\d+\.\d\d)", lines[-1])
    assert last, lines[-1]
    rows = json.loads((tmp_path / "work" / "results.json").read_text())
    ours, peer = (next(r for r in rows if r["what"] == w) for w in ("ours", "peer"))
    per_copy = int(re.search(r"one copy of the corpus: (\d+) tokens", proc.stdout).group(1))
    # the peer's own counts, from its own tokenized and grouped datasets: the same texts, tokens and blocks.
    # The packing differs by design only across map batches (group_texts drops each batch's remainder,
    # ours the corpus's one): 240 texts are one batch of 1,000 at num_proc 1, so the blocks are the same
    assert peer["documents"] == ours["documents"] and peer["tokens"] == ours["tokens"]
    assert peer["blocks"] == ours["blocks"] == ours["tokens"] // 64
    assert peer["block_tokens"] == ours["block_tokens"] == ours["blocks"] * 64
    for name, side in (("ours", ours), ("run_mlm.py", peer)):  # both sides' counts are printed
        counts = f"{side['documents']} texts, {side['tokens']} tokens, {side['blocks']} blocks"
        assert any(line.startswith(f"counts at 0.1M, {name}: {counts}") for line in lines), name
    copies = round(1e5 / per_copy)  # 0.1M: four copies of ~26k tokens, 60 texts each
    assert ours["tokens"] == copies * per_copy and ours["documents"] == copies * 60
    assert float(last.group(1)) == round(ours["tokens_per_s"] / peer["tokens_per_s"], 2)
    assert float(last.group(2)) == round(ours["peak_mb"] / peer["peak_mb"], 2)
    pretrain = next(r for r in rows if r["what"] == "pretrain")
    assert pretrain["blocks"] == ours["tokens"] // 64 and 100 < pretrain["peak_mb"] < 4000
    assert any(line.startswith("projection for 1B tokens") for line in lines)
