"""An export reads long documents as its run was trained and evaluated (issues 14 and 15).

`dapt.deploy.export` records the task's max_length and resolved long_text setting in the export's
`dapt_input.json` (copied beside the .onnx files); `dapt.deploy.predict` takes them as defaults, explicit
flags win; the deploy measurement scores what evaluate scored. Tiny runs as in tests/test_longtext.py:
a random 2-layer BERT with MiniLM's real WordPiece tokenizer, fine-tuned for two epochs on "reviews"
of 6-14 sentences (100-200 tokens each, so every test review is longer than max_length).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import minilm_dir, rt_reviews, tiny_base, write_tokenized_task

from dapt.core.errors import UserError

LABELS = ["neg", "pos"]
WINDOWS = {"strategy": "windows", "stride": 16, "pool": "mean", "max_windows": 4}
TASKS = {"windows": (32, WINDOWS), "head": (48, None)}  # name -> (max_length, long_text)
TRAIN = {
    "epochs": 2,
    "batch_size": 8,
    "eval_batch_size": 16,
    "grad_accum": 1,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "warmup_ratio": 0.0,
    "patience": 5,
    "max_grad_norm": 1.0,
    "save_steps": 1000,
    "kind": "full",
    "metric": "macro_f1",
}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    """name -> {tokenized, run, export}: each task tokenized, fine-tuned, evaluated and exported."""
    import dapt.finetune.fine_tuning as ft
    from dapt.data.model_store import load_tokenizer
    from dapt.deploy.export import export_run
    from dapt.finetune.evaluation import evaluate_run
    from dapt.runtime.context import setup_runtime

    root = tmp_path_factory.mktemp("export_longtext")
    tok = load_tokenizer(minilm_dir())
    base = tiny_base(root, tok)
    docs = rt_reviews()
    torch.set_num_threads(1)
    runtime = setup_runtime(0, "fp32", threads=1)
    out = {}
    for name, (length, long_text) in TASKS.items():
        (root / name).mkdir()
        tokenized = write_tokenized_task(
            root / name,
            {"train": docs[:24], "validation": docs[24:32], "test": docs[32:44]},
            LABELS,
            base,
            length,
            "tasks.reviews.max_length",
            long_text,
        )
        run = root / name / "run"
        ft.finetune(
            str(base), str(tokenized), str(run), str(root / name / "ckpt"), {**TRAIN, "max_length": length}, 1, runtime
        )
        evaluate_run(
            str(run / "model"),
            str(base),
            str(tokenized),
            str(run / "train.json"),
            str(run / "metrics.json"),
            str(run / "predictions.csv"),
            runtime,
            {},
            16,
        )
        export_run(
            str(run / "model"), str(base), LABELS, root / name / "export", {"method": "full"}, tokenized_dir=tokenized
        )
        out[name] = {
            "tokenized": tokenized,
            "run": run,
            "export": root / name / "export",
            "texts": pd.read_parquet(root / name / "task" / "test.parquet"),
        }
    return out


@pytest.fixture(scope="module")
def onnx_dirs(study, tmp_path_factory) -> tuple[Path, Path]:
    """The windows export as ONNX and int8 ONNX (their folders)."""
    from dapt.deploy.onnx import export_onnx, quantize_int8

    root = tmp_path_factory.mktemp("onnx")
    export_onnx(study["windows"]["export"], root / "onnx", opset=17)
    quantize_int8(root / "onnx", root / "onnx_int8")
    return root / "onnx", root / "onnx_int8"


def _read(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _predict(capsys, tmp_path, model: Path, texts: list[str], *flags: str) -> tuple[pd.DataFrame, str]:
    """dapt.deploy.predict's CLI (in this process): the CSV it writes and its stderr line."""
    from dapt.deploy.predict import main

    pd.DataFrame({"text": texts}).to_csv(tmp_path / "in.csv", index=False)
    capsys.readouterr()
    main(
        [
            "--model",
            str(model),
            "--input",
            str(tmp_path / "in.csv"),
            "--output",
            str(tmp_path / "out.csv"),
            "--threads",
            "1",
            *flags,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    return pd.read_csv(tmp_path / "out.csv"), err[-1] if err else ""


def test_the_export_records_how_its_task_read_a_text(study, onnx_dirs):
    windows, head = study["windows"]["export"], study["head"]["export"]
    assert _read(windows / "dapt_input.json") == {"max_length": 32, "long_text": WINDOWS}
    assert _read(head / "dapt_input.json") == {"max_length": 48, "long_text": {"strategy": "head"}}
    assert _read(windows / "tokenizer_config.json")["model_max_length"] == 32
    assert _read(head / "tokenizer_config.json")["model_max_length"] == 48
    for folder in onnx_dirs:  # served on their own: the record travels with the .onnx
        assert _read(folder / "dapt_input.json") == _read(windows / "dapt_input.json")
        assert _read(folder / "tokenizer_config.json")["model_max_length"] == 32


def test_predict_without_flags_gives_the_evaluate_steps_probabilities(study, onnx_dirs, capsys, tmp_path):
    """A windows export read with no flags: the evaluate step's per-document probabilities (PyTorch to
    1e-5, ONNX to 1e-4); forcing --long-text head reads only the head and gives other probabilities."""
    task = study["windows"]
    want = pd.read_csv(task["run"] / "predictions.csv")
    texts = task["texts"].set_index("id").loc[want["id"], "text"].tolist()
    got, line = _predict(capsys, tmp_path, task["export"], texts)
    np.testing.assert_allclose(got["p_pos"], want["p_pos"], atol=1e-5)
    assert (got["label"] == want["predicted"]).all()
    assert "max_length 32" in line and "windows (stride 16, pool mean, max_windows 4)" in line
    assert f"from {task['export'] / 'dapt_input.json'})" in line, line
    via_onnx, line = _predict(capsys, tmp_path, onnx_dirs[0] / "model.onnx", texts)
    np.testing.assert_allclose(via_onnx["p_pos"], want["p_pos"], atol=1e-4)
    assert str(onnx_dirs[0] / "dapt_input.json") in line
    head, line = _predict(capsys, tmp_path, task["export"], texts, "--long-text", "head")
    assert "long_text head (from --long-text)" in line and "max_length 32" in line
    assert np.abs(head["p_pos"] - want["p_pos"]).max() > 1e-3


def test_explicit_flags_win_over_the_record(study, capsys, tmp_path):
    from dapt.deploy.predict import Predictor

    folder = study["windows"]["export"]
    texts = study["windows"]["texts"]["text"].tolist()[:4]
    default, _ = _predict(capsys, tmp_path, folder, texts)
    for flags, max_length, settings in (
        (["--stride", "8", "--pool", "max"], 32, {**WINDOWS, "stride": 8, "pool": "max"}),
        (["--max-length", "24"], 24, WINDOWS),
        (["--long-text", "head_tail", "--head", "4"], 32, {"strategy": "head_tail", "head": 4}),
    ):
        got, line = _predict(capsys, tmp_path, folder, texts, *flags)
        want = Predictor(str(folder), 1, max_length, settings).predict_proba(texts)
        np.testing.assert_allclose(got["p_pos"], want[:, 1], atol=1e-6)
        assert np.abs(got["p_pos"] - default["p_pos"]).max() > 1e-4, flags
        assert f"max_length {max_length}" in line and settings["strategy"] in line
    assert "and the command line" in line or "--long-text" in line
    with pytest.raises(UserError, match=r"^--head: applies to another strategy than windows") as err:
        _predict(capsys, tmp_path, folder, texts, "--head", "4")
    assert "dapt_input.json" in str(err.value) and "\n" not in str(err.value)


def test_plain_pipeline_and_predict_truncate_a_head_export_as_its_task_did(study, capsys, tmp_path):
    """The head export's tokenizer cuts at the task's 48 tokens with a plain pipeline(truncation=True)."""
    from transformers import pipeline

    task = study["head"]
    want = pd.read_csv(task["run"] / "predictions.csv")
    texts = task["texts"].set_index("id").loc[want["id"], "text"].tolist()
    clf = pipeline("text-classification", model=str(task["export"]), top_k=None)
    plain = [{d["label"]: d["score"] for d in row} for row in clf(texts, truncation=True)]
    np.testing.assert_allclose([p["pos"] for p in plain], want["p_pos"], atol=2e-5)
    got, line = _predict(capsys, tmp_path, task["export"], texts)
    np.testing.assert_allclose(got["p_pos"], want["p_pos"], atol=1e-5)
    assert "max_length 48" in line and "long_text head (from" in line and "dapt_input.json" in line


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("long_text.strategy", "sliding", "'sliding' is not one of head, head_tail, windows"),
        ("long_text.pool", "median", "'median' is not one of mean, max"),
        ("max_length", 0, "0 is not a positive integer"),
    ],
)
def test_a_bad_record_is_one_line_naming_file_and_field(study, tmp_path, field, value, words):
    from dapt.deploy.predict import Predictor

    folder = tmp_path / "export"
    shutil.copytree(study["windows"]["export"], folder)
    spec = _read(folder / "dapt_input.json")
    if field == "max_length":
        spec["max_length"] = value
    else:
        spec["long_text"][field.split(".")[1]] = value
    (folder / "dapt_input.json").write_text(json.dumps(spec))
    with pytest.raises(UserError) as err:
        Predictor(str(folder))
    message = str(err.value)
    assert message.startswith(f"{folder / 'dapt_input.json'}: {field}: ") and words in message, message
    assert "\n" not in message


