"""Reading one source into a table of strings: file formats, encodings, hub datasets, column roles.

Whatever the source's format, the rest of the workflow sees string columns `id`, `text` (and
`label`), with no empty texts or labels and no duplicate ids, so each problem is reported once,
here, naming the file and the config key to change.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from dapt.core.errors import UserError, some
from dapt.data.formats import check_file, format_chunks, read_errors, read_format
from dapt.data.sources import describe_source, fetch, one_line_reason, required

#: Rows per chunk when a corpus is streamed (`iter_source`).
CHUNK_ROWS = 1000


def load_source(
    source: dict, where: str, cache_dir: str | os.PathLike, id_prefix: str, with_label: bool
) -> pd.DataFrame:
    """Fetch one source and return its rows as string columns id, text (and label).

    Ids the source lacks become "{id_prefix}-{row}", row counting from 0 in the file's order.
    """
    origin = describe_source(source)
    if source.get("kind") == "hf":
        raw = load_hf_dataset(source, where, cache_dir)
    else:
        with fetch(source, where, cache_dir) as path:
            raw = read_table(path, source, where, origin)
    return normalise(raw, source.get("columns") or {}, where, origin, id_prefix, with_label)


def iter_source(
    source: dict, where: str, cache_dir: str | os.PathLike, id_prefix: str, rows: int | None = None
) -> Iterator[pd.DataFrame]:
    """`load_source` for a corpus (string columns id, text), a chunk of `rows` (CHUNK_ROWS) rows at a time.

    Empty texts and duplicate ids are left to the caller, who sees every chunk (dapt.data.prepare)."""
    rows = rows or CHUNK_ROWS
    origin = describe_source(source)
    columns = source.get("columns") or {}
    first = 0
    with contextlib.ExitStack() as stack:
        if source.get("kind") == "hf":
            ds = _open_hf_dataset(source, where, cache_dir)
            chunks: Iterator[pd.DataFrame] = (_label_names(ds, pd.DataFrame(b)) for b in ds.iter(batch_size=rows))
        else:
            chunks = read_chunks(stack.enter_context(fetch(source, where, cache_dir)), source, where, origin, rows)
        for raw in chunks:
            yield normalise(raw, columns, where, origin, id_prefix, with_label=False, first_row=first, check=False)
            first += len(raw)


def load_hf_dataset(source: dict, where: str, cache_dir: str | os.PathLike) -> pd.DataFrame:
    """Load one split with `datasets`; the hub token comes only from HF_TOKEN in the environment."""
    ds = _open_hf_dataset(source, where, cache_dir)
    return _label_names(ds, ds.to_pandas())


def _open_hf_dataset(source: dict, where: str, cache_dir: str | os.PathLike) -> Any:
    """One split of a hub dataset, as `datasets` keeps it: memory-mapped Arrow files in the cache."""
    import datasets

    dataset_id = required(source, "id", where)
    try:
        ds = datasets.load_dataset(
            dataset_id,
            source.get("name"),
            split=source.get("split", "train"),
            revision=source.get("revision"),
            cache_dir=str(Path(cache_dir) / "hf-datasets"),
            token=os.environ.get("HF_TOKEN") or False,
        )
    except Exception as err:  # the hub and the builders raise many unrelated types
        raise UserError(
            f"{where}.id",
            f"cannot load dataset {dataset_id!r}: {one_line_reason(err)}",
            "check id, name, split and revision; private datasets need HF_TOKEN set",
        ) from None
    return ds


def _label_names(ds: Any, table: pd.DataFrame) -> pd.DataFrame:
    """Label names, not class numbers, for the dataset's class-label columns; -1 means none."""
    import datasets

    for column, feature in ds.features.items():
        if isinstance(feature, datasets.ClassLabel) and column in table:
            table[column] = [feature.int2str(int(i)) if i >= 0 else "" for i in table[column]]
    return table


