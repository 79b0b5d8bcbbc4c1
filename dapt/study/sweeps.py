"""Hyperparameter sweeps and learning-curve sizes in a study config: which keys may be lists, the
one-line checks of those lists, and the nested training subsets of a learning curve.

Any fine-tuning hyperparameter (in `finetune`, `tasks.<t>.finetune`, `methods.<m>`,
`tasks.<t>.methods.<m>`) may be a list of values, and `tasks.<t>.max_examples.train` or a top-level
`train_sizes` a list of training-set sizes; `dapt.study.grid` turns every combination and size into a
run. This module knows nothing of the grid (dapt.study.config imports it to check a config), so it
imports no other part of the package but the error type.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from dapt.core.errors import UserError

#: Keys whose value is a list already: a list of lists is not read as a sweep, it is refused.
NATIVE_LISTS = ("variants", "target_modules")
#: Keys that are not hyperparameters of a run, and why (the one-line error says it).
NOT_SWEPT = {
    "kind": "a method has one kind (define one method per kind, e.g. lora_r4: {kind: lora, r: 4})",
    "variants": "it lists the variants the method runs on; every variant already is its own run",
    "target_modules": "give one list of module names",
    "eval_batch_size": "it does not change what is trained",
    "save_steps": "it is the checkpoint interval, not a hyperparameter",
}


def is_sweep(key: str, value: Any) -> bool:
    """Whether a hyperparameter value is a sweep: a list, for a key whose value is not a list anyway."""
    if not isinstance(value, list):
        return False
    return key not in NATIVE_LISTS or any(isinstance(v, list) for v in value)


def fine_tuning_blocks(config: Mapping) -> Iterator[tuple[str, dict, str]]:
    """(key path, block, 'finetune' or 'method') of every block of fine-tuning hyperparameters."""
    candidates = [("finetune", config.get("finetune"), "finetune")]
    candidates += [(f"methods.{m}", spec, "method") for m, spec in _items(config.get("methods"))]
    for task, tspec in _items(config.get("tasks")):
        if isinstance(tspec, dict):
            candidates.append((f"tasks.{task}.finetune", tspec.get("finetune"), "finetune"))
            candidates += [(f"tasks.{task}.methods.{m}", spec, "method") for m, spec in _items(tspec.get("methods"))]
    yield from ((path, block, kind) for path, block, kind in candidates if isinstance(block, dict))


def _items(section: Any) -> list:
    return list(section.items()) if isinstance(section, dict) else []


def _check_values(values: list, where: str, subschema: dict | None) -> None:
    import jsonschema

    for i, value in enumerate(values):
        if isinstance(value, (list, dict)):
            raise UserError(f"{where}[{i}]", "a sweep is a flat list of values", "e.g. lr: [1.0e-4, 2.0e-4]")
        if subschema is not None:
            err = next(iter(jsonschema.Draft202012Validator(subschema).iter_errors(value)), None)
            if err is not None:
                raise UserError(f"{where}[{i}]", err.message.replace("\n", " "), "see docs/config-reference.md")
        same = [v for v in values[:i] if value == v and isinstance(value, bool) == isinstance(v, bool)]
        if same and type(same[0]) is type(value):
            raise UserError(f"{where}[{i}]", f"{value!r} is listed twice", "list each value once")
        if same:  # 1 and 1.0: two run folders, one training
            raise UserError(
                f"{where}[{i}]",
                f"{value!r} equals {same[0]!r} listed before it: both would train the same runs",
                "list each value once",
            )


def check_sizes(sizes: Any, where: str) -> list[int]:
    """A learning curve's sizes: a non-empty list of distinct example counts."""
    if not isinstance(sizes, list) or not sizes:
        raise UserError(where, "a learning curve needs a non-empty list of training-set sizes", "e.g. [100, 300, 1000]")
    for i, n in enumerate(sizes):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserError(f"{where}[{i}]", f"{n!r} is not a number of training examples (an integer >= 1)")
        if n in sizes[:i]:
            raise UserError(f"{where}[{i}]", f"{n} is listed twice", "list each size once")
    return sizes


