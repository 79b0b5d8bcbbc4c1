"""A prepared corpus's texts (a parquet file with a `text` column), read in record batches of about
`BATCH_CHARS` characters, and the rows of one tokenize shard: what the packer and kNN selection stream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dapt.core.errors import UserError

BATCH_CHARS = 1 << 20
READ_ROWS = 1024  # parquet rows per record batch


def open_texts(path: str | Path):
    """A parquet file with a string column `text` (a prepared corpus or task split)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as err:
        raise UserError(str(path), f"cannot read as parquet: {err}", "prepare the data again") from None
    field = pf.schema_arrow.field("text") if "text" in pf.schema_arrow.names else None
    if field is None or not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
        raise UserError(f"{path}: text", "no string column 'text'", "prepare the data again")
    return pf


def shard_rows(path: str | Path, shard: tuple[int, int]) -> tuple[int, int]:
    """Rows [start, stop) of shard k of n (0-based k): near-equal runs of documents, in order."""
    k, n = shard
    rows = open_texts(path).metadata.num_rows
    start, stop = k * rows // n, (k + 1) * rows // n
    if start == stop:
        what = f"shard {k + 1} of {n} has no documents" if n > 1 else "has no documents"
        raise UserError(
            str(path),
            f"{what}: the corpus has {rows}",
            "lower corpora.<corpus>.shards" if n > 1 else "prepare the data again",
        )
    return start, stop


def text_batches(
    path: str | Path, rows: tuple[int, int] | None = None, max_chars: int | None = None
) -> Iterator[list[str]]:
    """The texts of rows [start, stop), in order, in lists of about `max_chars` (BATCH_CHARS) characters."""
    max_chars = max_chars or BATCH_CHARS
    pf = open_texts(path)
    start, stop = rows or (0, pf.metadata.num_rows)
    pending: list[str] = []
    chars = 0
    offset = 0  # row number of the record batch's first row
    for group in range(pf.num_row_groups):
        size = pf.metadata.row_group(group).num_rows
        if offset + size <= start or offset >= stop:
            offset += size
            continue
        for record in _record_batches(pf, group, path):
            lo, hi = max(start - offset, 0), min(stop - offset, record.num_rows)
            if lo < hi:
                column = record.column(0).slice(lo, hi - lo)
                if column.null_count:
                    row = offset + lo + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
                    raise UserError(f"{path}: text", f"row {row} has no text (null)", "prepare the data again")
                for text in column.to_pylist():
                    pending.append(text)
                    chars += len(text)
                    if chars >= max_chars:
                        yield pending
                        pending, chars = [], 0
            offset += record.num_rows
    if pending:
        yield pending


def _record_batches(pf: Any, group: int, path: str | Path) -> Iterator[Any]:
    """A row group's `text` column in record batches; a damaged file is one line naming it."""
    import pyarrow as pa

    try:
        yield from pf.iter_batches(batch_size=READ_ROWS, row_groups=[group], columns=["text"])
    except (OSError, pa.ArrowException) as err:
        raise UserError(str(path), f"cannot read row group {group}: {err}", "prepare the data again") from None