def read_table(path: Path, source: dict, where: str, origin: str) -> pd.DataFrame:
    """Read a csv/tsv/jsonl/parquet/txt file with every value as found (strings for text formats).

    Without a header the columns are numbered 0, 1, ...; a txt file is one column "text", one text
    per non-blank line (or, with `sep`, two: `txt_rows`); tsv fields are never quoted (as in GLUE).
    """
    fmt, encoding = check_file(path, source, where, origin)
    with read_errors(origin, where, fmt, encoding, path):
        table = read_format(path, fmt, encoding, source, origin)
    if table.empty:
        raise UserError(origin, "the file has no rows")
    return table


def read_chunks(path: Path, source: dict, where: str, origin: str, rows: int | None = None) -> Iterator[pd.DataFrame]:
    """`read_table` a chunk of `rows` (CHUNK_ROWS) rows at a time, with the same values and errors: a
    corpus of any size passes in bounded memory."""
    rows = rows or CHUNK_ROWS
    fmt, encoding = check_file(path, source, where, origin)
    seen = 0
    with read_errors(origin, where, fmt, encoding, path):
        for chunk in format_chunks(path, fmt, encoding, source, origin, rows):
            if len(chunk):
                seen += len(chunk)
                yield chunk
    if not seen:
        raise UserError(origin, "the file has no rows")


def normalise(
    raw: pd.DataFrame,
    columns: dict,
    where: str,
    origin: str,
    id_prefix: str,
    with_label: bool,
    first_row: int = 0,
    check: bool = True,
) -> pd.DataFrame:
    """Map the user's columns to id/text/label strings and refuse empty texts or labels, duplicate ids.

    A chunk of a streamed source numbers its rows from `first_row`; check=False leaves the refusals
    to the caller, who sees every chunk (dapt.data.prepare.CorpusChecks)."""
    roles = ("text", "label") if with_label else ("text",)
    table = pd.DataFrame(index=raw.index)
    for role in roles:
        table[role] = _as_strings(raw[_column(raw, columns, role, where, origin)]).str.strip()
    if "id" in columns or "id" in raw.columns:
        table["id"] = _as_strings(raw[_column(raw, columns, "id", where, origin)]).str.strip()
    else:
        table["id"] = [f"{id_prefix}-{row}" for row in range(first_row, first_row + len(raw))]
    if not check:
        return table[["id", *roles]]
    for role in roles:
        empty = table["id"][table[role] == ""]
        if len(empty):
            raise UserError(
                origin,
                f"{len(empty)} of {len(table)} rows have an empty {role} (ids: {some(empty)})",
                f"remove those rows or check {where}.columns.{role}",
            )
    duplicated = table["id"][table["id"].duplicated()]
    if len(duplicated):
        raise UserError(
            origin,
            f"{len(duplicated)} duplicate ids (e.g. {some(duplicated.unique())})",
            f"map {where}.columns.id to a unique column, or leave it out to number the rows",
        )
    return table[["id", *roles]]


def _column(raw: pd.DataFrame, columns: dict, role: str, where: str, origin: str) -> Any:
    """The raw column for a role: a name, a 0-based position, or by default the role's own name."""
    key = columns.get(role, role)
    if isinstance(key, int) and not isinstance(key, bool):
        if 0 <= key < len(raw.columns):
            return raw.columns[key]
        problem = f"column position {key} is out of range: {origin} has {len(raw.columns)} columns"
    elif key in raw.columns:
        return key
    else:
        problem = f"no column {key!r} in {origin}"
    raise UserError(
        f"{where}.columns.{role}",
        f"{problem}; columns are {list(raw.columns)}",
        f"set columns.{role} to a column name or a 0-based position",
    )


def _as_strings(values: pd.Series) -> pd.Series:
    """Strings for every cell, missing as ""; whole floats (1.0 from a column with gaps) as "1"."""
    if pd.api.types.is_float_dtype(values) and (values.dropna() % 1 == 0).all():
        values = values.astype("Int64")
    missing = values.isna()
    return pd.Series(
        ["" if gap else str(v) for v, gap in zip(values.astype(object), missing)], index=values.index, dtype=str
    )
