"""Tokenize once per (data, tokenizer, max length): packed MLM blocks, or a task's three splits.

MLM blocks stream in bounded memory (dapt.tokenize.blocks). A large corpus can be split over jobs:
`--shard K/N` writes the token stream of the K-th of N runs of documents, and `--gather` joins the
N shard folders into the block folder (the same blocks as one job).
"""

import argparse
import json
from pathlib import Path

from dapt.core.errors import UserError, run_main
from dapt.runtime import cli


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, help="model folder holding the tokenizer")
    p.add_argument("--max-length", type=int, required=True)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--texts", help="parquet with a text column -> a folder of packed MLM blocks")
    mode.add_argument("--task", help="task folder with train/validation/test parquet -> tokenized folder")
    p.add_argument(
        "--long-text", type=json.loads, help="with --task: JSON of dapt.study.config.long_text_params (default: head)"
    )
    p.add_argument("--shard", help="with --texts: K/N, tokenize only the K-th of N runs of documents (1-based)")
    p.add_argument("--gather", nargs="+", metavar="SHARD", help="with --texts: join these shard folders, in order")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=0, help="threads for the tokenizer (0: its default, every core)")
    args = p.parse_args()
    cli.limit_threads(args.threads)  # before the tokenizer library starts its thread pool
    cli.quiet_progress_bars()

    from dapt.tokenize import blocks
    from dapt.tokenize import tasks as tokenization

    if args.texts and args.gather:
        stats = blocks.gather(args.gather, args.out, args.texts)
    elif args.texts:
        # the config key behind the length, for messages: the stage's kind from "<kind>-<name>.L<n>[.shards/K-of-N]"
        stage = Path(args.out).parent.name if args.shard else Path(args.out).name
        key = f"pretrain.{stage.split('-', 1)[0]}.max_length"
        stats = blocks.tokenize_corpus(args.texts, args.model, args.max_length, args.out, key, parse_shard(args.shard))
    else:
        key = f"tasks.{Path(args.task).name}.max_length"
        stats = tokenization.tokenize_task_dir(args.task, args.model, args.max_length, args.out, key, args.long_text)
    print(stats)
    # kept, but worth knowing: counted here, in stats.json, in metrics.json and in the report's notes
    for split in tokenization.SPLITS:
        if isinstance(stats.get(split), dict) and stats[split].get("truncated"):
            s = stats[split]
            if "windows_dropped" in s:  # windows: what the cap left unseen
                print(
                    f"warning: {s['truncated']} of {s['examples']} {split} texts have more than max_windows windows; "
                    f"{s['windows_dropped']} windows dropped, {s['windows']} kept (evenly spaced)"
                )
                continue
            print(
                f"warning: {s['truncated']} of {s['examples']} {split} texts are longer than {s['max_length']} "
                f"tokens and were truncated ({key})"
            )
    for pair, n in (stats.get("texts_shared_across_splits") or {}).items():
        if n:
            print(f"warning: {n} texts occur in two splits ({pair}); kept, as in the source")


def parse_shard(text: str | None) -> tuple[int, int]:
    """ "K/N" (1-based) -> (K-1, N); none -> the whole corpus."""
    if not text:
        return 0, 1
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise UserError("--shard", f"{text!r} is not K/N with 1 <= K <= N")
    return int(k) - 1, int(n)


if __name__ == "__main__":
    run_main(main)