def test_the_deploy_measurement_scores_documents_as_evaluate_did(study, onnx_dirs):
    """measure.py's F1 equals metrics.json's for the windows task (12 documents, not their windows); an
    export recording another reading than the tokenized task's is refused."""
    from dapt.deploy.measure import _pad_id, measure_all, measure_format
    from dapt.tokenize.longtext import per_document
    from dapt.tokenize.tasks import read_examples

    task = study["windows"]
    paths = {"pytorch": task["export"], "onnx": onnx_dirs[0]}
    test = read_examples(task["tokenized"] / "test.parquet")
    want = pd.read_csv(task["run"] / "predictions.csv")
    assert want["predicted"].nunique() == 2  # both labels predicted: the F1 below can tell readings apart
    measured = measure_format("pytorch", task["export"], test["input_ids"], _pad_id(task["export"]), 1, 2, False)
    ids, _, probs = per_document(test, measured["probs"])
    assert ids == want["id"].tolist()
    np.testing.assert_allclose(probs[:, 1], want["p_pos"], atol=1e-5)
    rows = measure_all(paths, task["tokenized"], 1, 2, fresh_process=False)
    metrics = _read(task["run"] / "metrics.json")
    assert [r["n_test"] for r in rows] == [12, 12] == [metrics["n_test"]] * 2
    assert rows[0]["macro_f1"] == pytest.approx(metrics["macro_f1"], abs=1e-12)
    assert rows[1]["f1_diff_vs_pytorch"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(UserError, match=r"dapt_input\.json: records .* was tokenized with"):
        measure_all(paths, study["head"]["tokenized"], 1, 2, fresh_process=False)
