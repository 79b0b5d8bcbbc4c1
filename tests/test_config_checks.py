"""Mistakes the config already decides are refused when it is read, before any download or training,
in one line naming the key (each of these once failed late, ran away or trained the same runs twice)."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, tiny_config

from dapt.core.errors import UserError
from dapt.study import config as study
from dapt.study import grid


def checked(config: dict) -> None:
    study.validate_config(config, "study.yaml")


def refusal(change) -> str:
    config = copy.deepcopy(tiny_config())
    change(config)
    with pytest.raises(UserError) as err:
        checked(config)
    return str(err.value)


def test_the_tiny_config_passes():
    checked(copy.deepcopy(tiny_config()))


def test_sweep_values_equal_in_value_but_not_in_type_are_refused():
    """`epochs: [1, 1.0]` named two run folders (epochs1, epochs1.0) that trained identically."""

    def change(c):
        c["methods"]["full"]["epochs"] = [1, 1.0]

    msg = refusal(change)
    assert "methods.full.epochs[1]" in msg and "1.0 equals 1" in msg and "\n" not in msg
    config = copy.deepcopy(tiny_config())
    config["methods"]["full"]["epochs"] = [1, 2.5]  # different values stay a sweep
    checked(config)
    assert {r["method"] for r in grid.runs(config)} >= {"full-epochs1", "full-epochs2.5"}


def test_knn_k_above_the_corpus_max_docs_is_refused():
    def change(c):
        c["corpora"]["imdb"]["max_docs"] = 20
        c["variants"]["knn"] = ["tapt_knn:imdb:50"]
        c["pretrain"]["tapt_knn"] = dict(c["pretrain"]["tapt"])

    msg = refusal(change)
    assert "variants.knn[0]" in msg and "k 50" in msg and "20 documents" in msg and "k <= 20" in msg


def test_more_shards_than_max_docs_is_refused():
    def change(c):
        c["corpora"]["imdb"].update(max_docs=4, shards=8)

    msg = refusal(change)
    assert "corpora.imdb.shards" in msg and "shards <= 4" in msg


def test_n_aug_is_bounded_with_an_estimate():
    def change(c):
        c["tasks"]["rt_polarity"]["max_examples"] = {"train": 1000}
        c["methods"]["full"]["augment"] = {"ops": ["swap"], "n_aug": 100000}

    msg = refusal(change)
    assert "methods.full.augment.n_aug" in msg and "100,000,000 augmented rows for 1,000 training examples" in msg
    config = copy.deepcopy(tiny_config())
    config["methods"]["full"]["augment"] = {"ops": ["swap"], "n_aug": 16}
    checked(config)


def test_more_shards_than_documents_fails_at_prepare_and_writes_nothing(tmp_path):
    """Without max_docs the count is known only once the corpus is read: prepare_corpus refuses then,
    before any shard job could start (they used to fail one by one, leaving the others' folders)."""
    from dapt.data.prepare import prepare_corpus

    docs = pd.read_json(REPO / "tests/data/imdb_sample.jsonl", lines=True).head(3)
    src = tmp_path / "docs.jsonl"
    docs.to_json(src, orient="records", lines=True)
    spec = {"source": {"kind": "local", "path": str(src), "columns": {"text": "review"}}, "shards": 5}
    out = tmp_path / "corpus.parquet"
    with pytest.raises(UserError) as err:
        prepare_corpus(spec, "imdb", out, tmp_path / "cache")
    assert "corpora.imdb.shards" in str(err.value) and "5 shards for 3 documents" in str(err.value)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith("corpus")]


def test_a_pretraining_key_nothing_reads_is_refused():
    """`pretrain.<kind>.max_docs` was accepted and silently ignored: the corpus's own max_docs caps it."""

    def change(c):
        c["pretrain"]["dapt"]["max_docs"] = 10

    msg = refusal(change)
    assert "pretrain.dapt" in msg and "max_docs" in msg


def test_an_alias_inside_its_own_anchor_is_one_line(tmp_path):
    """`a: &x {b: *x}` is valid YAML for a value that contains itself; every later reader recursed forever."""
    from dapt.core.strict_yaml import read_yaml

    path = tmp_path / "study.yaml"
    path.write_text("seeds: [1]\nmodels: &m\n  tiny: *m\n")
    with pytest.raises(UserError) as err:
        read_yaml(path)
    assert f"{path}: models.tiny" in str(err.value) and "alias" in str(err.value)


