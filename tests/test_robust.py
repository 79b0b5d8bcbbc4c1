"""Training-time robustness (dapt.finetune.regularizers) and its data steps (dapt.data.augment): each option changes
training and stays deterministic; augmented rows reach training only, with their source's label;
perturbed test sets are scored per document beside the clean score on the same documents; bad
values are one-line config errors; and a study with all of it runs through Snakemake.

Tiny models: a randomly initialised 2-layer BERT with MiniLM's real WordPiece tokenizer, as in
test_methods.py, with dropout on (R-Drop compares two dropout passes).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import (
    REPO,
    make_workdir,
    minilm_dir,
    rt_examples,
    run_snakemake,
    tiny_base,
    tiny_config,
    write_tokenized_task,
)

TRAIN = {
    "epochs": 2,
    "batch_size": 8,
    "eval_batch_size": 32,
    "grad_accum": 1,
    "lr": 3e-3,
    "weight_decay": 0.0,
    "warmup_ratio": 0.0,
    "patience": 10,
    "max_grad_norm": 1.0,
    "save_steps": 1000,
    "metric": "macro_f1",
    "max_length": 48,
}
METHODS = {"full": {"kind": "full"}, "lora": {"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.1}}
OPTIONS = {
    "fgm": {"adversarial": "fgm", "adv_epsilon": 1.0},
    "pgd": {"adversarial": "pgd", "adv_epsilon": 1.0, "adv_alpha": 0.4, "adv_steps": 2},
    "rdrop": {"rdrop": 1.0},
    "label_smoothing": {"label_smoothing": 0.2},
    "fgm+rdrop": {"adversarial": "fgm", "rdrop": 0.5},
}


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    """(base checkpoint, prepared task folder, tokenized task folder)."""
    from dapt.data.model_store import load_tokenizer

    root = tmp_path_factory.mktemp("robust")
    tok = load_tokenizer(minilm_dir())
    base = tiny_base(root, tok, dropout=0.1, initializer_range=0.02)
    df = rt_examples()
    tokenized = write_tokenized_task(
        root, {"train": df[:32], "validation": df[32:64], "test": df[64:124]}, ["neg", "pos"], base, 48
    )
    return base, root / "task", tokenized


@pytest.fixture(scope="module")
def runtime():
    from dapt.runtime.context import setup_runtime

    torch.set_num_threads(1)
    return setup_runtime(0, "fp32", threads=1)


def first_step_grads(tiny_task, runtime, tmp_path, params: dict) -> tuple[float, dict]:
    """The logged loss and the gradients of one micro-step on the first training batch (seed 1)."""
    from dapt.finetune.fine_tuning import FineTuning
    from dapt.finetune.task_data import load_task

    base, _, tokenized = tiny_task
    run = FineTuning(str(base), load_task(tokenized, base), str(tmp_path / "ckpt"), {**TRAIN, **params}, 1, runtime)
    torch.manual_seed(7)  # the dropout masks of this step
    objective, logged = run.micro_step(np.arange(8), 1.0)
    objective.backward()
    return logged, {n: p.grad.clone() for n, p in run.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("option", list(OPTIONS))
def test_each_option_changes_gradients_deterministically(tiny_task, runtime, tmp_path, method, option):
    _, plain = first_step_grads(tiny_task, runtime, tmp_path / "a", METHODS[method])
    params = {**METHODS[method], **OPTIONS[option]}
    _, once = first_step_grads(tiny_task, runtime, tmp_path / "b", params)
    _, twice = first_step_grads(tiny_task, runtime, tmp_path / "c", params)
    assert plain.keys() == once.keys() and plain
    assert all(torch.equal(once[n], twice[n]) for n in once), "the same option and seed gave other gradients"
    differ = [n for n in once if not torch.allclose(once[n], plain[n], rtol=1e-4, atol=1e-7)]
    assert differ, f"{option} left every gradient of {method} as the plain run's"


def test_fgm_step_has_length_epsilon_and_pgd_stays_in_the_ball():
    from dapt.finetune.regularizers import _project, _unit

    grad = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    unit = _unit(grad, mask)
    assert torch.allclose(unit.flatten(1).norm(dim=1), torch.ones(3))
    assert torch.all(unit[0, 3:] == 0) and torch.all(unit[2, 1:] == 0), "padding got a perturbation"
    far = _project(5.0 * unit, 1.5)
    assert torch.allclose(far.flatten(1).norm(dim=1), torch.full((3,), 1.5))
    near = 0.5 * unit
    assert torch.equal(_project(near, 1.5), near)


def _eval_classifier(tiny_task):
    """The tiny base as a classifier in eval mode (dropout off): every forward is deterministic, so the
    clean and perturbed losses can be compared number for number."""
    from transformers import AutoModelForSequenceClassification

    from dapt.finetune.task_data import load_task

    base, _, tokenized = tiny_task
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=2).eval()
    data = load_task(tokenized, base)
    from dapt.runtime.batching import collate

    ids, mask = collate(data.train["input_ids"], np.arange(8), data.pad_id)
    return model, ids, mask, torch.as_tensor(data.train["label"][:8])


@pytest.mark.parametrize("option", ["fgm", "pgd"])
def test_adversarial_loss_is_above_the_clean_loss_and_the_objective_is_their_sum(tiny_task, option):
    """The perturbation ascends the loss: the adversarial term is above the clean loss (a perturbation that
    descended, or a random one, would not reliably be), it is the loss at the perturbed embeddings recomputed
    here independently (FGM: epsilon along the per-example unit gradient), and the objective is clean + it."""
    from dapt.finetune.regularizers import EmbeddingNoise, _unit, robust_loss

    model, ids, mask, labels = _eval_classifier(tiny_task)
    params = {**OPTIONS[option], "adv_epsilon": 0.5}

    def forward(i, m):
        return model(input_ids=i, attention_mask=m).logits

    noise = EmbeddingNoise(model)
    objective, clean = robust_loss(forward, ids, mask, labels, params, noise)
    adversarial = float(objective.detach()) - float(clean.detach())
    assert float(clean.detach()) == pytest.approx(float(_cross_entropy(forward(ids, mask), labels)), rel=1e-6)
    assert adversarial > float(clean.detach()) + 1e-4, (
        f"{option}: perturbed {adversarial}, clean {float(clean.detach())}"
    )
    # the same perturbation, built here: the gradient of the clean loss at the embeddings' output
    with noise.active(record=True):
        loss = _cross_entropy(forward(ids, mask), labels)
    grad = torch.autograd.grad(loss, noise.recorded)[0]
    if option == "fgm":
        with noise.active(0.5 * _unit(grad, mask)):
            expected = float(_cross_entropy(forward(ids, mask), labels))
        assert adversarial == pytest.approx(expected, rel=1e-5)
    with noise.active(-0.5 * _unit(grad, mask)):  # the descending direction lowers the loss: the test can tell
        assert float(_cross_entropy(forward(ids, mask), labels).detach()) < float(clean.detach())


def _cross_entropy(logits, labels):
    return torch.nn.functional.cross_entropy(logits.float(), labels)


def test_rdrop_regulariser_is_zero_for_equal_predictions_only():
    from dapt.finetune.regularizers import symmetric_kl

    a = torch.randn(4, 3)
    assert symmetric_kl(a, a).item() == pytest.approx(0.0, abs=1e-7)
    assert symmetric_kl(a, a.flip(1)).item() > 0.01


def test_label_smoothing_raises_the_loss_of_confident_right_predictions():
    from dapt.finetune.regularizers import robust_loss

    logits = torch.tensor([[8.0, -8.0], [-8.0, 8.0]])
    labels = torch.tensor([0, 1])
    plain, _ = robust_loss(lambda ids, mask: logits, None, None, labels, {})
    smooth, _ = robust_loss(lambda ids, mask: logits, None, None, labels, {"label_smoothing": 0.2})
    assert smooth.item() > plain.item() + 0.5


def test_adversarial_lora_run_trains_and_is_reproducible(tiny_task, runtime, tmp_path):
    """A whole (short) PGD + R-Drop LoRA run: two runs give the same log and weights."""
    from safetensors.torch import load_file

    from dapt.finetune.fine_tuning import finetune

    base, _, tokenized = tiny_task
    params = {**TRAIN, **METHODS["lora"], **OPTIONS["pgd"], "rdrop": 0.5}
    logs = []
    for name in ("one", "two"):
        out = tmp_path / name
        summary = finetune(str(base), str(tokenized), str(out), str(tmp_path / f"ckpt-{name}"), params, 1, runtime)
        assert summary["params"]["adversarial"] == "pgd"
        logs.append(((out / "log.csv").read_text(), load_file(str(out / "model" / "adapter_model.safetensors"))))
    assert logs[0][0] == logs[1][0]
    assert all(torch.equal(logs[0][1][k], logs[1][1][k]) for k in logs[0][1])


def test_augmented_rows_train_with_their_labels_and_never_reach_validation(tiny_task, runtime, tmp_path):
    from dapt.data.augment import source_ids, write_augmented
    from dapt.finetune.task_data import load_task, with_copies
    from dapt.study.settings import augment_settings

    base, task_dir, tokenized = tiny_task
    settings = augment_settings({"augment": {"ops": ["swap", "delete", "insert"], "n_aug": 2, "seed": 3}})
    out = tmp_path / "aug.parquet"
    summary = write_augmented(task_dir, settings, out)
    train = pd.read_parquet(task_dir / "train.parquet")
    rows = pd.read_parquet(out)
    assert summary["rows"] == len(rows) == 2 * len(train)
    by_id = train.set_index("id")
    assert (rows["label"].to_numpy() == by_id.loc[source_ids(rows["id"].tolist()), "label"].to_numpy()).all()
    assert rows["changed"].mean() > 0.5
    again = tmp_path / "again.parquet"
    write_augmented(task_dir, settings, again)
    assert pd.read_parquet(again).equals(rows), "augmentation is not reproducible"

    data = load_task(tokenized, base)
    combined = with_copies(data.train, str(out), str(tokenized), str(base))
    assert len(combined["label"]) == 3 * len(train)
    assert combined["id"][: len(train)] == data.train["id"]
    held_out = set(pd.read_parquet(task_dir / "validation.parquet")["id"]) | set(
        pd.read_parquet(task_dir / "test.parquet")["id"]
    )
    assert not held_out & set(source_ids(combined["id"])), "an augmented row comes from validation or test"
    # a learning-curve cut keeps the copies of the rows it keeps, and only those
    half = {k: (v[:10] if isinstance(v, (list, np.ndarray)) else v) for k, v in data.train.items()}
    cut = with_copies(half, str(out), str(tokenized), str(base))
    assert len(cut["label"]) == 30 and set(source_ids(cut["id"])) == set(half["id"])


def test_perturbed_scores_are_per_document_beside_clean_on_the_same_sample(tiny_task, runtime, tmp_path):
    from dapt.data.augment import write_perturbed
    from dapt.finetune.evaluation import evaluate_run
    from dapt.finetune.fine_tuning import finetune
    from dapt.finetune.metrics import compute_metrics

    base, task_dir, tokenized = tiny_task
    out = tmp_path / "run"
    finetune(str(base), str(tokenized), str(out), str(tmp_path / "ckpt"), {**TRAIN, **METHODS["full"]}, 1, runtime)
    files = {}
    for op, rate in (("typo", 0.3), ("case", 1.0)):
        files[op] = str(tmp_path / f"{op}.parquet")
        write_perturbed(task_dir, op, rate, 0, 25, files[op])
    robust = tmp_path / "robustness.json"
    evaluate_run(
        str(out / "model"),
        str(base),
        str(tokenized),
        str(out / "train.json"),
        str(tmp_path / "m.json"),
        str(tmp_path / "p.csv"),
        runtime,
        {"task": "t"},
        32,
        files,
        str(robust),
    )
    scores = json.loads(robust.read_text())
    assert set(scores["perturbations"]) == {"typo", "case"}
    assert scores["clean"]["n"] == scores["perturbations"]["typo"]["n"] == 25
    # clean on the sample = the clean predictions of those 25 documents
    preds = pd.read_csv(tmp_path / "p.csv").set_index("id")
    sample = pd.read_parquet(files["typo"])["id"]
    gold = preds.loc[sample, "gold"].map({"neg": 0, "pos": 1}).to_numpy()
    pred = preds.loc[sample, ["p_neg", "p_pos"]].to_numpy().argmax(1)
    assert scores["clean"]["macro_f1"] == pytest.approx(compute_metrics(gold, pred, ["neg", "pos"])["macro_f1"])
    # an uncased tokenizer reads case changes as the clean text: same score; typos change the texts
    assert scores["perturbations"]["case"]["changed"] > 0
    assert scores["perturbations"]["case"]["macro_f1"] == pytest.approx(scores["clean"]["macro_f1"])
    assert scores["perturbations"]["typo"]["changed"] > 15


@pytest.mark.parametrize(
    "edit, key",
    [
        ({"finetune": {"adv_epsilon": -1.0}}, "finetune.adv_epsilon"),
        ({"methods": {"lora": {"adversarial": "fgsm"}}}, "methods.lora.adversarial"),
        ({"robustness": {"perturbations": {"typo": 1.5}}}, "robustness.perturbations.typo"),
        ({"robustness": {"perturbations": {"typos": 0.1}}}, "robustness.perturbations"),
        ({"finetune": {"augment": {"ops": ["shuffle"]}}}, "finetune.augment.ops[0]"),
        ({"finetune": {"augment": {"ops": ["swap"], "rate": 2}}}, "finetune.augment.rate"),
        ({"finetune": {"label_smoothing": 1.0}}, "finetune.label_smoothing"),
        ({"finetune": {"augment": {"ops": ["synonym"]}}}, "finetune.augment.ops"),
    ],
)
def test_bad_values_are_one_line_config_errors(edit, key):
    from dapt.core.errors import UserError
    from dapt.study.config import validate_config

    config = tiny_config()
    for section, value in edit.items():
        if isinstance(config.get(section), dict) and section != "robustness":
            for name, spec in value.items():
                config[section][name] = (
                    {**(config[section].get(name) or {}), **spec} if isinstance(spec, dict) else spec
                )
        else:
            config[section] = value
    with pytest.raises(UserError) as err:
        validate_config(config, "study.yaml")
    assert str(err.value).startswith(f"study.yaml: {key}:") and "\n" not in str(err.value)


def test_schema_lists_the_operations_textops_has():
    import yaml

    from dapt.data.textops import AUGMENT_OPS, PERTURBATIONS

    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    keys = schema["$defs"]["finetune_keys"]["properties"]
    assert keys["augment"]["properties"]["ops"]["items"]["enum"] == list(AUGMENT_OPS)
    assert schema["properties"]["robustness"]["properties"]["perturbations"]["propertyNames"]["enum"] == list(
        PERTURBATIONS
    )


def test_robustness_study_runs_through_snakemake(tmp_path):
    """Augmentation (synonyms from a tiny WordNet), R-Drop + FGM, and perturbed evaluation in one study:
    the perturbed files are made once and read by every run, and the report has its robustness table."""
    config = tiny_config()
    config["variants"] = {"base": []}
    config["seeds"] = [1]
    config["methods"] = {
        "full": {"augment": {"ops": ["synonym", "swap"], "n_aug": 1, "rate": 0.3}},
        "lora": {"lr": 3.0e-3, "r": 4, "alpha": 8, "adversarial": "fgm", "rdrop": 0.5},
    }
    config["robustness"] = {"perturbations": {"typo": 0.1, "synonym": 0.3}, "max_examples": 40}
    config["wordnet"] = {"source": {"kind": "local", "path": "wordnet"}}
    work = make_workdir(tmp_path / "study", config)
    write_tiny_wordnet(work / "wordnet")
    result = run_snakemake(work, "--cores", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    augmented = list((work / "results/data/augmented/rt_polarity").glob("*.parquet"))
    assert [p.name for p in augmented] == ["swap_synonym-n1-r0.3-s0.parquet"]
    log = (work / "results/logs/finetune/rt_polarity/tiny/base/full/seed1.log").read_text()
    assert "augment:" in log
    for method in ("full", "lora"):
        scores = json.loads(
            (work / f"results/evaluate/rt_polarity/tiny/base/{method}/seed1/robustness.json").read_text()
        )
        assert set(scores["perturbations"]) == {"typo", "synonym"} and scores["clean"]["n"] == 40
    table = (work / "results/report/robustness.md").read_text()
    assert "typo (0.1)" in table and "synonym (0.3)" in table
    csv = pd.read_csv(work / "results/report/robustness.csv")
    assert len(csv) == 4 and set(csv["method"]) == {"full", "lora"}


def write_tiny_wordnet(folder):
    """A WordNet data file in the real format, with synsets for words of the test sentences."""
    folder.mkdir(parents=True)
    lines = ["  1 This software and database is being provided to you, the LICENSEE, by Princeton University"]
    synsets = [
        ("00001740", "00", "a", ["good", "beneficial", "well"]),
        ("00002098", "00", "a", ["bad", "poor"]),
        ("00002312", "00", "a", ["funny", "amusing", "comic"]),
        ("00002527", "00", "a", ["boring", "dull"]),
        ("00002730", "00", "a", ["great", "outstanding"]),
    ]
    for offset, lex, pos, words in synsets:
        lines.append(f"{offset} {lex} {pos} {len(words):02x} " + " ".join(f"{w} 0" for w in words) + " 000 | gloss")
    for name in ("data.adj", "data.noun", "data.verb", "data.adv"):
        (folder / name).write_text("\n".join(lines if name == "data.adj" else lines[:1]) + "\n")


def test_robustness_options_sweep_like_any_hyperparameter():
    from dapt.study import grid

    config = tiny_config()
    config["methods"] = {"full": {"rdrop": [0.0, 0.5], "adversarial": ["none", "fgm"]}}
    runs = [r for r in grid.runs(config) if r["variant"] == "base" and r["seed"] == 1]
    names = sorted(r["method"] for r in runs)
    assert names == [
        "full-adversarialfgm-rdrop0.0",
        "full-adversarialfgm-rdrop0.5",
        "full-adversarialnone-rdrop0.0",
        "full-adversarialnone-rdrop0.5",
    ]
    params = grid.run_params(config, "rt_polarity", "full-adversarialfgm-rdrop0.5")
    assert params["adversarial"] == "fgm" and params["rdrop"] == 0.5
