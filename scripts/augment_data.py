#!/usr/bin/env python
"""Robustness data steps (dapt/data/augment.py): WordNet's synonyms, augmented training rows, perturbed test sets.

Run by rules/robustness.smk, e.g.
    python scripts/augment_data.py wordnet --config-json '{"source": {...}}' --out results/data/wordnet/synonyms.json
    python scripts/augment_data.py augment --task-dir results/data/tasks/rt_polarity \\
        --settings '{"ops": ["swap"], "n_aug": 1, "rate": 0.1, "seed": 0}' \\
        --out results/data/augmented/rt_polarity/x.parquet
    python scripts/augment_data.py perturb --task-dir results/data/tasks/rt_polarity --op typo --rate 0.05 \\
        --seed 0 --out results/data/perturbed/rt_polarity/typo.parquet
"""

from __future__ import annotations

import argparse
import json

from dapt.core.errors import run_main
from dapt.data.sources import add_download_args, download_spec, fetch


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="step", required=True)
    wordnet = steps.add_parser("wordnet", help="WordNet dict files -> lemma: synonyms JSON")
    add_download_args(wordnet)
    for name in ("augment", "perturb"):
        step = steps.add_parser(name)
        step.add_argument("--task-dir", required=True, help="prepared task folder (train/validation/test.parquet)")
        step.add_argument("--synonyms", default="", help="synonyms.json of the wordnet step (the synonym operation)")
    steps.choices["augment"].add_argument(
        "--settings", type=json.loads, required=True, help="resolved augment: setting"
    )
    perturb = steps.choices["perturb"]
    perturb.add_argument("--op", required=True, help="the perturbation (dapt.data.textops.PERTURBATIONS)")
    perturb.add_argument("--rate", type=float, required=True)
    perturb.add_argument("--seed", type=int, default=0)
    perturb.add_argument("--max-examples", type=int, default=None, help="perturb a seeded sample of the test split")
    for step in steps.choices.values():
        step.add_argument("--out", required=True)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    from dapt.data import augment

    if args.step == "wordnet":
        with fetch(download_spec(args)["source"], "wordnet.source", args.cache_dir) as dict_dir:
            summary = augment.prepare_wordnet(dict_dir, args.out)
        print(f"wordnet: {summary['lemmas']} lemmas with synonyms -> {args.out}")
    elif args.step == "augment":
        summary = augment.write_augmented(args.task_dir, args.settings, args.out, args.synonyms or None)
        print(
            f"augment {args.settings}: {summary['rows']} rows ({summary['unchanged']} equal to their source) "
            f"-> {args.out}"
        )
    else:
        summary = augment.write_perturbed(
            args.task_dir, args.op, args.rate, args.seed, args.max_examples, args.out, args.synonyms or None
        )
        print(
            f"perturb {args.op} at {args.rate}: {summary['changed']} of {summary['rows']} test texts changed "
            f"-> {args.out}"
        )


if __name__ == "__main__":
    run_main(main)
