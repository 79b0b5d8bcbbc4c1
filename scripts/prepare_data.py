"""Prepare one corpus or task of a study: fetch its source(s) and write normalised parquet files.

Run by the workflow's data rules, e.g.
    python scripts/prepare_data.py --kind task --name rt_polarity --config-json '{...}' \
        --out results/data/tasks/rt_polarity --split-seed 0 --cache-dir results/.cache/downloads
"""

from __future__ import annotations

import argparse
import logging

from dapt.core.errors import run_main
from dapt.data.prepare import prepare_corpus, prepare_task
from dapt.data.sources import add_download_args, download_spec


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["corpus", "task"], required=True)
    parser.add_argument("--name", required=True, help="the corpus or task name in the config")
    parser.add_argument("--out", required=True, help="corpus: the .parquet file; task: the output folder")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the stratified carving (tasks)")
    parser.add_argument("--train-sizes", default="", help="a learning curve's sizes (tasks), e.g. 100,300")
    parser.add_argument("--sizes-key", default="train_sizes", help="the config key that sets them (for the message)")
    add_download_args(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    spec = download_spec(args)
    if args.kind == "corpus":
        summary = prepare_corpus(spec, args.name, args.out, args.cache_dir)
        print(f"corpus {args.name}: {summary['docs']} documents, {summary['chars']} characters -> {args.out}")
    else:
        sizes = [int(n) for n in args.train_sizes.split(",") if n]
        curve = (sizes, args.sizes_key) if sizes else None
        summary = prepare_task(spec, args.name, args.out, args.split_seed, args.cache_dir, curve)
        rows = ", ".join(f"{split} {n}" for split, n in summary["rows"].items())
        print(f"task {args.name}: {rows} rows; labels {summary['labels']} -> {args.out}")
        print(f"class counts: {summary['class_counts']}")
        print(f"texts shared across splits: {summary['texts_shared_across_splits']}")


if __name__ == "__main__":
    run_main(main)
