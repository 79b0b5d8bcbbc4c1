"""Reading one table file of a known format (csv, tsv, jsonl, parquet, txt) in whole or in chunks, with the
format's own errors turned into one line naming the file and the key to change."""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from dapt.core.errors import UserError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".parquet": "parquet", ".txt": "txt"}


def check_file(path: Path, source: dict, where: str, origin: str) -> tuple[str, str]:
    """A non-empty file of a known format; its format and encoding."""
    if path.is_dir():
        raise UserError(origin, "is a folder, not a data file", "point path/member at a file")
    fmt = table_format(path, source, where)
    if source.get("sep") is not None and fmt != "txt":
        raise UserError(f"{where}.sep", f"splits txt lines, but {path.name} is read as {fmt}", "remove sep:")
    if path.stat().st_size == 0:
        raise UserError(origin, "the file is empty")
    return fmt, source.get("encoding", "utf-8-sig")


#: The first bytes of compressed files, which decode as no text encoding: the hint is then not `encoding:`.
COMPRESSED = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ": "xz",
    b"PK\x03\x04": "zip",
    b"\x28\xb5\x2f\xfd": "zstd",
}


def compression_of(path: Path | None) -> str | None:
    """The compression a file's first bytes show, if any."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except (OSError, TypeError):
        return None
    return next((name for magic, name in COMPRESSED.items() if head.startswith(magic)), None)


@contextlib.contextmanager
def read_errors(origin: str, where: str, fmt: str, encoding: str, path: Path | None = None) -> Iterator[None]:
    """Decoding and parsing errors as one line naming the file and the key to change."""
    try:
        yield
    except UnicodeDecodeError as err:
        packed = compression_of(path)
        if packed:
            raise UserError(
                origin,
                f"is {packed}-compressed, not {fmt} text",
                f"decompress it, or give it its {packed} suffix (e.g. .{fmt}.gz for gzip) and set format: {fmt}"
                f" in {where}",
            ) from None
        raise UserError(
            origin,
            f"is not valid {encoding} text ({err.reason} at byte {err.start} of a block)",
            f"set encoding: in {where} (e.g. latin-1) or re-save the file as UTF-8",
        ) from None
    except LookupError as err:
        raise UserError(f"{where}.encoding", str(err), "use a Python codec name such as utf-8 or latin-1") from None
    except pd.errors.EmptyDataError:
        raise UserError(origin, "the file has no data") from None
    except (pd.errors.ParserError, OSError, ValueError) as err:
        raise UserError(origin, f"cannot read as {fmt}: {err}", f"check the file or set format: in {where}") from None


def read_format(path: Path, fmt: str, encoding: str, source: dict, origin: str) -> pd.DataFrame:
    """The file read as `fmt`; decoding and parsing errors are left to `read_table` to explain."""
    if fmt in ("csv", "tsv"):
        return pd.read_csv(
            path,
            sep="," if fmt == "csv" else "\t",
            quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE,  # tsv has no quoting
            header=0 if source.get("header", True) else None,
            encoding=encoding,
            dtype=str,
            keep_default_na=False,
        )
    if fmt == "parquet":
        return pd.read_parquet(path)
    with open(path, encoding=encoding) as f:
        return pd.DataFrame(list(jsonl_rows(f, origin) if fmt == "jsonl" else txt_rows(f, source.get("sep"), origin)))


def jsonl_rows(lines: Any, origin: str) -> Iterator[dict]:
    """One JSON object per non-blank line; a bad line is named by its number."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{origin}:{lineno}", f"not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{origin}:{lineno}", "each line must be one JSON object")
        yield row


def txt_rows(lines: Iterable[str], sep: str | None, origin: str) -> Iterator[dict]:
    """Each non-blank line (as str.splitlines splits them) as column "text"; with `sep`, each non-blank
    line of the file split at its last `sep` into columns 0 and 1, so a text may hold `sep` (as in
    Financial PhraseBank's "sentence@label" lines); a line without `sep` is an error naming it."""
    for lineno, line in enumerate(lines, 1):
        if sep is None:
            yield from ({"text": part} for part in line.splitlines() if part.strip())
        elif line.strip():
            if sep not in line:
                raise UserError(f"{origin}:{lineno}", f"no {sep!r} in the line", f"lines are <text>{sep}<label>")
            yield dict(enumerate(line.rstrip("\n").rsplit(sep, 1)))


def format_chunks(path: Path, fmt: str, encoding: str, source: dict, origin: str, rows: int) -> Iterator[pd.DataFrame]:
    """`read_format`, `rows` rows at a time (txt: lines split as str.splitlines splits them)."""
    if fmt in ("csv", "tsv"):
        header = 0 if source.get("header", True) else None
        with pd.read_csv(
            path,
            sep="," if fmt == "csv" else "\t",
            quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE,
            header=header,
            encoding=encoding,
            dtype=str,
            keep_default_na=False,
            chunksize=rows,
        ) as reader:
            yield from reader
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=rows):
            yield batch.to_pandas()
    else:
        with open(path, encoding=encoding) as f:
            items = jsonl_rows(f, origin) if fmt == "jsonl" else txt_rows(f, source.get("sep"), origin)
            while chunk := [row for _, row in zip(range(rows), items)]:
                yield pd.DataFrame(chunk)


def table_format(path: Path, source: dict, where: str) -> str:
    """The declared format, else the one the file's extension names."""
    fmt = source.get("format") or FORMATS.get(path.suffix.lower())
    if fmt not in FORMATS.values():
        problem = f"unknown format {fmt!r}" if fmt else f"cannot tell the format of {path.name} from its extension"
        raise UserError(f"{where}.format", problem, f"set format: to one of {sorted(set(FORMATS.values()))}")
    return fmt
