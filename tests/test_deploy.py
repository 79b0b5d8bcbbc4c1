"""Deployment stage (dapt.deploy, dapt.deploy.predict): every exportable method's export loads with plain
transformers and gives the evaluate step's predictions; ONNX and int8 ONNX run in ONNX Runtime; the
predict CLI; bad input gives one line and no partial output.

Tiny runs: a random 2-layer BERT with MiniLM's real WordPiece tokenizer, each method trained for two
epochs on 48 sentences (the export must reproduce whatever the run learned, not a good model).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, minilm_dir, rt_examples, tiny_bert_config, write_tokenized_task

LABELS = ["neg", "pos"]
TRAIN = {
    "epochs": 2,
    "batch_size": 16,
    "eval_batch_size": 64,
    "grad_accum": 1,
    "weight_decay": 0.0,
    "warmup_ratio": 0.0,
    "patience": 100,
    "max_grad_norm": 1.0,
    "save_steps": 1000,
    "metric": "macro_f1",
    "max_length": 48,
}
METHODS = {
    "full": {"lr": 3e-3},
    "head": {"lr": 3e-2},
    "lora": {"lr": 1e-2, "r": 4, "alpha": 8, "dropout": 0.0},
    "adalora": {"lr": 1e-2, "r": 6, "target_r": 2, "alpha": 12, "dropout": 0.0},
    "ia3": {"lr": 3e-2},
    "adapter_pfeiffer": {"kind": "adapter", "lr": 1e-2, "placement": "pfeiffer", "reduction_factor": 4},
    "adapter_houlsby": {"kind": "adapter", "lr": 1e-2, "placement": "houlsby", "reduction_factor": 4},
    "prefix": {"lr": 1e-2, "num_virtual_tokens": 4},
    "prompt": {"lr": 3e-2, "num_virtual_tokens": 4},
}
EXPORTABLE = [m for m in METHODS if m not in ("prefix", "prompt")]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """(base checkpoint, task folder, tokenized task folder)."""
    from transformers import BertForMaskedLM

    from dapt.data.model_store import load_tokenizer

    root = tmp_path_factory.mktemp("deploy")
    tok = load_tokenizer(minilm_dir())
    torch.manual_seed(0)
    config = tiny_bert_config(
        tok,
        initializer_range=0.2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    mlm = BertForMaskedLM(config)
    mlm.config.initializer_range = 0.02
    base = root / "base"
    mlm.save_pretrained(base)
    tok.save_pretrained(base)
    df = rt_examples()
    tokenized = write_tokenized_task(
        root, {"train": df[:48], "validation": df[48:80], "test": df[80:140]}, LABELS, base, 48
    )
    return base, root / "task", tokenized


@pytest.fixture(scope="module")
def runs(task, tmp_path_factory):
    """name -> run folder (model/, train.json, and the evaluate step's predictions.csv), trained on use."""
    import dapt.finetune.fine_tuning as ft
    from dapt.finetune.evaluation import evaluate_run
    from dapt.runtime.context import setup_runtime

    base, _, tokenized = task
    torch.set_num_threads(1)
    runtime = setup_runtime(0, "fp32", threads=1)
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            params = {**TRAIN, **METHODS[name]}
            params["kind"] = params.get("kind", name)
            out = tmp_path_factory.mktemp(name) / "run"
            ft.finetune(str(base), str(tokenized), str(out), str(out.parent / "ckpt"), params, 1, runtime)
            evaluate_run(
                str(out / "model"),
                str(base),
                str(tokenized),
                str(out / "train.json"),
                str(out / "metrics.json"),
                str(out / "predictions.csv"),
                runtime,
                {},
                64,
            )
            cache[name] = out
        return cache[name]

    return get


@pytest.fixture(scope="module")
def exported(task, runs):
    from dapt.deploy.export import export_run

    base, _, _ = task
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            run = runs(name)
            export_run(str(run / "model"), str(base), LABELS, run.parent / "hf", {"method": name})
            cache[name] = run.parent / "hf"
        return cache[name]

    return get


def _test_texts(task) -> list[str]:
    return pd.read_parquet(task[1] / "test.parquet")["text"].tolist()


@pytest.fixture(scope="module")
def plain_outputs(task, exported, tmp_path_factory):
    """method -> DataFrame of label probabilities from plain transformers `pipeline(...)`, run on every
    method's export in one fresh interpreter that never imports dapt."""
    import json

    folders = {name: str(exported(name)) for name in EXPORTABLE}
    work = tmp_path_factory.mktemp("plain")
    (work / "job.json").write_text(json.dumps({"folders": folders, "texts": _test_texts(task)}))
    code = (
        "import json, sys\n"
        "from transformers import pipeline\n"
        "job = json.load(open(sys.argv[1]))\n"
        "out = {}\n"
        "for name, folder in job['folders'].items():\n"
        "    clf = pipeline('text-classification', model=folder, top_k=None,\n"
        "                   trust_remote_code=name.startswith('adapter'))\n"
        "    rows = clf(job['texts'], truncation=True, max_length=48)\n"
        "    out[name] = [{d['label']: d['score'] for d in row} for row in rows]\n"
        "assert not any(m == 'dapt' or m.startswith('dapt.') for m in sys.modules)\n"
        "print(json.dumps(out))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(work / "job.json")], capture_output=True, text=True, cwd=str(work), timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return {k: pd.DataFrame(v) for k, v in json.loads(res.stdout.strip().splitlines()[-1]).items()}


@pytest.mark.parametrize("name", EXPORTABLE)
def test_export_loads_with_plain_transformers(name, runs, exported, plain_outputs):
    """pipeline(...) on the folder gives the evaluate step's probabilities (predictions.csv, 1e-6)."""
    folder = exported(name)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert json_of(folder / "config.json")["id2label"] == {"0": "neg", "1": "pos"}
    got = plain_outputs[name]
    want = pd.read_csv(runs(name) / "predictions.csv")
    assert set(got.columns) == set(LABELS) and len(got) == len(want)
    np.testing.assert_allclose(got["pos"].to_numpy(), want["p_pos"].to_numpy(), atol=2e-5)
    assert ((got["pos"] > got["neg"]).map({True: "pos", False: "neg"}) == want["predicted"]).all()


def json_of(path):
    import json

    return json.loads(Path(path).read_text())


@pytest.mark.parametrize("name", ["prefix", "prompt"])
def test_prompt_methods_refused_in_one_line(name, task, runs, tmp_path):
    from dapt.core.errors import UserError
    from dapt.deploy.export import export_run

    with pytest.raises(UserError, match=f"method {name}: cannot be exported") as err:
        export_run(str(runs(name) / "model"), str(task[0]), LABELS, tmp_path / "hf")
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing left behind


@pytest.mark.parametrize("name", ["lora", "adapter_pfeiffer"])
def test_onnx_and_int8_match_pytorch(name, task, exported, tmp_path):
    """ONNX (dynamic batch and sequence: a padded batch of mixed lengths) equals PyTorch to 1e-4; int8
    agrees on most labels; both folders serve through dapt.deploy.predict."""
    from dapt.deploy.measure import load_logits_fn, pad
    from dapt.deploy.onnx import cpu_int8_settings, export_onnx, quantize_int8
    from dapt.tokenize.tasks import read_examples

    folder = exported(name)
    export_onnx(folder, tmp_path / "onnx", opset=17)
    settings = quantize_int8(tmp_path / "onnx", tmp_path / "onnx_int8")
    assert settings == cpu_int8_settings()  # this CPU's branch; every branch: tests/test_int8_settings.py
    test = read_examples(task[2] / "test.parquet")
    ids, mask = pad(test["input_ids"][:24], 0)
    assert len({len(x) for x in test["input_ids"][:24]}) > 3
    ref = load_logits_fn("pytorch", folder, 1)(ids, mask)
    onnx = load_logits_fn("onnx", tmp_path / "onnx", 1)(ids, mask)
    int8 = load_logits_fn("onnx", tmp_path / "onnx_int8", 1)(ids, mask)
    np.testing.assert_allclose(onnx, ref, atol=1e-4)
    one = load_logits_fn("onnx", tmp_path / "onnx", 1)(*pad(test["input_ids"][:1], 0))  # batch 1, other length
    np.testing.assert_allclose(one, ref[:1], atol=1e-4)
    assert (int8.argmax(1) == ref.argmax(1)).mean() >= 0.75
    assert (tmp_path / "onnx_int8" / "model.onnx").stat().st_size < (tmp_path / "onnx" / "model.onnx").stat().st_size


def test_fused_graph_equals_plain_onnx(task, exported, tmp_path):
    """ONNX Runtime's transformer optimizer fuses the tiny BERT's attention, LayerNorms and GELUs; the fused
    graph keeps the inputs, outputs and dynamic axes and gives the plain graph's logits to 1e-4 (a padded
    batch of mixed lengths, and batch 1). A model type it has no patterns for is left unfused, with the reason."""
    import onnx

    from dapt.deploy.fusion import optimize_onnx
    from dapt.deploy.measure import load_logits_fn, pad
    from dapt.deploy.onnx import export_onnx
    from dapt.tokenize.tasks import read_examples

    export_onnx(exported("full"), tmp_path / "onnx", opset=17)
    record = optimize_onnx(tmp_path / "onnx", tmp_path / "onnx_fused")
    assert record["applied"] and record["reason"] == "" and record["opt_level"] == 1, record
    assert record["fused_ops"]["Attention"] == 2 and record["fused_ops"]["SkipLayerNormalization"] == 4
    assert (tmp_path / "onnx_fused" / "tokenizer.json").is_file()
    plain, fused = (onnx.load(str(tmp_path / d / "model.onnx")).graph for d in ("onnx", "onnx_fused"))
    assert "Attention" in {n.op_type for n in fused.node} and "Attention" not in {n.op_type for n in plain.node}
    for side in ("input", "output"):
        assert [str(v.type) for v in getattr(fused, side)] == [str(v.type) for v in getattr(plain, side)]
    test = read_examples(task[2] / "test.parquet")
    for rows in (test["input_ids"][:24], test["input_ids"][5:6]):
        ids, mask = pad(rows, 0)
        want = load_logits_fn("onnx", tmp_path / "onnx", 1)(ids, mask)
        np.testing.assert_allclose(load_logits_fn("onnx_fused", tmp_path / "onnx_fused", 1)(ids, mask), want, atol=1e-4)

    other = tmp_path / "other"
    other.mkdir()
    for f in (tmp_path / "onnx").iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    config = json_of(other / "config.json")
    (other / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    record = optimize_onnx(other, tmp_path / "other_fused")
    assert not record["applied"] and "'gpt2' has no fusion patterns" in record["reason"]
    assert not (tmp_path / "other_fused").exists()


@pytest.mark.parametrize("from_fused", [True, False])
def test_int8_is_quantized_from_the_fused_graph_when_that_is_the_default(from_fused, task, runs, tmp_path, monkeypatch):
    """deploy_export quantizes int8 from the fused graph (QAttention in it) when INT8_FROM_FUSED, and records it."""
    import importlib.util

    import onnx

    from dapt.deploy import fusion

    monkeypatch.setattr(fusion, "INT8_FROM_FUSED", from_fused)
    run = runs("full")
    candidates = [{"artifact": f"{run}/model", "train_json": f"{run}/train.json", "base": str(task[0]), "run": {}}]
    argv = ["deploy_export", "--candidates", json.dumps(candidates), "--tokenized", str(task[2]), "--out"]
    monkeypatch.setattr(sys, "argv", [*argv, str(tmp_path / "dep"), "--formats", "pytorch,onnx,onnx_fused,onnx_int8"])
    spec = importlib.util.spec_from_file_location("deploy_export", REPO / "scripts" / "deploy_export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main()
    info = json_of(tmp_path / "dep" / "deploy.json")
    assert info["fusion"]["applied"] and (tmp_path / "dep" / "onnx_fused" / "model.onnx").is_file()
    assert info["int8"]["source"] == ("onnx_fused" if from_fused else "onnx")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "dep" / "onnx_int8" / "model.onnx")).graph.node}
    assert ("QAttention" in ops) == from_fused and "MatMulInteger" in ops


def _bf16_export(exported, tmp_path) -> Path:
    export = tmp_path / "export"
    export.mkdir()
    (export / "pytorch").symlink_to(exported("full"), target_is_directory=True)
    return export


def test_bf16_peer_is_skipped_with_its_reason_where_the_cpu_lacks_native_bf16(exported, tmp_path, monkeypatch):
    from dapt.deploy.measure import plan
    from dapt.runtime import precision

    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: (False, "AVX2"))
    paths, skipped = plan(_bf16_export(exported, tmp_path), ["pytorch", "onnx_fused"], {"fusion": {"reason": "why"}})
    assert list(paths) == ["pytorch"]
    bf16 = next(s for s in skipped if s["format"] == "pytorch_bf16")
    assert "no native bf16" in bf16["reason"] and "AVX2" in bf16["reason"]
    assert {"format": "onnx_fused", "reason": "not fused: why"} in skipped


