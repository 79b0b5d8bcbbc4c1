"""Structured pruning with distillation (deploy.prune; dapt.deploy.prune, dapt.finetune.distill): the pruned
model is a stock transformers classifier of the stated shape and size, importance keeps the neurons that
matter, distillation moves the student toward the teacher, and the workflow measures and tabulates the
pruned formats beside the unpruned ones; a bad prune block is refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_workdir, minilm_dir, rt_examples, run_snakemake, tiny_bert_config, tiny_config

LABELS = ["neg", "pos"]
H, FFN = 32, 64  # the tiny BERT's hidden and feed-forward widths


def layer_params(h: int, i: int) -> int:
    """One BERT layer: Q, K, V, O (weights and biases), two LayerNorms, the feed-forward pair."""
    return 4 * (h * h + h) + 2 * (2 * h) + (h * i + i) + (i * h + h)


@pytest.fixture(scope="module")
def tok():
    from dapt.data.model_store import load_tokenizer

    return load_tokenizer(minilm_dir())


def classifier(tok, layers: int = 4, init: float = 0.2, seed: int = 0):
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = tiny_bert_config(
        tok,
        initializer_range=init,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
        id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)},
    )
    cfg.num_hidden_layers = layers
    return BertForSequenceClassification(cfg).eval()


def save(model, tok, folder):
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def val_split(tok, n: int = 24) -> dict:
    texts = rt_examples()["text"].tolist()[:n]
    ids = [np.array(tok(t, truncation=True, max_length=32)["input_ids"]) for t in texts]
    return {"input_ids": ids, "label": np.arange(n) % 2}


def test_pruned_model_is_a_stock_classifier_of_the_stated_shape_and_size(tok, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from dapt.deploy.measure import shape_of
    from dapt.deploy.prune import n_params, prune_folder

    model = classifier(tok, layers=4)
    src = save(model, tok, tmp_path / "src")
    record = prune_folder(
        src, tmp_path / "pruned", val_split(tok), tok.pad_token_id, {"keep_layers": 2, "ffn_keep": 0.5}
    )
    pruned = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pruned")  # no remote code
    assert type(pruned).__name__ == "BertForSequenceClassification"
    assert pruned.config.num_hidden_layers == 2 and len(pruned.bert.encoder.layer) == 2
    assert pruned.config.intermediate_size == FFN // 2
    expected = n_params(model) - 2 * layer_params(H, FFN) - 2 * (layer_params(H, FFN) - layer_params(H, FFN // 2))
    assert n_params(pruned) == expected == record["after"]["params"]
    assert shape_of(tmp_path / "pruned") == {"layers": 2, "ffn_width": FFN // 2, "params": expected}
    assert record["layers_kept"] == [0, 1]  # the top layers are dropped
    assert np.array(record["importance"]["heads"]).shape == (4, 2)  # measured for every layer and head
    ids = torch.tensor([tok("a fine film")["input_ids"]])
    assert torch.isfinite(pruned(input_ids=ids).logits).all()


def test_importance_keeps_the_neurons_that_matter(tok, tmp_path):
    """Half of each layer's neurons are cut off from the output (their output weights zeroed): they have
    no importance, pruning keeps exactly the others, and the logits do not change."""
    from transformers import AutoModelForSequenceClassification

    from dapt.deploy.prune import importance, prune_folder

    model = classifier(tok, layers=2)
    rng = np.random.default_rng(0)
    alive = []
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            dead = rng.permutation(FFN)[: FFN // 2]
            layer.output.dense.weight[:, dead] = 0.0
            alive.append(sorted(set(range(FFN)) - set(dead.tolist())))
    val = val_split(tok)
    scores = importance(model, val["input_ids"], val["label"], tok.pad_token_id)["ffn"]
    for i, keep in enumerate(alive):
        assert np.all(scores[i, np.setdiff1d(np.arange(FFN), keep)] == 0) and np.all(scores[i, keep] > 0)
    src = save(model, tok, tmp_path / "src")
    record = prune_folder(src, tmp_path / "pruned", val, tok.pad_token_id, {"drop_layers": [], "ffn_keep": 0.5})
    assert record["ffn_kept"] == alive
    pruned = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pruned").eval()
    ids = torch.tensor([tok("an honest, moving film")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(pruned(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)


def test_layers_to_keep_and_models_it_cannot_prune():
    from dapt.core.errors import UserError
    from dapt.deploy.prune import encoder_layers, layers_to_keep

    assert layers_to_keep(6, {"keep_layers": None}) == [0, 1, 2]
    assert layers_to_keep(6, {"keep_layers": 4}) == [0, 1, 2, 3]
    assert layers_to_keep(6, {"drop_layers": [1, 5]}) == [0, 2, 3, 4]
    with pytest.raises(UserError, match="more than the model's 6 layers"):
        layers_to_keep(6, {"keep_layers": 7})
    with pytest.raises(UserError) as err:
        encoder_layers(torch.nn.Linear(2, 2))
    assert "cannot prune a Linear" in str(err.value) and "\n" not in str(err.value)


@pytest.fixture(scope="module")
def teacher_task(tok, tmp_path_factory):
    from conftest import write_tokenized_task

    root = tmp_path_factory.mktemp("distill")
    model = classifier(tok, layers=2, init=0.5, seed=3)
    teacher = save(model, tok, root / "teacher")
    df = rt_examples()
    with torch.no_grad():  # the task's labels are the teacher's: getting closer to it is what validation rewards
        logits = torch.cat(
            [model(**tok(t, truncation=True, max_length=32, return_tensors="pt")).logits for t in df["text"][:140]]
        )
    df = df[:140].assign(label=[LABELS[i] for i in logits.argmax(-1).tolist()])
    tokenized = write_tokenized_task(
        root, {"train": df[:64], "validation": df[64:96], "test": df[96:140]}, LABELS, teacher, 32
    )
    student = save(classifier(tok, layers=1, init=0.2, seed=7), tok, root / "student")
    return teacher, student, tokenized


def kl_teacher_student(teacher_dir, student_dir, tokenized) -> float:
    from dapt.finetune.distill import teacher_logits
    from dapt.finetune.task_data import load_task
    from dapt.runtime.context import setup_runtime

    runtime = setup_runtime(0, "fp32", threads=1)
    data = load_task(tokenized, teacher_dir)
    t = teacher_logits(teacher_dir, data.train["input_ids"], LABELS, data.pad_id, runtime, 64)
    s = teacher_logits(student_dir, data.train["input_ids"], LABELS, data.pad_id, runtime, 64)
    return float(
        torch.nn.functional.kl_div(s.log_softmax(-1), t.log_softmax(-1), log_target=True, reduction="batchmean")
    )


def test_distillation_moves_the_student_toward_the_teacher(teacher_task, tmp_path):
    from dapt.finetune.distill import distill
    from dapt.runtime.context import setup_runtime

    teacher, student, tokenized = teacher_task
    torch.set_num_threads(1)
    runtime = setup_runtime(0, "fp32", threads=1)
    params = {"epochs": 8, "batch_size": 8, "lr": 1e-2, "patience": 20, "warmup_ratio": 0.0}
    before = kl_teacher_student(teacher, student, tokenized)
    summary = distill(student, teacher, tokenized, tmp_path / "d", tmp_path / "ckd", params, 1, runtime, 2.0, 1.0)
    after = kl_teacher_student(teacher, tmp_path / "d" / "model", tokenized)
    assert after < 0.5 * before, (before, after)
    assert summary["distill"] == {"teacher": str(teacher), "temperature": 2.0, "alpha": 1.0}
    assert not (tmp_path / "ckd").exists()  # checkpoints cleared at the end, as in fine-tuning
    # the comparison: same student, same steps, hard labels only (no teacher is run)
    hard = distill(student, None, tokenized, tmp_path / "h", tmp_path / "ckh", params, 1, runtime, 2.0, 0.0)
    assert hard["distill"]["teacher"] is None and hard["train_steps"] == summary["train_steps"]
    assert json.loads((tmp_path / "h" / "model" / "method.json").read_text())["method"]["kind"] == "full"


def test_distill_loss_is_the_stated_mix():
    from dapt.finetune.distill import distill_loss

    s, t, y = torch.tensor([[1.0, -1.0], [0.5, 0.0]]), torch.tensor([[-1.0, 2.0], [0.0, 1.0]]), torch.tensor([0, 1])
    ce = torch.nn.functional.cross_entropy(s, y)
    kl = (torch.softmax(t / 2, -1) * (torch.log_softmax(t / 2, -1) - torch.log_softmax(s / 2, -1))).sum(-1).mean()
    objective, hard = distill_loss(s, t, y, 2.0, 0.3)
    assert torch.allclose(objective, 0.3 * 4 * kl + 0.7 * ce) and torch.allclose(hard, ce)
    assert torch.allclose(distill_loss(s, t, y, 2.0, 0.0)[0], ce)


def prune_study(tmp_path, prune: dict):
    config = tiny_config()
    config["variants"] = {"base": []}
    config["methods"] = {"full": {}}
    config["seeds"] = [1]
    config["deploy"] = {"latency_texts": 5, "threads": 1, "prune": prune}
    return make_workdir(tmp_path / "study", config)


def test_workflow_measures_the_pruned_models_beside_the_unpruned(tmp_path):
    """deploy.prune on the tiny study: target `deploy` prunes the deployed run twice (distilled, hard labels),
    exports each to ONNX, fused and int8, measures them and adds their rows to the deploy table."""
    workdir = prune_study(tmp_path, {"keep_layers": 1, "ffn_keep": 0.5, "distill": {"epochs": 1, "lr": 1e-3}})
    proc = run_snakemake(workdir, "deploy")
    assert proc.returncode == 0, proc.stderr[-5000:]
    deploy = workdir / "results" / "deploy" / "rt_polarity" / "full"
    for pruning in ("distilled", "hard"):
        export = deploy / "pruned" / pruning / "export"
        for fmt in ("onnx", "onnx_fused", "onnx_int8"):
            assert (export / fmt / "model.onnx").stat().st_size > 0, fmt
        info = json.loads((export / "deploy.json").read_text())
        assert info["pruning"]["after"] == {**info["pruning"]["after"], "layers": 1, "intermediate_size": 32}
        assert json.loads((export / "pytorch" / "config.json").read_text())["num_hidden_layers"] == 1
    csv = pd.read_csv(workdir / "results" / "report" / "deploy.csv")
    onnx = csv[csv["format"].isin(["pytorch", "onnx", "onnx_fused", "onnx_int8"])]
    assert sorted(onnx.groupby("pruning").size().items()) == [("distilled", 4), ("hard", 4), ("none", 4)]
    pruned = csv[csv["pruning"] != "none"]
    assert set(pruned["layers"]) == {1} and set(pruned["ffn_width"]) == {32}
    assert (pruned["params"] < csv[csv["pruning"] == "none"]["params"].min()).all()
    assert pruned["speedup_b1_vs_unpruned_onnx"].notna().all() and pruned["f1_diff_vs_unpruned"].notna().all()
    table = (workdir / "results" / "report" / "deploy.md").read_text()
    assert "pruned + distilled" in table and "pruned, no distillation" in table and "× unpruned ONNX fp32" in table


@pytest.mark.parametrize(
    "prune, key",
    [
        ({"ffn_keep": 1.5}, "deploy.prune.ffn_keep"),
        ({"keep_layers": 1, "drop_layers": [1]}, "deploy.prune.drop_layers"),
        ({"distill": {"alpha": -0.1}}, "deploy.prune.distill.alpha"),
        ({"layers": 2}, "deploy.prune"),
    ],
)
def test_a_bad_prune_block_is_refused_in_one_line(tmp_path, prune, key):
    proc = run_snakemake(prune_study(tmp_path, prune), "-n", "deploy")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and key in last, proc.stderr[-2000:]
