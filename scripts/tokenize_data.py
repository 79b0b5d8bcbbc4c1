"""Tokenize once per (data, tokenizer, max length): packed MLM blocks, or a task's three splits."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the dapt package beside scripts/

import argparse

from dapt.errors import run_main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, help="model folder holding the tokenizer")
    p.add_argument("--max-length", type=int, required=True)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--texts", help="parquet with a text column -> packed MLM blocks")
    mode.add_argument("--task", help="task folder with train/validation/test parquet -> tokenized folder")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    from dapt import tokenize

    if args.texts:
        stats = tokenize.tokenize_mlm_file(args.texts, args.model, args.max_length, args.out)
    else:
        stats = tokenize.tokenize_task_dir(args.task, args.model, args.max_length, args.out)
    print(stats)


if __name__ == "__main__":
    run_main(main)