def test_bf16_peer_is_measured_where_the_cpu_runs_bf16_natively(task, exported, tmp_path, monkeypatch):
    from dapt.deploy.measure import measure_all, plan
    from dapt.runtime import precision

    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: (True, "AVX512"))
    paths, skipped = plan(_bf16_export(exported, tmp_path), ["pytorch"], {})
    assert list(paths) == ["pytorch", "pytorch_bf16"] and skipped == []
    rows = measure_all(paths, task[2], 1, 3, fresh_process=False)
    bf16 = rows[1]
    assert bf16["format"] == "pytorch_bf16" and bf16["latency_texts"] == 3 and bf16["n_test"] == rows[0]["n_test"]
    assert bf16["agreement_vs_pytorch"] >= 0.75 and 0 < bf16["max_prob_diff_vs_pytorch"] < 0.1


def test_deploy_table_states_int8_against_onnx_and_fused_fp32(tmp_path):
    """The table's speed-up columns: each row against PyTorch fp32, ONNX fp32 and the fused fp32 graph;
    the fusion and the peers not measured are named under it."""
    from dapt.core.files import write_json
    from dapt.deploy.table import write_deploy_report

    run = {"task": "rt", "model": "minilm", "variant": "base", "method": "full", "seed": 1}
    timing = {"pytorch": (10.0, 100.0), "onnx": (5.0, 150.0), "onnx_fused": (4.0, 160.0), "onnx_int8": (2.0, 300.0)}
    rows = [
        {**run, "format": f, "macro_f1": 0.8, "accuracy": 0.8, "size_mb": 90.0, "latency_p50_ms": p50}
        | {"latency_p95_ms": p50, "throughput_per_s": per_s, "threads": 1, "peak_rss_mb": 300.0}
        for f, (p50, per_s) in timing.items()
    ]
    fusion = {
        "applied": True,
        "model_type": "bert",
        "opt_level": 1,
        "fused_ops": {"Attention": 6},
        "max_abs_diff": 1e-8,
    }
    skipped = [{"format": "pytorch_bf16", "reason": "this CPU has no native bf16"}]
    record = {"run": run, "rows": rows, "fusion": fusion, "skipped": skipped, "runtime": {}, "opset": 17}
    write_json(tmp_path / "measure.json", {**record, "int8": {"isa": "avx2", "weight_type": "QInt8"} | SOURCE})
    write_deploy_report([tmp_path / "measure.json"], tmp_path / "report")
    lines = (tmp_path / "report" / "deploy.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| task"))
    assert "× PyTorch (b1)" in header and "× ONNX fp32 (b1)" in header and "× fused fp32 (b1)" in header
    int8 = next(line for line in lines if "| ONNX int8 |" in line)
    assert int8.endswith("| 300.0 | 5.00 | 2.50 | 2.00 | 1 |"), int8  # texts/s, the three speed-ups, threads
    assert next(line for line in lines if "| ONNX fp32 fused |" in line).endswith("| 160.0 | 2.50 | 1.25 |  | 1 |")
    note = next(line for line in lines if line.startswith("rt/full (base, seed 1)"))
    assert "quantized from the fused fp32 graph" in note and "Attention ×6" in note
    assert "pytorch_bf16 not measured: this CPU has no native bf16" in note
    csv = pd.read_csv(tmp_path / "report" / "deploy.csv")
    assert csv.loc[csv["format"] == "onnx_int8", "speedup_b32_vs_onnx_fused"].item() == pytest.approx(300 / 160)


