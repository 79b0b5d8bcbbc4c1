"""A fine-tuning run whose loss stops being finite (a sweep's too-large learning rate): with
`on_divergence: record` (the default) it is written down as a failed run that evaluation, deploy
and the report name, so the rest of the study still runs to its report; with `fail` the job fails
with one line. Real divergence: a tiny BERT at lr 1e6 (NaN at its second step: the first one's update). A run
missing for another reason (a crashed job) is listed by the partial report, rule `report_available`."""

from __future__ import annotations

import json

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
from test_sweeps import SWEEP_CONFIG, _report, make_sweep_study

TRAIN = {
    "epochs": 2,
    "batch_size": 8,
    "eval_batch_size": 32,
    "grad_accum": 1,
    "lr": 1e6,
    "weight_decay": 0.0,
    "warmup_ratio": 0.0,
    "patience": 10,
    "max_grad_norm": 1.0,
    "save_steps": 2,
    "metric": "macro_f1",
    "max_length": 48,
    "kind": "full",
}


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    from dapt.data.model_store import load_tokenizer
    from dapt.runtime.context import setup_runtime

    root = tmp_path_factory.mktemp("diverge")
    base = tiny_base(root, load_tokenizer(minilm_dir()))
    df = rt_examples()
    tokenized = write_tokenized_task(
        root, {"train": df[:32], "validation": df[32:64], "test": df[64:124]}, ["neg", "pos"], base, 48
    )
    torch.set_num_threads(1)
    return base, tokenized, setup_runtime(0, "fp32", threads=1)


def test_a_diverged_run_is_recorded_evaluated_as_failed_and_never_deployed(tiny_task, tmp_path):
    import importlib.util

    from dapt.finetune.evaluation import evaluate_run
    from dapt.finetune.fine_tuning import finetune

    base, tokenized, runtime = tiny_task
    out, ckpt = tmp_path / "run", tmp_path / "ckpt"
    summary = finetune(str(base), str(tokenized), str(out), str(ckpt), TRAIN, 1, runtime, on_divergence="record")
    assert summary["status"] == "diverged" and summary["diverged_step"] == 2  # counted from 1, as the logs
    assert "training diverged" in summary["error"]
    assert sorted(p.name for p in (out / "model").iterdir()) == ["diverged.json"]  # no weights to use
    assert json.loads((out / "train.json").read_text())["status"] == "diverged"
    assert (out / "log.csv").read_text().splitlines()[0].startswith("epoch,step")
    assert not ckpt.exists() or not any(ckpt.iterdir())
    context = {"task": "t", "model": "m", "variant": "base", "method": "full", "seed": 1}
    metrics, preds, robust = tmp_path / "metrics.json", tmp_path / "predictions.csv", tmp_path / "robustness.json"
    result = evaluate_run(
        str(out / "model"),
        str(base),
        str(tokenized),
        str(out / "train.json"),
        str(metrics),
        str(preds),
        runtime,
        context,
        32,
        {},
        str(robust),
    )
    assert result["status"] == "diverged" and "accuracy" not in result
    assert json.loads(metrics.read_text())["error"] == summary["error"]
    assert (
        list(pd.read_csv(preds).columns) == ["id", "gold", "predicted", "p_neg", "p_pos"] and pd.read_csv(preds).empty
    )
    # deploy skips it: a healthy candidate after it is chosen, and a method whose every run diverged is one line
    spec = importlib.util.spec_from_file_location("deploy_export", REPO / "scripts" / "deploy_export.py")
    deploy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(deploy)
    good = tmp_path / "good"
    (good / "model").mkdir(parents=True)
    (good / "model" / "method.json").write_text("{}")  # what a fine-tuned run's artifact holds
    (good / "train.json").write_text(json.dumps({"best_validation": 0.1}))
    diverged = {"artifact": str(out / "model"), "train_json": str(out / "train.json")}
    chosen = deploy.choose([diverged, {"artifact": str(good / "model"), "train_json": str(good / "train.json")}])
    assert chosen["artifact"] == str(good / "model") and chosen["n_candidates"] == 2
    from dapt.core.errors import UserError

    with pytest.raises(UserError, match="all 1 candidate runs diverged"):
        deploy.choose([diverged])


def test_fail_mode_stops_the_job_with_one_line_and_writes_nothing(tiny_task, tmp_path):
    from dapt.core.errors import Diverged
    from dapt.finetune.fine_tuning import finetune

    base, tokenized, runtime = tiny_task
    with pytest.raises(Diverged) as err:
        finetune(str(base), str(tokenized), str(tmp_path / "run"), str(tmp_path / "ckpt"), TRAIN, 1, runtime)
    assert "loss is nan at step 2: training diverged" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_a_healthy_run_is_unchanged_by_the_setting(tiny_task, tmp_path):
    """record vs fail: the same log and weights when nothing diverges."""
    from safetensors.torch import load_file

    from dapt.finetune.fine_tuning import finetune

    base, tokenized, runtime = tiny_task
    runs = []
    for mode in ("record", "fail"):
        out = tmp_path / mode
        summary = finetune(
            str(base),
            str(tokenized),
            str(out),
            str(tmp_path / f"ckpt-{mode}"),
            {**TRAIN, "lr": 1e-3},
            1,
            runtime,
            on_divergence=mode,
        )
        assert "status" not in summary
        runs.append(((out / "log.csv").read_text(), load_file(str(out / "model" / "model.safetensors"))))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


