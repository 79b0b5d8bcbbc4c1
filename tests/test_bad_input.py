"""Every kind of bad input fails the same way: one `error:` line naming the file or config key, a
non-zero exit, no partial output, and earlier results untouched.

One table-driven test. Config errors run `snakemake` (the Snakefile validates before building the
DAG); the rest run the step's script as its rule does, in a folder that already holds results of
earlier jobs (a good prepared task where the failing job would write, the prepared model and
tokenized data), and downloads come from a local HTTP server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO, make_workdir, reliability_config, run_snakemake
from test_data import RT_BYTES, RT_COLUMNS, RT_SAMPLE, Server, balanced, local, sha, tar_gz, write_csv

TASK_OUT = "results/data/tasks/t"  # where the data and download cases write; holds an earlier good output
CACHE = "results/.cache/downloads"
MODEL = "results/models/tiny"  # the prepared tiny model, copied into each case's folder
TOKENIZED = "results/tokenized/tiny/tasks/rt_polarity.L48"


@dataclass
class Ctx:
    cwd: Path
    server: Server
    prepared: Path


@dataclass
class Case:
    id: str
    make: Callable[[Ctx], tuple[list[str], str]]  # -> (command, the output it would write)
    expect: list[str]  # substrings of the error line (the file or config key, the problem)
    env: dict = field(default_factory=dict)
    snakemake_job: bool = False  # the error comes from a job Snakemake ran: the line is in its log


# --------------------------------------------------------------------------------------------
# Commands, as the rules run them
# --------------------------------------------------------------------------------------------


def prepare_task(spec: dict) -> tuple[list[str], str]:
    return [
        sys.executable,
        str(REPO / "scripts/prepare_data.py"),
        "--kind",
        "task",
        "--name",
        "t",
        "--config-json",
        json.dumps(spec),
        "--out",
        TASK_OUT,
        "--cache-dir",
        CACHE,
    ], TASK_OUT


def prepare_model(ctx: Ctx, path: str) -> tuple[list[str], str]:
    spec = {"source": {"kind": "local", "path": path}}
    return [
        sys.executable,
        str(REPO / "scripts/prepare_model.py"),
        "--name",
        "m",
        "--config-json",
        json.dumps(spec),
        "--out",
        "results/models/m",
        "--cache-dir",
        CACHE,
    ], "results/models/m"


def config_error(change: Callable[[dict], None], *args: str) -> Callable[[Ctx], tuple[list[str], str]]:
    def make(ctx: Ctx):
        config = reliability_config()
        change(config)
        make_workdir(ctx.cwd, config)
        return ["snakemake", *args], "results/report"

    return make


def finetune_epochs_twice(ctx: Ctx) -> tuple[list[str], str]:
    """study.yaml with `epochs:` given twice under finetune (PyYAML, and so Snakemake, keeps the last)."""
    make_workdir(ctx.cwd, reliability_config())
    path = ctx.cwd / "study.yaml"
    lines = path.read_text().splitlines()
    start = lines.index("finetune:")
    lines.insert(start + 1, "  epochs: 9")
    path.write_text("\n".join(lines) + "\n")
    return ["snakemake", "-n"], "results/report"


def task_file(name: str, content: bytes | None = None, rows=None, **source) -> Callable[[Ctx], tuple[list[str], str]]:
    def make(ctx: Ctx):
        path = ctx.cwd / name
        if rows is not None:
            write_csv(path, rows)
        elif content is not None:
            path.write_bytes(content)
        spec_source = {**local(Path(name), columns=RT_COLUMNS), **source}
        return prepare_task({"source": spec_source, "carve": {"test": 4}})

    return make


def url_task(path: str, content: bytes | None, member: str | None = None, sha256: str | None = "auto"):
    def make(ctx: Ctx):
        url = ctx.server.add(path, content) if content is not None else ctx.server.url + path
        source = {"kind": "url", "url": url, "columns": RT_COLUMNS}
        if sha256 == "auto":
            source["sha256"] = sha(content or b"")
        elif sha256:
            source["sha256"] = sha256
        if member:
            source["member"] = member
        return prepare_task({"source": source, "carve": {"test": 40}})

    return make


def two_sources(train_rows, test_rows):
    def make(ctx: Ctx):
        write_csv(ctx.cwd / "train.csv", train_rows)
        write_csv(ctx.cwd / "test.csv", test_rows)
        return prepare_task(
            {
                "sources": {
                    "train": local(Path("train.csv"), columns=RT_COLUMNS),
                    "test": local(Path("test.csv"), columns=RT_COLUMNS),
                }
            }
        )

    return make


def damaged_model(damage: Callable[[Path], None]) -> Callable[[Ctx], tuple[list[str], str]]:
    def make(ctx: Ctx):
        folder = ctx.cwd / "damaged"
        shutil.copytree(ctx.prepared / MODEL, folder)
        damage(folder)
        return prepare_model(ctx, "damaged")

    return make


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def grow_tokenizer(folder: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens([f"newword{i}" for i in range(12)])
    tokenizer.save_pretrained(folder)


def diverging_finetune(ctx: Ctx):
    from dapt.study.defaults import FINETUNE_DEFAULTS

    params = {
        **FINETUNE_DEFAULTS,
        "kind": "full",
        "metric": "macro_f1",
        "max_length": 48,
        "epochs": 1,
        "batch_size": 16,
        "lr": 1e30,
    }
    return [
        sys.executable,
        str(REPO / "scripts/finetune.py"),
        "--base",
        MODEL,
        "--tokenized",
        TOKENIZED,
        "--params",
        json.dumps(params),
        "--seed",
        "1",
        "--threads",
        "1",
        "--precision",
        "fp32",
        "--checkpoints",
        "results/checkpoints/finetune/x",
        "--out",
        "results/finetune/x",
    ], "results/finetune/x"


def overlong_tokenize(ctx: Ctx):
    return [
        sys.executable,
        str(REPO / "scripts/tokenize_data.py"),
        "--model",
        MODEL,
        "--max-length",
        "1024",
        "--task",
        "results/data/tasks/rt_polarity",
        "--out",
        "results/tokenized/tiny/tasks/rt_polarity.L1024",
    ], "results/tokenized/tiny/tasks/rt_polarity.L1024"


def carve_too_much_in_snakemake(ctx: Ctx):
    config = reliability_config()
    config["tasks"] = {"rt_big": {**config["tasks"]["rt_polarity"], "carve": {"test": 5000}}}
    make_workdir(ctx.cwd, config)
    return ["snakemake", "results/data/tasks/rt_big"], "results/data/tasks/rt_big"


def delete(mapping: dict, key: str) -> None:
    del mapping[key]


ONE_CLASS = [(f"text {i}", "pos") for i in range(40)]
CASES = [
    # config: Snakemake validates the study before anything runs
    Case("config-unknown-key", config_error(lambda c: c.update(learning_rate=1)), ["study.yaml", "'learning_rate'"]),
    Case(
        "config-wrong-type",
        config_error(lambda c: c["finetune"].update(epochs="three")),
        ["study.yaml: finetune.epochs", "'three' is not of type"],
    ),
    Case(
        "config-unknown-method-kind",
        config_error(lambda c: c["methods"]["full"].update(kind="fancy")),
        ["methods.full.kind", "'fancy'", "known kinds: full, head, lora, adalora, ia3, prefix, prompt, adapter"],
    ),
    Case(
        "config-method-name-not-a-kind",
        config_error(lambda c: c["methods"].update(qlora={}), "-n"),
        ["study.yaml: methods.qlora:", "'qlora' is not a method kind", "full, head, lora"],
    ),
    Case("config-key-given-twice", finetune_epochs_twice, ["study.yaml: line ", ": key 'epochs' given twice"]),
    Case(
        "config-unknown-variant-stage",
        config_error(lambda c: c["variants"].update(mlm=["mlm:imdb"])),
        ["variants.mlm[0]", "'mlm:imdb' is not a pretraining stage"],
    ),
    Case(
        "config-unknown-corpus",
        config_error(lambda c: c["variants"].update(wiki=["dapt:wiki"])),
        ["variants.wiki[0]", "unknown corpus 'wiki'"],
    ),
    Case("config-missing-section", config_error(lambda c: delete(c, "tasks")), ["'tasks' is a required property"]),
    Case(
        "config-max-length-too-small",
        config_error(lambda c: c["tasks"]["rt_polarity"].update(max_length=4)),
        ["tasks.rt_polarity.max_length", "minimum of 8"],
    ),
    Case(
        "config-carve-larger-than-data",
        carve_too_much_in_snakemake,
        ["tasks.rt_big.carve.test", "5000 rows but only 400"],
        snakemake_job=True,
    ),
    # data files
    Case("data-missing-file", task_file("nowhere.csv"), ["tasks.t.source.path", "nowhere.csv does not exist"]),
    Case("data-empty-file", task_file("d.csv", b""), ["d.csv", "empty"]),
    Case("data-header-only", task_file("d.csv", b"sentence,sentiment\n"), ["d.csv", "no rows"]),
    Case(
        "data-missing-column",
        task_file("d.csv", rows=balanced(40), columns={"text": "body", "label": "sentiment"}),
        ["tasks.t.source.columns.text", "no column 'body'"],
    ),
    Case(
        "data-column-out-of-range",
        task_file("d.csv", rows=balanced(40), columns={"text": 7, "label": "sentiment"}),
        ["tasks.t.source.columns.text", "out of range"],
    ),
    Case(
        "data-not-utf8",
        task_file("d.csv", "sentence,sentiment\ncaf\xe9,pos\n".encode("latin-1")),
        ["d.csv", "not valid utf-8", "encoding"],
    ),
    Case("data-empty-texts", task_file("d.csv", rows=[("  ", "pos"), *balanced(39)]), ["d.csv", "empty text"]),
    Case("data-one-class", task_file("d.csv", rows=ONE_CLASS), ["tasks.t.source.columns.label", "single class"]),
    Case(
        "data-test-labels-unseen",
        two_sources(balanced(40), [("x", "pos"), ("y", "neutral")]),
        ["tasks.t.sources.test.columns.label", "'neutral'"],
    ),
    Case(
        "data-duplicate-ids",
        task_file(
            "d.jsonl",
            "".join(
                json.dumps({"id": i % 30, "sentence": f"t{i}", "sentiment": i % 2}) + "\n" for i in range(40)
            ).encode(),
        ),
        ["d.jsonl", "10 duplicate ids"],
    ),
    # downloads
    Case("download-http-404", url_task("/missing.csv", None, sha256="0" * 64), ["tasks.t.source.url", "HTTP 404"]),
    Case(
        "download-timeout",
        url_task("/slow.csv", RT_BYTES),
        ["tasks.t.source.url", "no answer", "0.3 s"],
        env={"DAPT_DOWNLOAD_TIMEOUT_S": "0.3"},
    ),
    Case(
        "download-sha256-mismatch",
        url_task("/changed.csv", RT_BYTES, sha256="0" * 64),
        ["tasks.t.source.sha256", f"has sha256 {sha(RT_BYTES)}"],
    ),
    Case(
        "download-without-sha256",
        url_task("/unpinned.csv", RT_BYTES, sha256=None),
        ["tasks.t.source.sha256", "allow_unverified"],
    ),
    Case(
        "download-truncated-archive",
        url_task("/cut.tar.gz", tar_gz({"pkg/rt.csv": RT_BYTES, "pkg/more.csv": RT_BYTES})[:-4000], "pkg/rt.csv"),
        ["cut.tar.gz", "truncated or corrupt"],
    ),
    Case(
        "download-archive-dotdot",
        url_task("/dotdot.tar.gz", tar_gz({"pkg/rt.csv": RT_BYTES, "../evil.csv": b"x"}), "pkg/rt.csv"),
        ["dotdot.tar.gz", "refusing archive entry '../evil.csv'"],
    ),
    Case(
        "download-archive-escaping-link",
        url_task("/link.tar.gz", tar_gz({"pkg/rt.csv": RT_BYTES}, {"pkg/up": "../../outside"}), "pkg"),
        ["link.tar.gz", "refusing link 'pkg/up'"],
    ),
    # models
    Case(
        "model-missing-folder",
        lambda ctx: prepare_model(ctx, "no/such/model"),
        ["models.m.source.path", "does not exist"],
    ),
    Case(
        "model-corrupt-safetensors",
        damaged_model(lambda d: truncate(d / "model.safetensors")),
        ["damaged", "model.safetensors is not a readable safetensors file"],
    ),
    Case(
        "model-pickle-weights-only",
        damaged_model(lambda d: os.replace(d / "model.safetensors", d / "pytorch_model.bin")),
        ["damaged", "no *.safetensors weights", "pytorch_model.bin"],
    ),
    Case(
        "model-tokenizer-does-not-fit",
        damaged_model(grow_tokenizer),
        ["damaged", "tokenizer has 30534 tokens but the model only 30522 embedding rows"],
    ),
    # training
    Case("train-max-length-beyond-the-model", overlong_tokenize, ["tasks.rt_polarity.max_length", "512 positions"]),
    Case("train-loss-diverges", diverging_finetune, ["finetune full", "loss is nan", "lower lr"]),
]


# --------------------------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    server = Server()
    yield server
    server.httpd.shutdown()


@pytest.fixture(scope="module")
def earlier_results(reliability_inputs, tmp_path_factory) -> Path:
    """Results of good earlier jobs: a task prepared by the script (where the data cases write), the
    prepared model, task and tokenized task."""
    folder = tmp_path_factory.mktemp("earlier")
    spec = {"source": local(RT_SAMPLE, columns=RT_COLUMNS), "carve": {"test": 40}}
    proc = subprocess.run(prepare_task(spec)[0], cwd=folder, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for path in (MODEL, TOKENIZED, "results/data/tasks/rt_polarity"):
        shutil.copytree(reliability_inputs / path, folder / path)
    return folder


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file that counts as a result: all but Snakemake's own records, download cache, checkpoints."""
    skip = (".snakemake", CACHE, "results/checkpoints", "results/logs", "results/benchmarks")
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size, p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file() and not str(p.relative_to(root)).startswith(skip)
    }


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_in_one_line_and_writes_nothing(case, tmp_path, server, earlier_results, reliability_inputs):
    assert len(CASES) >= 25
    shutil.copytree(earlier_results, tmp_path, dirs_exist_ok=True)
    command, output = case.make(Ctx(tmp_path, server, reliability_inputs))
    before = snapshot(tmp_path)
    env = {**os.environ, **case.env}
    if command[0] == "snakemake":
        proc = run_snakemake(tmp_path, *command[1:], env=case.env)
    else:
        proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)

    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr
    if case.snakemake_job:  # Snakemake names the rule and log and, with show-failed-logs, prints the line
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error: ")]
        assert len(lines) == 1, proc.stdout + proc.stderr
        log = next((tmp_path / "results/logs").rglob("*.log")).read_text().strip().splitlines()
        assert log[-1] == lines[0]
    else:
        lines = proc.stderr.strip().splitlines()
        assert lines and lines[-1].startswith("error: "), proc.stderr[-3000:]
    error = lines[-1]
    for part in case.expect:
        assert part in error, f"{part!r} not in {error!r}"

    assert snapshot(tmp_path) == before  # no new file, partial or whole; earlier results untouched (bytes, mtimes)
    out = tmp_path / output
    if not any(k == output or k.startswith(output + "/") for k in before):
        assert not out.exists()  # not even an empty folder
    assert not (out.parent.exists() and list(out.parent.glob(f".{out.name}.*")))  # no temporaries
    print(error)


