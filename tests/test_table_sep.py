"""`sep:` on txt sources: "text<sep>label" lines split at their last separator, the way Financial
PhraseBank's Sentences_*.txt files (latin-1, "sentence@label") are read by config/examples/finance.yaml.

The archive here is built in the test (no download): a zip served from a file:// URL with its
sha256, the same source kind, member and keys as the finance example's task.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO

from dapt.core.errors import UserError
from dapt.data import prepare as data
from dapt.data import readers as tables

MEMBER = "FinancialPhraseBank-v1.0/Sentences_50Agree.txt"
# latin-1 bytes: é (0xe9) and 0x85, which str.splitlines would take for a line break (U+0085)
LINES = [
    "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn .@positive",
    "The caf\xe9 chain 's sales fell by 4 % .@negative",
    "Orders @ the plant were unchanged \x85 as expected .@neutral",
]


def phrasebank_zip(lines: list[str], newline: str = "\r\n") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(MEMBER, "".join(line + newline for line in lines).encode("latin-1"))
    return buffer.getvalue()


def url_source(tmp_path: Path, archive: bytes, **keys) -> dict:
    path = tmp_path / "FinancialPhraseBank-v1.0.zip"
    path.write_bytes(archive)
    return {
        "kind": "url",
        "url": path.as_uri(),
        "sha256": hashlib.sha256(archive).hexdigest(),
        "member": MEMBER,
        "encoding": "latin-1",
        "sep": "@",
        "columns": {"text": 0, "label": 1},
        **keys,
    }


def test_sentence_at_label_lines_split_at_the_last_at(tmp_path):
    source = url_source(tmp_path, phrasebank_zip(LINES))
    table = tables.load_source(source, "tasks.fpb.source", tmp_path / "cache", "fpb", with_label=True)
    assert table["text"].tolist() == [
        "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn .",
        "The café chain 's sales fell by 4 % .",
        "Orders @ the plant were unchanged \x85 as expected .",  # '@' kept in the text, U+0085 no line break
    ]
    assert table["label"].tolist() == ["positive", "negative", "neutral"]
    assert table["id"].tolist() == ["fpb-0", "fpb-1", "fpb-2"]


def test_streamed_chunks_read_the_same_rows(tmp_path):
    """A corpus read chunk by chunk (dapt.data.readers.iter_source) splits the lines as a whole read does."""
    source = url_source(tmp_path, phrasebank_zip(LINES * 3 + [""], newline="\n"), columns={"text": 0})
    whole = tables.load_source(source, "corpora.c.source", tmp_path / "cache", "c", with_label=False)
    chunks = pd.concat(tables.iter_source(source, "corpora.c.source", tmp_path / "cache", "c", rows=2))
    assert len(whole) == 9 and chunks.reset_index(drop=True).equals(whole.reset_index(drop=True))


def test_task_with_carved_splits(tmp_path):
    """The finance example's shape: one file, test and validation carved out, labels as found."""
    lines = [f"Sentence {i} about sales@{label}" for i in range(30) for label in ("negative", "neutral", "positive")]
    spec = {"source": url_source(tmp_path, phrasebank_zip(lines)), "carve": {"test": 0.1, "validation": 0.1}}
    summary = data.prepare_task(spec, "fpb", tmp_path / "out", cache_dir=tmp_path / "cache")
    assert summary["rows"] == {"train": 72, "validation": 9, "test": 9}
    assert summary["labels"] == ["negative", "neutral", "positive"]


def test_a_line_without_the_separator_is_named(tmp_path):
    source = url_source(tmp_path, phrasebank_zip([LINES[0], "", "A sentence with no label", LINES[1]]))
    with pytest.raises(UserError) as info:
        tables.load_source(source, "tasks.fpb.source", tmp_path / "cache", "fpb", with_label=True)
    message = str(info.value)
    assert f"[{MEMBER}]:3: no '@' in the line" in message and "\n" not in message


def test_sep_on_a_csv_is_refused(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\na@b,c\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"tasks\.t\.source\.sep: .*t\.csv is read as csv"):
        tables.load_source({"kind": "local", "path": str(path), "sep": "@"}, "tasks.t.source", tmp_path, "t", True)


def test_prepare_script_reports_a_bad_line_in_one_line(tmp_path):
    """What a Snakemake job's log ends with: one line naming the archive member and line, exit 2."""
    source = url_source(tmp_path, phrasebank_zip([LINES[0], "no label here"]))
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "prepare_data.py"),
            "--kind",
            "task",
            "--name",
            "fpb",
            "--config-json",
            json.dumps({"source": source, "carve": {"test": 1}}),
            "--out",
            str(tmp_path / "out"),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"[{MEMBER}]:2: no '@' in the line" in lines[0]
    assert not (tmp_path / "out").exists()
