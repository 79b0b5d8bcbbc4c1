"""The recipe side's first step (bench/bench_study.py), as a user's script would do it: the corpus and
the task splits the workflow prepared (parquet) written as files the example scripts read.

- ``corpus.json`` / ``tapt.json``: JSON lines ``{"text": ...}`` for ``run_mlm.py`` (the IMDb corpus; the
  task's training text for TAPT). JSON rather than ``.txt``: ``load_dataset("text")`` would cut a
  document at every newline, and each line would then get its own [CLS] ... [SEP] before packing.
- ``train.csv``, ``validation.csv``, ``test.csv``: columns ``sentence,label`` for
  ``run_classification.py`` (its default text column is ``sentence``); each label as its position in
  the task's ``labels.json`` (0, 1): RT polarity's labels are "-1" and "1", and the csv loader would read
  "-1" as the integer -1, which the script takes for "no label".

Run as ``python study_to_files.py --corpus CORPUS.parquet --task TASK_DIR --out DIR``; its time counts
on the recipe side.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", required=True, help="the prepared corpus (parquet, column text)")
    p.add_argument("--task", required=True, help="the prepared task folder (train/validation/test.parquet)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task = Path(args.task)
    label_id = {label: i for i, label in enumerate(json.loads((task / "labels.json").read_text()))}
    pd.read_parquet(args.corpus, columns=["text"]).to_json(out / "corpus.json", orient="records", lines=True)
    for split in ("train", "validation", "test"):
        df = pd.read_parquet(task / f"{split}.parquet", columns=["text", "label"])
        df = df.rename(columns={"text": "sentence"})
        df["label"] = df["label"].astype(str).map(label_id)
        df.to_csv(out / f"{split}.csv", index=False)
        if split == "train":
            df[["sentence"]].rename(columns={"sentence": "text"}).to_json(
                out / "tapt.json", orient="records", lines=True
            )


if __name__ == "__main__":
    main()