def test_problems_that_are_not_errors_are_counted_in_log_metrics_and_report(clean_run, reliability_inputs):
    """Texts longer than max_length are truncated, texts in two splits kept: counted, logged, reported."""
    stats = json.loads((reliability_inputs / TOKENIZED / "stats.json").read_text())
    truncated = {split: stats[split]["truncated"] for split in ("train", "validation", "test")}
    assert truncated["train"] > 0 and stats["texts_shared_across_splits"] == {
        "test_in_train": 0,
        "test_in_validation": 0,
        "validation_in_train": 0,
    }
    log = (reliability_inputs / "results/logs/tokenize_task/tiny/rt_polarity.L48.log").read_text()
    assert (
        f"warning: {truncated['train']} of {stats['train']['examples']} train texts are longer than 48 tokens "
        "and were truncated (tasks.rt_polarity.max_length)"
    ) in log
    assert (
        "texts shared across splits: {"
        in (reliability_inputs / "results/logs/prepare_task/rt_polarity.log").read_text()
    )
    metrics = json.loads((clean_run / "results/evaluate/rt_polarity/tiny/dapt/full/seed1/metrics.json").read_text())
    assert (
        metrics["truncated"] == truncated
        and metrics["texts_shared_across_splits"] == stats["texts_shared_across_splits"]
    )
    notes = (clean_run / "results/report/notes.md").read_text()
    row = f"| rt_polarity | {truncated['train']} | {truncated['validation']} | {truncated['test']} | test_in_train: 0"
    assert "Data caveats" in notes and row in notes
