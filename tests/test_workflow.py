"""The whole DAG on the tiny study: every output exists and parses, MLM loss falls, reruns are free."""

from __future__ import annotations

import json
import re
import time

import pandas as pd
import pytest
import yaml
from conftest import run_snakemake, tiny_config

RUN_DIRS = [
    f"rt_polarity/tiny/{v}/{m}/seed{s}"
    for v in ("base", "dapt", "tapt", "dapt_tapt")
    for m in ("full", "lora")
    for s in (1, 2)
]


def test_every_run_has_metrics_and_predictions(tiny_study):
    for run in RUN_DIRS:
        metrics = json.loads((tiny_study / "results/evaluate" / run / "metrics.json").read_text())
        for key in ("accuracy", "macro_f1", "micro_f1"):
            assert 0.0 <= metrics[key] <= 1.0
        assert metrics["n_test"] == 100
        assert sum(map(sum, metrics["confusion_matrix"])) == 100
        assert set(metrics["per_class"]) == {"neg", "pos"}
        preds = pd.read_csv(tiny_study / "results/evaluate" / run / "predictions.csv")
        assert list(preds.columns) == ["id", "gold", "predicted", "p_neg", "p_pos"]
        assert len(preds) == 100 and preds["id"].is_unique
        assert ((preds[["p_neg", "p_pos"]].sum(axis=1) - 1).abs() < 1e-4).all()
        assert (preds["gold"] == preds["predicted"]).mean() == pytest.approx(metrics["accuracy"])
        log = pd.read_csv(tiny_study / "results/finetune" / run / "log.csv")
        assert len(log) >= 1 and log["val_macro_f1"].between(0, 1).all()


def test_mlm_loss_falls(tiny_study):
    for chain in ("dapt-imdb", "tapt-rt_polarity", "dapt-imdb+tapt-rt_polarity"):
        loss = pd.read_csv(tiny_study / "results/pretrain/tiny" / chain / "loss.csv")["loss"]
        assert len(loss) >= 3
        k = max(1, len(loss) // 3)
        assert loss.tail(k).mean() < loss.head(k).mean(), chain


def test_chains_continue_from_their_parent(tiny_study):
    summary = json.loads((tiny_study / "results/pretrain/tiny/dapt-imdb+tapt-rt_polarity/summary.json").read_text())
    dapt = json.loads((tiny_study / "results/pretrain/tiny/dapt-imdb/summary.json").read_text())
    assert summary["total_steps"] == dapt["steps"] + summary["steps"]
    assert summary["head_warmup_steps"] == 0  # the DAPT checkpoint already has a trained MLM head
    metrics = json.loads((tiny_study / "results/evaluate" / RUN_DIRS[-1] / "metrics.json").read_text())
    assert metrics["pretrain"]["chain"] == "dapt-imdb+tapt-rt_polarity"


def test_report_files(tiny_study):
    report = tiny_study / "results/report"
    table = pd.read_csv(report / "table.csv")
    assert {"base", "dapt", "tapt", "dapt_tapt"} <= {c.split("_mean")[0] for c in table.columns if c.endswith("_mean")}
    md = (report / "table.md").read_text()
    assert "±" in md and "rt_polarity" in md
    assert "\\begin{tabular}" in (report / "table.tex").read_text()
    for png in ("scores.png", "mlm_loss.png", "finetune_curves.png", "f1_vs_params.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    provenance = json.loads((report / "provenance.json").read_text())
    assert "torch" in json.dumps(provenance)


def _dry_run_jobs(workdir, *args) -> dict[str, int]:
    proc = run_snakemake(workdir, "-n", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    if "Nothing to be done" in out:
        return {}
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.M) if m.group(1) != "total"}


def test_finished_study_reruns_nothing_fast(tiny_study):
    start = time.perf_counter()
    proc = run_snakemake(tiny_study)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr
    print(f"no-op rerun: {elapsed:.2f}s")


def test_changed_finetune_hyperparameter_reruns_only_downstream(tiny_study, tmp_path):
    config = tiny_config()
    config["finetune"]["lr"] = 5e-4
    (tiny_study / "changed.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    jobs = _dry_run_jobs(tiny_study, "--configfile", str(tiny_study / "changed.yaml"))
    assert jobs.get("finetune", 0) > 0
    assert set(jobs) <= {"finetune", "evaluate", "report", "all"}, jobs


def test_changed_lora_targets_recheck_the_model_and_rerun_lora(tiny_study):
    """The model check is asked for by `all`, not taken as an ancient() input: with such an edge Snakemake 9
    skips the rerun checks of every job below a job that reruns, and new targets re-checked the model but
    kept the old LoRA runs."""
    config = tiny_config()
    config["methods"]["lora"]["target_modules"] = ["query", "key"]
    (tiny_study / "targets.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    jobs = _dry_run_jobs(tiny_study, "--configfile", str(tiny_study / "targets.yaml"))
    assert jobs.get("check_model") == 1 and jobs.get("finetune", 0) > 0, jobs
    assert set(jobs) <= {"check_model", "finetune", "evaluate", "report", "all"}, jobs


def test_snakemake_html_report(tiny_study):
    proc = run_snakemake(tiny_study, "--report", str(tiny_study / "report.html"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (tiny_study / "report.html").read_text(errors="replace")
    for name in ("table.md", "scores.png", "significance.csv", "provenance.json"):
        assert name in html
