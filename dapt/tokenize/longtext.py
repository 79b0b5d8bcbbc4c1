"""Long documents: which tokens of a document the model sees, and how its windows become one prediction.

`tasks.<t>.long_text.strategy` (defaults and checks: `dapt.study.config`):

- `head`: the first `max_length` tokens, special tokens kept (the tokenizer's usual cut; the default).
- `head_tail`: `head` tokens from the start and the rest from the end (Sun et al., 2019, "How to
  Fine-Tune BERT for Text Classification?": head 128 + tail 382 beat head-only on IMDb).
- `windows`: windows of `max_length` tokens every `stride` tokens, each a row of its own with the
  document's label; at most `max_windows` per document (evenly spaced, first and last kept). A
  document's probabilities pool its windows' (`mean`, or `max` per class renormalised to sum 1), so
  validation, metrics and predictions stay per document.

Everything here is pure (token id lists and numpy): tokenization calls `document_rows`, validation
and evaluation call `per_document`. A tokenizer's special tokens are described by how many it puts
before and after a text (`special_counts`: 1 and 1 for BERT's [CLS] … [SEP]).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dapt.core.errors import UserError
from dapt.study.settings import POOLS


def special_counts(tokenizer) -> tuple[int, int]:
    """Special tokens the tokenizer adds before and after a text ([CLS] x [SEP]: (1, 1)).

    Found by locating a text's bare ids inside its ids with specials; where that fails, (0, 1): the
    one closing token the package always kept when cutting."""
    return locate_specials(tokenizer) or (0, 1)


def locate_specials(tokenizer) -> tuple[int, int] | None:
    """(before, after) special tokens around a text, or None where a text's bare ids are not found
    among its ids with special tokens."""
    probe = "hello world"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return start, len(full) - start - len(bare)
    return None


def check_tokenizer(tokenizer, strategy: str, where: str) -> tuple[int, int] | None:
    """Refuse head_tail and windows on a tokenizer that adds no special token before a text, or whose
    special tokens cannot be told from the text: every cut row keeps them, and the classifier reads the
    first one. `where`: the task's long_text key (and the model) for the message."""
    if strategy == "head":
        return None
    found = locate_specials(tokenizer)
    if found is None or found[0] == 0:
        problem = "adds no special token before a text" if found else "adds special tokens that cannot be located"
        raise UserError(
            f"{where}.strategy",
            f"{strategy} keeps a leading special token ([CLS], <s>) in every row it cuts, and the model's "
            f"tokenizer ({type(tokenizer).__name__}) {problem}",
            "use strategy: head, or a model whose tokenizer adds [CLS] or <s>",
        )
    return found


def _split(ids: Sequence[int], specials: tuple[int, int]) -> tuple[list[int], list[int], list[int]]:
    """(leading specials, content, trailing specials) of one encoded text."""
    pre, post = specials
    ids = list(ids)
    return ids[:pre], ids[pre : len(ids) - post], ids[len(ids) - post :]


def budget(max_length: int, specials: tuple[int, int]) -> int:
    """Content tokens a row of `max_length` holds beside the special tokens."""
    return max_length - sum(specials)


def cut_head(ids: Sequence[int], max_length: int, specials: tuple[int, int]) -> list[int]:
    """The first content tokens that fit, between the special tokens."""
    if len(ids) <= max_length:
        return list(ids)
    pre, body, post = _split(ids, specials)
    return pre + body[: budget(max_length, specials)] + post


def cut_head_tail(ids: Sequence[int], max_length: int, head: int, specials: tuple[int, int]) -> list[int]:
    """`head` content tokens from the start, the rest of the budget from the end, specials kept."""
    if len(ids) <= max_length:
        return list(ids)
    pre, body, post = _split(ids, specials)
    tail = budget(max_length, specials) - head
    return pre + body[:head] + (body[len(body) - tail :] if tail > 0 else []) + post


def check_settings(settings: dict, max_length: int, specials: tuple[int, int], key: str) -> None:
    """Refuse what the config check cannot see without the tokenizer: a head or stride beyond the
    tokens a row holds beside its special tokens (`key`: tasks.<t>.long_text)."""
    room, n = budget(max_length, specials), sum(specials)
    if settings["strategy"] == "head_tail" and settings["head"] > room:
        raise UserError(
            f"{key}.head",
            f"{settings['head']} head tokens do not fit: max_length {max_length} holds "
            f"{room} tokens besides the {n} special tokens",
            f"use head <= {room}",
        )
    if settings["strategy"] == "windows" and settings["stride"] > room:
        raise UserError(
            f"{key}.stride",
            f"stride {settings['stride']} would skip tokens: a window holds {room} tokens "
            f"besides its {n} special tokens",
            f"use stride <= {room}",
        )


