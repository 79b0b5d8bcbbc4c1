"""Carving a task's train/validation/test splits and checking them before anything trains on them.

Carving is stratified by label with a fixed seed, so every variant and seed of a study sees the
very same examples; splits keep the file's row order so the outputs are byte-stable.
"""

from __future__ import annotations

import pandas as pd

from dapt.core.errors import UserError, some

SPLITS = ("train", "validation", "test")
DEFAULT_VALIDATION_SIZE = 0.1  # of the rows carved from, when a task neither has nor carves validation


def carve_missing_splits(
    splits: dict[str, pd.DataFrame], carve: dict, where: str, seed: int
) -> dict[str, pd.DataFrame]:
    """Carve test, then validation, out of the training rows when the task has no such source."""
    if "train" in carve:
        raise UserError(f"{where}.carve.train", "train is what remains after carving", "use max_examples.train")
    total = len(splits["train"])
    for split in ("test", "validation"):
        key = f"{where}.carve.{split}"
        if split in splits:
            if split in carve:
                raise UserError(
                    key, f"the task has its own {split} source, so there is nothing to carve", f"remove carve.{split}"
                )
            continue
        if split == "test" and "test" not in carve:
            raise UserError(
                key,
                "the task has no test source and no size to carve one",
                "add sources.test, or carve: {test: <count or fraction>}",
            )
        n = row_count(carve.get(split, DEFAULT_VALIDATION_SIZE), total, key)
        splits["train"], splits[split] = stratified_split(splits["train"], n, seed, key)
    return {split: splits[split] for split in SPLITS}


def cap_splits(splits: dict[str, pd.DataFrame], max_examples: dict, where: str, seed: int) -> dict[str, pd.DataFrame]:
    """Keep a stratified subsample of each split that has a `max_examples` cap (smaller studies)."""
    for split, cap in max_examples.items():
        n = row_count(cap, len(splits[split]), f"{where}.max_examples.{split}")
        if n < len(splits[split]):
            _, splits[split] = stratified_split(splits[split], n, seed, f"{where}.max_examples.{split}")
    return splits


def row_count(size: float, total: int, key: str) -> int:
    """A count (integer >= 1) as is; a fraction (0 < x < 1) of `total` rows."""
    if 0 < size < 1:
        return max(1, round(size * total))
    if size >= 1 and float(size).is_integer():
        return int(size)
    raise UserError(key, f"{size} is neither a row count (integer >= 1) nor a fraction (0 < x < 1)")


def stratified_split(table: pd.DataFrame, n: int, seed: int, key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off `n` rows with the label proportions of the whole; both parts keep file order."""
    from sklearn.model_selection import train_test_split

    if n >= len(table):
        raise UserError(key, f"asks for {n} rows but only {len(table)} are available", "use a smaller size")
    try:
        rest, taken = train_test_split(table, test_size=n, stratify=table["label"], random_state=seed)
    except ValueError as err:
        raise UserError(
            key,
            f"cannot take a stratified {n}-row sample from {len(table)} rows: {err}",
            "use a larger size, or check that every class has at least 2 examples",
        ) from None
    return rest.sort_index(), taken.sort_index()


def check_labels(splits: dict[str, pd.DataFrame], label_keys: dict[str, str]) -> list[str]:
    """The sorted training labels; at least two, and every evaluation label among them."""
    labels = sorted(splits["train"]["label"].unique())
    if len(labels) < 2:
        raise UserError(
            label_keys["train"],
            f"the training split has a single class ({labels[0]!r})",
            "a classification task needs at least two labels; check the label column",
        )
    for split in ("validation", "test"):
        unseen = splits[split]["label"][~splits[split]["label"].isin(labels)]
        if len(unseen):
            counts = unseen.value_counts().to_dict()
            raise UserError(
                label_keys[split],
                f"{split} has labels that train lacks: {counts}",
                f"train labels are {labels}; fix the labels or drop those rows",
            )
    return labels


def check_unique_ids(splits: dict[str, pd.DataFrame], where: str) -> None:
    """Refuse an id in two splits: predictions are joined to examples by id."""
    ids = pd.concat([df["id"] for df in splits.values()])
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        raise UserError(
            where,
            f"{len(duplicated)} ids occur in more than one split (e.g. {some(duplicated)})",
            "ids must be unique across train, validation and test",
        )


def shared_texts(splits: dict[str, pd.DataFrame]) -> dict[str, int]:
    """How many rows of a later split repeat a text of an earlier one (counted, never dropped)."""
    pairs = (("train", "validation"), ("train", "test"), ("validation", "test"))
    return {f"{b}_in_{a}": int(splits[b]["text"].isin(set(splits[a]["text"])).sum()) for a, b in pairs}


def class_counts(table: pd.DataFrame) -> dict[str, int]:
    """Rows per label, labels sorted, as plain JSON types for summary.json."""
    return {str(k): int(v) for k, v in sorted(table["label"].value_counts().items())}