def without_sweeps(config: Mapping, schema: Mapping, where: str) -> dict:
    """A copy of the config with each sweep list checked and replaced by its first value, and a
    learning curve's list of sizes by its largest, for the schema check of everything else.

    Each value of a sweep is checked against its key's schema here, so an error names the list item
    (`methods.lora.lr[1]: ...`); an empty list, a value listed twice, and a list for a key that is not
    a hyperparameter (NOT_SWEPT) are one-line errors too."""
    out = copy.deepcopy(dict(config))
    defs = schema["$defs"]
    for path, block, kind in fine_tuning_blocks(out):
        for key, value in list(block.items()):
            if not isinstance(value, list) or (key in NATIVE_LISTS and not is_sweep(key, value)):
                continue
            here = f"{where}: {path}.{key}"
            if key in NOT_SWEPT:
                raise UserError(here, f"cannot be swept: {NOT_SWEPT[key]}")
            if not value:
                raise UserError(here, "an empty list sweeps nothing", "give one value, or a list of values to sweep")
            method_keys = defs["method"]["properties"] if kind == "method" else {}
            subschema = method_keys.get(key) or defs["finetune_keys"]["properties"].get(key)
            _check_values(value, f"{where}: {path}.{key}", subschema)
            block[key] = value[0]  # an unknown key stays in: the schema check names it
    if "train_sizes" in out:
        check_sizes(out["train_sizes"], f"{where}: train_sizes")
    for task, spec in _items(out.get("tasks")):
        caps = spec.get("max_examples") if isinstance(spec, dict) else None
        cap = caps.get("train") if isinstance(caps, dict) else None
        if isinstance(cap, list):
            caps["train"] = max(check_sizes(cap, f"{where}: tasks.{task}.max_examples.train"))
        elif isinstance(cap, int) and not isinstance(cap, bool):
            for i, n in enumerate(out.get("train_sizes") or []):
                if n > cap:
                    raise UserError(
                        f"{where}: train_sizes[{i}]",
                        f"{n} is more than tasks.{task}.max_examples.train ({cap})",
                        "a learning curve subsamples the training split",
                    )
    return out


def nested_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """One fixed order of the training examples whose every prefix is (close to) stratified: each
    class is shuffled with `seed`, each example keyed by its position within its class as a fraction
    of the class, and the examples sorted by that key (ties by a seeded draw)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    key = np.empty(len(labels))
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        key[idx[rng.permutation(len(idx))]] = (np.arange(len(idx)) + 0.5) / len(idx)
    return np.lexsort((rng.random(len(labels)), key))


def nested_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices (in file order) of a learning curve's n training examples: the first n of
    nested_order, so a smaller size is a subset of every larger one, and n = all is the split as is."""
    if n > len(labels):
        raise UserError(
            f"train size {n}",
            f"the training split has only {len(labels)} examples",
            "use sizes up to the training split's size",
        )
    return np.sort(nested_order(labels, seed)[:n])


def subset_examples(examples: Mapping[str, Any], n: int, seed: int) -> dict:
    """A tokenized split (`dapt.tokenize.tasks.read_examples`) cut to the nested subset of n of its
    documents (a windowed document keeps all its rows; `doc` is renumbered from 0)."""
    doc = np.asarray(examples.get("doc", np.arange(len(examples["label"]))))
    first = np.flatnonzero(np.r_[True, doc[1:] != doc[:-1]]) if len(doc) else doc  # each document's first row
    chosen = doc[first][nested_subset(np.asarray(examples["label"])[first], n, seed)]
    rows = np.flatnonzero(np.isin(doc, chosen))
    out = {}
    for key, value in examples.items():
        if isinstance(value, np.ndarray) and len(value) == len(doc):
            out[key] = value[rows]
        elif isinstance(value, list) and len(value) == len(doc):
            out[key] = [value[i] for i in rows]
        else:  # per-split settings (e.g. `pool`)
            out[key] = value
    if "doc" in out:
        out["doc"] = np.unique(out["doc"], return_inverse=True)[1]
    return out