def window_starts(n_tokens: int, window: int, stride: int) -> list[int]:
    """Offsets of windows of `window` tokens every `stride` tokens, until one reaches the end."""
    starts = [0]
    while starts[-1] + window < n_tokens:
        starts.append(starts[-1] + stride)
    return starts


def capped(n: int, max_windows: int | None) -> list[int]:
    """Which of n windows to keep: all, or `max_windows` evenly spaced (first and last included)."""
    if max_windows is None or n <= max_windows:
        return list(range(n))
    return [int(i) for i in np.linspace(0, n - 1, max_windows).round()]


def windows(
    ids: Sequence[int], max_length: int, stride: int, max_windows: int | None, specials: tuple[int, int]
) -> tuple[list[list[int]], int]:
    """The document's windows (specials around each) and how many windows the cap dropped."""
    pre, body, post = _split(ids, specials)
    width = budget(max_length, specials)
    starts = window_starts(len(body), width, stride)
    keep = capped(len(starts), max_windows)
    return [pre + body[starts[i] : starts[i] + width] + post for i in keep], len(starts) - len(keep)


def document_rows(
    encoded: Sequence[Sequence[int]], settings: dict, max_length: int, specials: tuple[int, int]
) -> tuple[list[list[int]], list[int], dict]:
    """Model rows of every document, the document index of each row, and counts for the logs:
    `truncated` documents (tokens the model never sees) and, for windows, `windows` and `windows_dropped`."""
    strategy = settings["strategy"]
    rows: list[list[int]] = []
    doc: list[int] = []
    counts = {"truncated": 0}
    if strategy == "windows":
        counts.update(windows=0, windows_dropped=0)
    for d, ids in enumerate(encoded):
        if strategy == "windows":
            parts, dropped = windows(ids, max_length, settings["stride"], settings.get("max_windows"), specials)
            counts["windows"] += len(parts)
            counts["windows_dropped"] += dropped
            counts["truncated"] += dropped > 0
        elif strategy == "head_tail":
            parts = [cut_head_tail(ids, max_length, settings["head"], specials)]
            counts["truncated"] += len(ids) > max_length
        elif strategy == "head":
            parts = [cut_head(ids, max_length, specials)]
            counts["truncated"] += len(ids) > max_length
        else:
            raise ValueError(f"unknown long_text strategy {strategy!r}")
        rows.extend(parts)
        doc.extend([d] * len(parts))
    return rows, doc, counts


def document_index(ids: Sequence[str]) -> np.ndarray:
    """Document number of each row: a document's rows are consecutive and share its id."""
    if len(ids) == 0:
        return np.zeros(0, dtype=np.int64)
    new = np.fromiter((i == 0 or ids[i] != ids[i - 1] for i in range(len(ids))), dtype=bool, count=len(ids))
    return np.cumsum(new) - 1


def pool(probs: np.ndarray, doc: np.ndarray, how: str) -> np.ndarray:
    """Per-document probabilities from per-row ones: the mean over a document's rows, or the max per
    class renormalised to sum 1."""
    n_docs = int(doc.max()) + 1 if len(doc) else 0
    probs = np.asarray(probs, dtype=np.float64)
    if how == "mean":
        sums = np.zeros((n_docs, probs.shape[1]))
        np.add.at(sums, doc, probs)
        return sums / np.bincount(doc, minlength=n_docs)[:, None]
    if how == "max":
        top = np.full((n_docs, probs.shape[1]), -np.inf)
        np.maximum.at(top, doc, probs)
        return top / top.sum(axis=1, keepdims=True)
    raise ValueError(f"unknown pool {how!r} (use one of {list(POOLS)})")


def n_documents(examples: dict) -> int:
    """Documents in a split read by `dapt.tokenize.tasks.read_examples` (rows, unless windowed)."""
    doc = np.asarray(examples["doc"])
    return int((doc[1:] != doc[:-1]).sum()) + 1 if len(doc) else 0


def per_document(examples: dict, probs: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, gold labels, probabilities) per document of a split read by `dapt.tokenize.tasks.read_examples`.

    Rows of a windowed split are pooled by the split's own `pool`; any other split has one row per
    document and passes through unchanged."""
    if examples.get("pool") is None:
        return examples["id"], examples["label"], probs
    doc = examples["doc"]
    first = np.flatnonzero(np.r_[True, doc[1:] != doc[:-1]]) if len(doc) else np.zeros(0, dtype=np.int64)
    return [examples["id"][i] for i in first], examples["label"][first], pool(probs, doc, examples["pool"])