def _diverge(root, run: dict) -> None:
    """Turn a fake study's run into one recorded as diverged (as dapt.finetune.evaluation.record_diverged writes it)."""
    from dapt.study import layout

    path = root / "results" / "evaluate" / layout.run_key(run) / "metrics.json"
    path.write_text(
        json.dumps(
            {
                **run,
                "status": "diverged",
                "error": "finetune: loss is nan at step 7: training diverged",
                "diverged_step": 7,
                "labels": ["neg", "pos"],
            }
        )
    )
    pd.read_csv(path.parent / "predictions.csv").iloc[:0].to_csv(path.parent / "predictions.csv", index=False)


def test_the_report_names_failed_runs_and_never_chooses_their_combination(tmp_path):
    make_sweep_study(tmp_path)
    best = {"task": "rt", "model": "m", "variant": "base", "method": "lora-lr0.001-r16", "seed": 2}  # best validation
    _diverge(tmp_path, best)
    _diverge(tmp_path, {**best, "method": "full", "seed": 1})  # an unswept method loses a seed
    out = _report(tmp_path, SWEEP_CONFIG)
    sweep = pd.read_csv(out / "sweep.csv").set_index(["variant", "setting"])
    status = sweep.loc[("base", "lr=0.001, r=16"), "status"]
    assert status.startswith("incomplete: 2 of 3 runs") and status.endswith("diverged: seed 2")
    assert not sweep.loc[("base", "lr=0.001, r=16"), "chosen"]
    assert sweep.loc[("tapt", "lr=0.001, r=16"), "chosen"]  # the other variant keeps its choice
    notes = (out / "notes.md").read_text()
    assert "## Runs that failed (2)" in notes
    assert "| rt | m | base | full | 1 | 7 | finetune: loss is nan at step 7: training diverged |" in notes
    assert "## Runs that failed (2)" in (out / "table.md").read_text()
    table = pd.read_csv(out / "table.csv")
    full = table[(table["row"] == "seeds") & (table["method"] == "full")].iloc[0]
    assert full["base_n"] == 2 and full["tapt_n"] == 3  # the mean rests on the seeds that trained
    results = pd.read_csv(out / "results.csv")
    assert not ((results["method"] == "full") & (results["variant"] == "base") & (results["seed"] == 1)).any()
    assert json.loads((out / "provenance.json").read_text())["inputs"]["failed_runs"] == 2


def test_a_swept_study_with_a_diverging_learning_rate_runs_to_its_report(tmp_path):
    """Through Snakemake: lr 1e6 diverges in every job; the study still reaches its report, which
    chooses the healthy lr and names the failed runs."""
    config = tiny_config()
    config["variants"] = {"base": []}
    config["seeds"] = [1]
    config["methods"] = {"full": {"lr": [1.0e-3, 1.0e6]}}
    work = make_workdir(tmp_path / "study", config)
    result = run_snakemake(work, "--cores", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = work / "results/evaluate/rt_polarity/tiny/base/full-lr1000000.0/seed1"
    assert json.loads((run / "metrics.json").read_text())["status"] == "diverged"
    log = (work / "results/logs/finetune/rt_polarity/tiny/base/full-lr1000000.0/seed1.log").read_text()
    assert "recorded as a failed run (on_divergence: record)" in log
    sweep = pd.read_csv(work / "results/report/sweep.csv")
    assert list(sweep.loc[sweep["chosen"], "setting"]) == ["lr=0.001"]
    assert sweep.loc[~sweep["chosen"], "status"].iloc[0].endswith("diverged: seed 1")
    assert "## Runs that failed (1)" in (work / "results/report/notes.md").read_text()
    assert "warning: 1 fine-tuning run(s) diverged and were recorded as failed" in result.stdout + result.stderr
    # a job that failed for another reason leaves no metrics: report_available reports what finished
    (run / "metrics.json").unlink()
    result = run_snakemake(work, "--cores", "2", "report_available")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    partial = work / "results/report_available"
    notes = (partial / "notes.md").read_text()
    assert "## Runs missing (1)" in notes and "| rt_polarity | tiny | base | full-lr1000000.0 | 1 |" in notes
    assert "Runs that failed" not in notes
    assert list(pd.read_csv(partial / "results.csv")["run_method"]) == ["full-lr0.001"]
    assert not (run / "metrics.json").exists()  # reporting what finished reruns nothing