def _snakemake(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "snakemake"
    snakefile = ["-s", str(REPO / "Snakefile")] if Path(cwd) != REPO else []
    return subprocess.run([str(exe), "-n", *snakefile, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "text, expect",
    [
        ("seeds: [1]\nmodels:\n\ttiny: {}\n", "line 3: not valid YAML: found character '\\t'"),
        ("seeds: [1]\nmodels: *nowhere\n", "line 2: not valid YAML: found undefined alias 'nowhere'"),
        ("seeds: [1]\nmodels: &m\n  tiny: *m\n", "models.tiny: an alias refers to the mapping or list that holds it"),
    ],
    ids=["tab", "undefined-alias", "recursive-alias"],
)
def test_a_configfile_yaml_mistake_is_the_projects_one_line(tmp_path, text, expect):
    """Snakemake parses --configfile before the workflow runs: the guard setup.sh installs reads it first
    (Snakemake's own message named neither file nor line; the recursive alias was a 40-line RecursionError)."""
    import sysconfig

    pth = Path(sysconfig.get_paths()["purelib"]) / "dapt_config_guard.pth"
    assert pth.exists(), "run ./setup.sh: it installs the --configfile guard"
    path = tmp_path / "study.yaml"
    path.write_text(text)
    proc = _snakemake("--configfile", str(path))
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith(f"error: {path}: {expect}"), proc.stderr


def test_a_config_override_error_blames_config_not_the_file():
    proc = _snakemake("--config", "seeds=[1,")
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and last.startswith("error: --config: seeds:"), proc.stderr[-2000:]
    proc = _snakemake("--config", "seeds=[1, 2]", "finetune={'epochs': 'x'}")
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --config: finetune.epochs:"), proc.stderr[-2000:]


def test_a_method_the_model_cannot_take_stops_the_study_before_tokenizing(tmp_path):
    """check_model runs right after the model is stored: LoRA targets that name no module of the model stop
    the study there, in one line naming the model, the method and what to set; nothing is tokenized or
    pretrained (every later step waits on the check)."""
    from conftest import make_workdir, run_snakemake

    config = copy.deepcopy(tiny_config())
    config["methods"]["lora"]["target_modules"] = ["no_such_projection"]
    work = make_workdir(tmp_path / "study", config)
    proc = run_snakemake(work, "--cores", "1")
    assert proc.returncode != 0
    log = (work / "results/logs/check_model/tiny.log").read_text().strip().splitlines()
    assert log[-1].startswith("error: ") and "tiny" in log[-1] and "lora" in log[-1] and "target_modules" in log[-1]
    assert not (work / "results/models/tiny.checked.json").exists()
    assert not list(work.glob("results/tokenized/*")) and not list(work.glob("results/pretrain/*"))


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_compressed_file_named_as_text_is_told_so_not_to_change_the_encoding(tmp_path, fmt):
    """A gzip file named .csv used to get the hint `set encoding: latin-1`, which cannot help."""
    import gzip

    from dapt.data.prepare import prepare_task

    data = tmp_path / f"rt.{fmt}"
    rows = "".join(f"text {i},{'pos' if i % 2 else 'neg'}\n" for i in range(40))
    body = ("sentence,sentiment\n" + rows) if fmt == "csv" else rows
    data.write_bytes(gzip.compress(body.encode()))
    spec = {"source": {"kind": "local", "path": str(data), "columns": {"text": "sentence", "label": "sentiment"}}}
    with pytest.raises(UserError) as err:
        prepare_task({**spec, "carve": {"test": 10, "validation": 10}}, "t", tmp_path / "out", 0, tmp_path / "c")
    msg = str(err.value)
    assert "gzip-compressed" in msg and "encoding" not in msg.split("(")[0] and "latin-1" not in msg


def test_a_learning_curve_size_above_the_training_split_stops_the_data_step(tmp_path):
    """Without a cap in the config the split's size is known once the data is read: the data step refuses a
    larger curve size there, writing nothing (it used to fail in fine-tuning, after tokenization and DAPT)."""
    from dapt.data.prepare import prepare_task

    spec = {
        "source": {"kind": "local", "path": str(REPO / "tests/data/rt_sample.csv"), "columns": RT},
        "carve": {"test": 100, "validation": 60},
    }
    out = tmp_path / "t"
    with pytest.raises(UserError) as err:
        prepare_task(spec, "rt", out, 0, tmp_path / "c", ([50, 5000], "train_sizes"))
    msg = str(err.value)
    assert msg.startswith("train_sizes: a learning-curve size of 5000 is more than the") and "use sizes <=" in msg
    assert not out.exists()
    assert prepare_task(spec, "rt", out, 0, tmp_path / "c", ([50, 200], "train_sizes"))["rows"]["train"] >= 200


def test_the_data_rule_hands_a_learning_curve_to_the_data_step():
    config = copy.deepcopy(tiny_config())
    config["train_sizes"] = [40, 120]
    work = make_workdir_for(config)
    proc = _snakemake("--configfile", str(work / "study.yaml"), "-p", "results/data/tasks/rt_polarity", cwd=work)
    assert "--train-sizes 40,120 --sizes-key train_sizes" in proc.stdout + proc.stderr, proc.stderr[-3000:]
    work = make_workdir_for(tiny_config())
    plain = _snakemake("--configfile", str(work / "study.yaml"), "-p", "results/data/tasks/rt_polarity", cwd=work)
    assert "prepare_data.py --kind task" in plain.stdout + plain.stderr
    assert "--train-sizes" not in plain.stdout + plain.stderr


RT = {"text": "sentence", "label": "sentiment"}


def make_workdir_for(config: dict) -> Path:
    import tempfile

    from conftest import make_workdir

    return make_workdir(Path(tempfile.mkdtemp(prefix="curve-")), config)


def test_fp16_where_jobs_run_on_a_machine_without_a_gpu_is_refused_when_the_config_is_read():
    """It used to fail in the first training job, after the data, tokenization and model steps."""
    env = {k: v for k, v in os.environ.items() if k not in ("DAPT_GPU_IDS", "CUDA_VISIBLE_DEVICES")}
    env["PATH"] = str(Path(sys.executable).parent) + ":/usr/bin:/bin"  # no nvidia-smi here either way
    exe = Path(sys.executable).parent / "snakemake"
    proc = subprocess.run([str(exe), "-n", "--config", "precision=fp16"], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip
    if shutil.which("nvidia-smi", path=env["PATH"]):
        pytest.skip("this machine has nvidia-smi")
    last = proc.stderr.strip().splitlines()[-1]
    assert (
        proc.returncode == 2 and last.startswith("error: --config: precision: fp16 needs a GPU") and "use auto" in last
    )
    faked = subprocess.run([str(exe), "-n", "--config", "precision=fp16"], cwd=REPO, capture_output=True, text=True,
                           env={**env, "DAPT_GPU_IDS": "0"}, timeout=120)  # fmt: skip
    assert faked.returncode == 0, faked.stderr[-2000:]