SOURCE = {"per_channel": True, "reduce_range": True, "source": "onnx_fused"}


def _predict(args, stdin=None, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "dapt.deploy.predict", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_predict_cli(task, exported, tmp_path):
    """Lines on stdin, a text file and a CSV column; PyTorch folder and .onnx file give the same labels."""
    from dapt.deploy.onnx import export_onnx

    folder = exported("full")
    texts = _test_texts(task)[:10]
    res = _predict(["--model", str(folder), "--batch-size", "3"], stdin="\n".join(texts) + "\n")
    assert res.returncode == 0, res.stderr
    out = pd.read_csv(__import__("io").StringIO(res.stdout))
    assert list(out.columns) == ["line", "label", "p_neg", "p_pos"] and len(out) == 10
    np.testing.assert_allclose(out[["p_neg", "p_pos"]].sum(axis=1), 1.0, atol=1e-5)
    onnx = export_onnx(folder, tmp_path / "onnx")
    pd.DataFrame({"review": texts}).to_csv(tmp_path / "in.csv", index=False)
    res = _predict(
        [
            "--model",
            str(onnx),
            "--input",
            str(tmp_path / "in.csv"),
            "--column",
            "review",
            "--output",
            str(tmp_path / "out.csv"),
        ]
    )
    assert res.returncode == 0, res.stderr
    via_onnx = pd.read_csv(tmp_path / "out.csv")
    assert (via_onnx["label"] == out["label"]).all()
    np.testing.assert_allclose(via_onnx["p_pos"], out["p_pos"], atol=1e-4)


def test_predict_keeps_one_row_per_input_line_and_refuses_bad_input_in_one_line(task, exported, tmp_path):
    """Row N of the output is line N of the input (blank lines keep their place, labelled as an empty text is);
    bytes that are not UTF-8 and a max_length below 8 are one-line errors, not tracebacks or silently ignored."""
    folder = exported("full")
    texts = _test_texts(task)[:4]
    lines = [texts[0], "", texts[1], "   ", texts[2], texts[3]]
    res = _predict(["--model", str(folder)], stdin="\n".join(lines) + "\n")
    assert res.returncode == 0, res.stderr
    out = pd.read_csv(__import__("io").StringIO(res.stdout), keep_default_na=False)
    assert out["line"].tolist() == [1, 2, 3, 4, 5, 6]
    assert "2 blank line(s) labelled as empty texts" in res.stderr
    alone = _predict(["--model", str(folder)], stdin="\n".join(texts) + "\n")
    ref = pd.read_csv(__import__("io").StringIO(alone.stdout))
    assert out["label"].iloc[[0, 2, 4, 5]].tolist() == ref["label"].tolist()
    latin = tmp_path / "latin.txt"
    latin.write_bytes("un film très réussi\n".encode("latin-1"))
    _one_line_error(_predict(["--model", str(folder), "--input", str(latin)]), str(latin), "not utf-8", "--encoding")
    ok = _predict(["--model", str(folder), "--input", str(latin), "--encoding", "latin-1"])
    assert ok.returncode == 0 and ok.stdout.count("\n") == 2, ok.stderr
    for bad in ("0", "-5"):
        res = _predict(["--model", str(folder), "--max-length", bad], stdin="a text\n")
        _one_line_error(res, "--max-length", f"{bad} tokens: a row needs at least 8")


def _one_line_error(res, *fragments):
    assert res.returncode == 2, (res.returncode, res.stderr[-1500:])
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), res.stderr[-1500:]
    for f in fragments:
        assert f in last, last
    return last


