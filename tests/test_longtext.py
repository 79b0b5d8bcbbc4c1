"""Long documents (`tasks.<t>.long_text`, dapt/tokenize/longtext.py): head+tail cuts, sliding windows, pooling.

The cuts are checked on real WordPiece ids (MiniLM's tokenizer); pooling and per-document scoring on a
tiny randomly initialised BERT, on "reviews" made by joining sentences of tests/data/rt_sample.csv of
one label (about 100-200 tokens each, so a document has several windows of 32 tokens).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, SNAKEMAKE, minilm_dir, rt_reviews, tiny_base, tiny_config, write_tokenized_task

from dapt.core.errors import UserError
from dapt.data.model_store import load_tokenizer
from dapt.study import config as study
from dapt.study import defaults, layout
from dapt.tokenize import longtext

MAX_LENGTH, STRIDE, CAP = 32, 16, 4
WINDOWS = {"strategy": "windows", "stride": STRIDE, "pool": "mean", "max_windows": CAP}
TRAIN = {
    "epochs": 1,
    "batch_size": 8,
    "eval_batch_size": 16,
    "grad_accum": 1,
    "lr": 3e-3,
    "weight_decay": 0.0,
    "warmup_ratio": 0.0,
    "patience": 5,
    "max_grad_norm": 1.0,
    "save_steps": 4,
    "kind": "full",
    "metric": "macro_f1",
    "max_length": MAX_LENGTH,
}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(minilm_dir())


def _review(n_words: int) -> str:
    return " ".join(f"w{i}" for i in range(n_words))  # each word: several WordPieces, all distinct in order


# --- the cuts ---------------------------------------------------------------------------------------


def test_head_tail_keeps_the_head_the_tail_and_the_special_tokens(tok):
    from dapt.tokenize.tasks import tokenize_examples

    assert longtext.special_counts(tok) == (1, 1)
    text = _review(80)
    body = tok(text, add_special_tokens=False)["input_ids"]
    assert len(body) > 3 * MAX_LENGTH
    head = 5
    table, stats = tokenize_examples(
        ["a", "b"], [text, "short"], [1, 0], tok, MAX_LENGTH, {"strategy": "head_tail", "head": head}
    )
    long, short = table.column("input_ids").to_pylist()
    tail = MAX_LENGTH - 2 - head
    assert long == [tok.cls_token_id, *body[:head], *body[-tail:], tok.sep_token_id]
    assert short == tok("short")["input_ids"]  # what fits is not cut
    assert stats["truncated"] == 1 and stats["examples"] == 2
    assert json.loads(table.schema.metadata[b"dapt.long_text"]) == {"strategy": "head_tail", "head": head}
    # head: the first tokens and the closing [SEP], exactly the cut of before long_text existed
    plain, _ = tokenize_examples(["a"], [text], [1], tok, MAX_LENGTH)
    full = tok(text)["input_ids"]
    assert plain.column("input_ids").to_pylist()[0] == full[: MAX_LENGTH - 1] + full[-1:]
    assert plain.schema.metadata is None  # head files are as they were


@pytest.mark.parametrize("n, window, stride", [(1, 8, 4), (8, 8, 4), (9, 8, 4), (50, 8, 3), (50, 8, 8), (97, 30, 16)])
def test_windows_cover_every_token_with_the_given_stride(n, window, stride):
    cls, sep = 101, 102
    body = list(range(1000, 1000 + n))
    rows, dropped = longtext.windows([cls, *body, sep], window + 2, stride, None, (1, 1))
    assert dropped == 0
    assert all(r[0] == cls and r[-1] == sep and len(r) <= window + 2 for r in rows)
    starts = [body.index(r[1]) for r in rows]
    assert starts == list(range(0, stride * len(rows), stride))  # one every `stride` tokens
    assert all(r[1:-1] == body[s : s + window] for r, s in zip(rows, starts))
    assert sorted({t for r in rows for t in r[1:-1]}) == body  # every token in some window
    assert starts[-1] + window >= n and (len(rows) == 1 or starts[-2] + window < n)  # no window too many


def test_the_window_cap_keeps_evenly_spaced_windows_first_and_last_included():
    body = list(range(1000, 1100))
    every, _ = longtext.windows([101, *body, 102], 12, 5, None, (1, 1))
    kept, dropped = longtext.windows([101, *body, 102], 12, 5, 4, (1, 1))
    assert len(every) == 19 and dropped == 15 and len(kept) == 4
    assert kept[0] == every[0] and kept[-1] == every[-1] and kept == [every[i] for i in (0, 6, 12, 18)]


def test_windowed_split_round_trips_with_its_documents(tok, tmp_path):
    import pyarrow.parquet as pq

    from dapt.tokenize.tasks import read_examples, tokenize_examples

    texts = [_review(60), "short one", _review(25)]
    table, stats = tokenize_examples(["x", "y", "z"], texts, [1, 0, 1], tok, MAX_LENGTH, WINDOWS)
    pq.write_table(table, tmp_path / "test.parquet")
    ex = read_examples(tmp_path / "test.parquet")
    n_rows = [len(longtext.windows(tok(t)["input_ids"], MAX_LENGTH, STRIDE, CAP, (1, 1))[0]) for t in texts]
    assert ex["id"] == ["x"] * n_rows[0] + ["y"] + ["z"] * n_rows[2] and n_rows[0] == CAP and n_rows[2] > 1
    assert ex["doc"].tolist() == [0] * n_rows[0] + [1] + [2] * n_rows[2]
    assert ex["label"].tolist() == [1] * n_rows[0] + [0] + [1] * n_rows[2] and ex["pool"] == "mean"
    assert stats["examples"] == 3 and stats["windows"] == sum(n_rows) and stats["truncated"] == 1
    assert longtext.n_documents(ex) == 3 and max(len(r) for r in ex["input_ids"]) == MAX_LENGTH


# --- pooling and per-document scores ----------------------------------------------------------------


def _tiny_classifier(tok, root: Path) -> Path:
    return tiny_base(root, tok)


@pytest.fixture(scope="module")
def long_task(tok, tmp_path_factory) -> tuple[Path, Path]:
    """(tiny base model, task tokenized into windows): 'reviews' of 6-14 sentences of one label."""

    root = tmp_path_factory.mktemp("longtext")
    base = _tiny_classifier(tok, root)
    docs = rt_reviews()
    tokenized = write_tokenized_task(
        root,
        {"train": docs[:24], "validation": docs[24:32], "test": docs[32:44]},
        ["neg", "pos"],
        base,
        MAX_LENGTH,
        "tasks.reviews.max_length",
        WINDOWS,
    )
    return base, tokenized


@pytest.fixture(scope="module")
def runtime():
    from dapt.runtime.context import setup_runtime

    torch.set_num_threads(1)
    return setup_runtime(0, "fp32", threads=1)


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_pooling_equals_the_documents_probabilities_computed_by_hand(long_task, runtime, pool):
    from dapt.finetune.evaluation import predict_proba
    from dapt.finetune.methods import load_classifier
    from dapt.tokenize.tasks import read_examples

    base, tokenized = long_task
    test = {**read_examples(tokenized / "test.parquet"), "pool": pool}
    torch.manual_seed(1)
    model = load_classifier(str(base), ["neg", "pos"]).eval()
    ids, gold, probs = longtext.per_document(test, predict_proba(model, test["input_ids"], 0, runtime, 16))
    assert len(ids) == len(set(ids)) == 12 and len(test["id"]) > 24  # several windows per document
    for d, doc_id in enumerate(ids):  # by hand: each window alone, unpadded, then the pool
        rows = [r for r, i in enumerate(test["id"]) if i == doc_id]
        with torch.no_grad():
            window_probs = np.stack(
                [
                    torch.softmax(model(input_ids=torch.from_numpy(test["input_ids"][r])[None]).logits[0], -1).numpy()
                    for r in rows
                ]
            )
        expected = window_probs.mean(0) if pool == "mean" else window_probs.max(0) / window_probs.max(0).sum()
        assert probs[d] == pytest.approx(expected, abs=1e-5)
        assert gold[d] == test["label"][rows[0]]


def test_validation_metrics_and_predictions_are_per_document(long_task, runtime, tmp_path):
    from dapt.finetune.evaluation import evaluate_run, predict_proba
    from dapt.finetune.fine_tuning import finetune
    from dapt.finetune.methods import load_finetuned
    from dapt.finetune.metrics import compute_metrics
    from dapt.tokenize.tasks import read_examples

    base, tokenized = long_task
    summary = finetune(str(base), str(tokenized), str(tmp_path / "run"), str(tmp_path / "ckpt"), TRAIN, 1, runtime)
    train = read_examples(tokenized / "train.parquet")
    assert summary["n_train"] == 24 and summary["train_rows"] == len(train["id"]) > 48
    assert summary["n_validation"] == 8 and summary["long_text"] == WINDOWS
    assert summary["train_steps"] == -(-len(train["id"]) // TRAIN["batch_size"])  # every window trains

    # validation scored the pooled documents: the kept (only) epoch's model gives the same score
    model, pad_id = load_finetuned(str(tmp_path / "run" / "model"), str(base), ["neg", "pos"])
    val = read_examples(tokenized / "validation.parquet")
    _, gold, probs = longtext.per_document(val, predict_proba(model, val["input_ids"], pad_id, runtime, 16))
    assert len(gold) == 8 and summary["best_validation"] == pytest.approx(
        compute_metrics(gold, probs.argmax(1), ["neg", "pos"])["macro_f1"], abs=1e-9
    )

    metrics = evaluate_run(
        str(tmp_path / "run" / "model"),
        str(base),
        str(tokenized),
        str(tmp_path / "run" / "train.json"),
        str(tmp_path / "metrics.json"),
        str(tmp_path / "predictions.csv"),
        runtime,
        {},
        16,
    )
    test = read_examples(tokenized / "test.parquet")
    pred = pd.read_csv(tmp_path / "predictions.csv")
    assert list(pred["id"]) == list(dict.fromkeys(test["id"])) and len(pred) == metrics["n_test"] == 12
    assert metrics["test_rows"] == len(test["id"]) > 24
    labels = ["neg", "pos"]
    gold = pred["gold"].map(labels.index).to_numpy()
    assert (pred["predicted"] == np.where(pred["p_pos"] > pred["p_neg"], "pos", "neg")).all()
    assert (pred[["p_neg", "p_pos"]].sum(axis=1) - 1).abs().max() < 1e-5
    scores = compute_metrics(gold, pred["predicted"].map(labels.index).to_numpy(), labels)
    assert metrics["macro_f1"] == scores["macro_f1"] and metrics["accuracy"] == scores["accuracy"]
    assert json.loads((tmp_path / "metrics.json").read_text())["long_text"] == WINDOWS


def test_a_windowed_run_killed_mid_epoch_resumes_to_the_same_weights(long_task, runtime, tmp_path, monkeypatch, capsys):
    import dapt.finetune.fine_tuning as ft

    base, tokenized = long_task
    ft.finetune(str(base), str(tokenized), str(tmp_path / "clean"), str(tmp_path / "ckpt1"), TRAIN, 1, runtime)
    original, calls = ft.FineTuning.train_step, []

    def killed_after_six(self, idx):
        if len(calls) == 6:
            raise KeyboardInterrupt
        calls.append(1)
        return original(self, idx)

    monkeypatch.setattr(ft.FineTuning, "train_step", killed_after_six)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(str(base), str(tokenized), str(tmp_path / "resumed"), str(tmp_path / "ckpt2"), TRAIN, 1, runtime)
    monkeypatch.setattr(ft.FineTuning, "train_step", original)
    assert any((tmp_path / "ckpt2").iterdir())  # a checkpoint at step 4 was left
    capsys.readouterr()
    ft.finetune(str(base), str(tokenized), str(tmp_path / "resumed"), str(tmp_path / "ckpt2"), TRAIN, 1, runtime)
    assert "resumed from checkpoint at step 4/" in capsys.readouterr().out
    for name in ("model/model.safetensors", "log.csv"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name


def test_predict_reads_a_long_text_as_its_task_did(long_task, tok, tmp_path):
    """dapt.deploy.predict on an exported folder: windows pooled into one row per text, as in evaluation."""
    from transformers import AutoModelForSequenceClassification

    from dapt.deploy.predict import Predictor

    base, _ = long_task
    torch.manual_seed(2)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base), num_labels=2, id2label={0: "neg", 1: "pos"}
    ).eval()
    model.save_pretrained(tmp_path / "export")
    tok.save_pretrained(tmp_path / "export")
    texts = [_review(40), "a short one", _review(12)]
    probs = Predictor(str(tmp_path / "export"), 1, MAX_LENGTH, WINDOWS).predict_proba(texts, batch_size=3)
    assert probs.shape == (3, 2)
    for text, p in zip(texts, probs):
        rows, _ = longtext.windows(tok(text)["input_ids"], MAX_LENGTH, STRIDE, CAP, (1, 1))
        with torch.no_grad():
            each = np.stack([torch.softmax(model(input_ids=torch.tensor([r])).logits[0], -1).numpy() for r in rows])
        assert p == pytest.approx(each.mean(0), abs=1e-5)


@pytest.mark.slow
def test_a_windowed_task_trains_alike_in_two_processes(long_task, tmp_path):
    """Data parallel (tests/test_ddp.py's launch and tolerances): the windows are rows like any other.

    Weights: test_ddp's tolerances are for its std-0.02 model at lr 1e-3; this model (std 0.2, lr 3e-3)
    ends with weights up to 5.8e-5 apart (word embeddings, measured), so they are held to a tenth of one
    Adam step (lr). The attention key biases are held to lr per step only: their gradient is zero in
    exact arithmetic (a bias on the keys shifts every score of a query alike, which softmax ignores)
    and ~1e-8 here, Adam's epsilon, so Adam turns the runs' different rounding into steps of up to lr.
    A rank that trained on the wrong rows would be a whole step apart after the first update."""
    from safetensors.torch import load_file
    from test_ddp import LOSS_RTOL, SCORE_ATOL, run_script

    base, tokenized = long_task
    args = ["--base", str(base), "--tokenized", str(tokenized), "--params", json.dumps(TRAIN)]
    run_script("finetune.py", tmp_path / "one", 1, args)
    run_script("finetune.py", tmp_path / "two", 2, args)
    one, two = (pd.read_csv(tmp_path / d / "log.csv") for d in ("one", "two"))
    assert two["train_loss"].to_numpy() == pytest.approx(one["train_loss"].to_numpy(), rel=LOSS_RTOL)
    assert two["val_macro_f1"].to_numpy() == pytest.approx(one["val_macro_f1"].to_numpy(), abs=SCORE_ATOL)
    w1, w2 = (load_file(str(tmp_path / d / "model" / "model.safetensors")) for d in ("one", "two"))
    steps = int(one["step"].iloc[-1])
    for name in w1:
        diff = (w1[name] - w2[name]).abs()
        if name.endswith("attention.self.key.bias"):
            assert diff.max() <= 2 * TRAIN["lr"] * steps, name
        else:
            assert diff.max() <= TRAIN["lr"] / 10, (name, diff.max().item())
    t2 = json.loads((tmp_path / "two" / "train.json").read_text())
    assert t2["world_size"] == 2 and t2["n_train"] == 24 and t2["n_validation"] == 8


# --- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "long_text, key, words",
    [
        ({"strategy": "windows", "stride": 48}, "stride", "not below the window (max_length 48)"),
        ({"strategy": "windows", "stride": 60}, "stride", "not below the window"),
        ({"strategy": "head_tail", "head": 50}, "head", "not below max_length 48"),
        ({"strategy": "middle"}, "strategy", "'middle' is not one of"),
        ({"strategy": "windows", "pool": "median"}, "pool", "'median' is not one of"),
        ({"strategy": "windows", "max_windows": 0}, "max_windows", "less than the minimum"),
        ({"strategy": "head_tail", "stride": 8}, "stride", "applies to strategy windows, not head_tail"),
        ({"head": 8}, "head", "applies to strategy head_tail, not head"),
    ],
)
def test_bad_long_text_values_are_one_line_config_errors(long_text, key, words):
    config = tiny_config()
    config["tasks"]["rt_polarity"]["long_text"] = long_text
    with pytest.raises(UserError) as err:
        study.validate_config(config, "study.yaml")
    message = str(err.value)
    assert message.startswith(f"study.yaml: tasks.rt_polarity.long_text.{key}: ") and words in message, message
    assert "\n" not in message


def test_a_head_or_stride_beyond_the_room_beside_the_special_tokens_is_refused_at_tokenization():
    longtext.check_settings({"strategy": "head_tail", "head": 46}, 48, (1, 1), "tasks.t.long_text")
    longtext.check_settings({"strategy": "windows", "stride": 46}, 48, (1, 1), "tasks.t.long_text")
    for settings, key in (
        ({"strategy": "head_tail", "head": 47}, "head"),
        ({"strategy": "windows", "stride": 47}, "stride"),
    ):
        with pytest.raises(UserError, match=rf"^tasks\.t\.long_text\.{key}: .*use {key} <= 46\)$"):
            longtext.check_settings(settings, 48, (1, 1), "tasks.t.long_text")


def test_defaults_and_cache_paths():
    config = tiny_config()
    task = config["tasks"]["rt_polarity"]
    assert study.long_text_params(config, "rt_polarity") == {"strategy": "head"}
    assert (
        layout.tokenized_task("tiny", "rt_polarity", 48, {"strategy": "head"})
        == "results/tokenized/tiny/tasks/rt_polarity.L48"
    )
    task["long_text"] = {"strategy": "windows"}
    study.validate_config(config)
    settings = study.long_text_params(config, "rt_polarity")
    assert settings == {
        "strategy": "windows",
        "stride": 24,
        "pool": "mean",
        "max_windows": defaults.LONG_TEXT_DEFAULTS["max_windows"],
    }
    assert layout.tokenized_task("tiny", "rt_polarity", 48, settings).endswith(
        f"rt_polarity.L48.windows-s24-n{settings['max_windows']}-mean"
    )
    task["long_text"] = {"strategy": "head_tail"}
    assert study.long_text_params(config, "rt_polarity") == {"strategy": "head_tail", "head": 12}


def test_the_example_study_plans_one_tokenization_per_setting(tmp_path):
    """Dry run of config/examples/long_reviews.yaml: eight tasks (six settings and two controls), tokenized
    folders named by their settings, 24 runs."""
    proc = subprocess.run(
        [
            *SNAKEMAKE,
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(REPO / "config/examples/long_reviews.yaml"),
            "-n",
            "--cores",
            "1",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = proc.stdout + proc.stderr
    counts = {
        line.split()[0]: int(line.split()[1])
        for line in plan.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }
    assert counts["tokenize_task"] == 8 and counts["finetune"] == 24 and counts["evaluate"] == 24, plan[-3000:]
    for folder in (
        "reviews_head_128.L128",
        "reviews_head_tail_256.L256.head_tail-h64",
        "reviews_windows_128.L128.windows-s64-n4-mean",
    ):
        assert re.search(rf"results/tokenized/minilm/tasks/{re.escape(folder)}(,|\s|$)", plan), folder