def test_bad_inputs(task, runs, exported, tmp_path):
    """Empty text file, an ONNX opset the runtime lacks, a run that was not fine-tuned, a method that
    cannot be exported: one line each, exit 2, no output written."""
    import onnx

    folder = exported("full")
    (tmp_path / "empty.txt").write_text("\n  \n")
    res = _predict(
        ["--model", str(folder), "--input", str(tmp_path / "empty.txt"), "--output", str(tmp_path / "o.csv")]
    )
    _one_line_error(res, "empty.txt", "no texts")
    assert not (tmp_path / "o.csv").exists()

    from dapt.deploy.onnx import export_onnx

    model = onnx.load(str(export_onnx(folder, tmp_path / "onnx")))
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            op.version = 99
    bad = tmp_path / "onnx" / "model.onnx"
    onnx.save(model, str(bad))
    res = _predict(["--model", str(bad), "--output", str(tmp_path / "o.csv")], stdin="a fine film\n")
    _one_line_error(res, "model.onnx", "cannot load it", "opset")
    assert not (tmp_path / "o.csv").exists()
    data = bad.read_bytes()  # a truncated file is damaged, not an opset problem
    bad.write_bytes(data[: len(data) // 2])
    res = _predict(["--model", str(bad), "--output", str(tmp_path / "o.csv")], stdin="a fine film\n")
    last = _one_line_error(res, "model.onnx", "not a complete ONNX model", "export it again")
    assert "opset" not in last and not (tmp_path / "o.csv").exists()

    script = str(REPO / "scripts" / "deploy_export.py")
    not_run = tmp_path / "never" / "model"
    not_run.mkdir(parents=True)
    common = ["--tokenized", str(task[2]), "--formats", "pytorch,onnx,onnx_int8"]
    res = subprocess.run(
        [
            sys.executable,
            script,
            "--candidates",
            json.dumps(
                [
                    {
                        "artifact": f"{not_run}",
                        "train_json": f"{not_run.parent}/train.json",
                        "base": str(task[0]),
                        "run": {},
                    }
                ]
            ),
            "--out",
            str(tmp_path / "dep1"),
            *common,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    _one_line_error(res, "not a fine-tuned run")
    assert not (tmp_path / "dep1").exists()
    prefix = runs("prefix")
    res = subprocess.run(
        [
            sys.executable,
            script,
            "--candidates",
            json.dumps(
                [{"artifact": f"{prefix}/model", "train_json": f"{prefix}/train.json", "base": str(task[0]), "run": {}}]
            ),
            "--out",
            str(tmp_path / "dep2"),
            *common,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    _one_line_error(res, "method prefix", "cannot be exported")
    assert not (tmp_path / "dep2").exists()
    lora = runs("lora")
    res = subprocess.run(
        [
            sys.executable,
            script,
            "--candidates",
            f'[{{"artifact": "{lora}/model", "train_json": "{lora}/train.json", "base": "{task[0]}", "run": {{}}}}]',
            "--out",
            str(tmp_path / "dep3"),
            "--opset",
            "40",
            *common,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    _one_line_error(res, "deploy.opset: 40")
    assert not (tmp_path / "dep3").exists()


def test_workflow_deploys_the_best_run_per_method(tmp_path):
    """The tiny study cut to the base variant, LoRA, seeds 1-2, with a deploy: block: target `deploy`
    exports the better seed by validation score, measures four formats (and PyTorch bf16 where the CPU runs
    it natively), and writes the deployment
    table and plot; the default target includes them; a prompt-tuning method in deploy.methods is
    refused before any job runs."""
    import json

    from conftest import make_workdir, run_snakemake, tiny_config

    config = tiny_config()
    config["variants"] = {"base": []}
    config["methods"] = {"lora": {"lr": 3.0e-3, "r": 4, "alpha": 8}}
    config["seeds"] = [1, 2]
    config["deploy"] = {"latency_texts": 5, "threads": 1}
    workdir = make_workdir(tmp_path / "study", config)
    proc = run_snakemake(workdir, "-n")  # with a deploy: block, the default target includes the stage
    assert proc.returncode == 0 and "deploy_report" in proc.stdout and "deploy_measure" in proc.stdout, proc.stdout[
        -3000:
    ]
    proc = run_snakemake(workdir, "deploy")
    assert proc.returncode == 0, proc.stderr[-5000:]
    for method in ("lora",):
        export = workdir / "results" / "deploy" / "rt_polarity" / method
        info = json.loads((export / "export" / "deploy.json").read_text())
        scores = {
            s: json.loads(
                (workdir / f"results/finetune/rt_polarity/tiny/base/{method}/seed{s}/train.json").read_text()
            )["best_validation"]
            for s in (1, 2)
        }
        assert info["validation_score"] == max(scores.values()) and info["run"]["seed"] == max(scores, key=scores.get)
        measured = json.loads((export / "measure.json").read_text())
        rows = {r["format"]: r for r in measured["rows"]}
        bf16 = ["pytorch_bf16"] if "pytorch_bf16" in rows else []  # a peer only where the CPU runs bf16 natively
        assert list(rows) == ["pytorch", *bf16, "onnx", "onnx_fused", "onnx_int8"]
        assert bf16 or measured["skipped"][0]["format"] == "pytorch_bf16"
        assert all(r["threads"] == 1 and r["latency_texts"] == 5 and r["peak_rss_mb"] > 0 for r in rows.values())
        assert abs(rows["onnx"]["f1_diff_vs_pytorch"]) < 1e-9 and abs(rows["onnx_fused"]["f1_diff_vs_pytorch"]) < 1e-9
        assert rows["onnx_int8"]["size_ratio_vs_pytorch"] < 0.6
        assert info["fusion"]["applied"] and measured["fusion"] == info["fusion"]
    table = (workdir / "results" / "report" / "deploy.md").read_text()
    assert "ONNX int8" in table and "ONNX fp32 fused" in table and "onnxruntime" in table
    assert (workdir / "results" / "report" / "deploy.png").stat().st_size > 1000
    assert len(pd.read_csv(workdir / "results" / "report" / "deploy.csv")) == 4 + len(bf16)
    # the default target adds the study's own report; Snakemake's HTML report captions the deploy files
    assert run_snakemake(workdir).returncode == 0
    proc = run_snakemake(workdir, "--report", str(workdir / "report.html"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (workdir / "report.html").read_text(errors="replace")
    assert "deploy.md" in html and "deploy.png" in html and "table.md" in html

    config["methods"]["prompt"] = {"lr": 3e-2, "num_virtual_tokens": 4}
    config["deploy"]["methods"] = ["lora", "prompt"]
    make_workdir(workdir, config)
    proc = run_snakemake(workdir, "-n")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "deploy.methods[1]" in proc.stderr
