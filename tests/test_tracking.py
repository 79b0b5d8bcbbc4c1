"""Experiment tracking: off by default (no client imported), every pretraining and fine-tuning job of a
study logged as one run to a local MLflow file store and to W&B in offline mode (read back from
disk; no network), and a tracker that is down or not installed is one warning line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, make_workdir, run_snakemake, tiny_config

from dapt.runtime import tracking

TAGS = {"task": "rt", "model": "m", "variant": "tapt", "method": "full", "seed": 2}


def use(monkeypatch, backends: dict, job: str = "finetune", tags: dict = TAGS) -> None:
    settings = tracking.job_settings(backends, "mystudy", job, tags)
    monkeypatch.setenv(tracking.ENV, json.dumps(settings))


def test_jobs_without_tracking_import_no_client():
    """What a job imports is a measured cost: without DAPT_TRACKING, logging is a no-op that imports nothing."""
    code = (
        "import os, sys; os.environ.pop('DAPT_TRACKING', None); "
        "import dapt.finetune.fine_tuning, dapt.pretrain.pretraining; "
        "from dapt.runtime import tracking; tracking.log_run({'lr': 1}, {'loss': [(1, 0.5)]}, {'f1': 0.7}); "
        "tracking.log_finetune({'params': {}}, [[1, 3, 0.5, 0.6, 0.6, 1e-4]], "
        "['epoch', 'step', 'train_loss', 'val_accuracy', 'val_macro_f1', 'lr']); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'wandb')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
    assert tracking.job_settings(None, "s", "finetune", TAGS) is None
    assert tracking.job_settings({"study": "x"}, "s", "finetune", TAGS) is None


def test_a_tracker_that_is_down_is_one_warning_line(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    use(monkeypatch, {"mlflow": {"tracking_uri": "http://127.0.0.1:9"}})  # nothing listens on port 9
    tracking.log_run({"lr": 1e-4}, {"train_loss": [(1, 0.5)]}, {"best_validation": 0.7})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: tracking (mlflow) skipped: "), lines
    assert lines[0].endswith("; the job's results are unaffected")


@pytest.mark.parametrize("backend", ["mlflow", "wandb"])
def test_a_client_that_is_not_installed_is_one_warning_line(backend, monkeypatch, capsys, tmp_path):
    for name in [m for m in sys.modules if m.split(".")[0] == backend] + [backend]:
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    spec = {
        "mlflow": {"tracking_uri": (tmp_path / "mlruns").as_uri()},
        "wandb": {"project": "p", "mode": "offline", "dir": str(tmp_path)},
    }[backend]
    use(monkeypatch, {backend: spec})
    tracking.log_run({"lr": 1e-4}, {}, {"best_validation": 0.7})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: tracking ({backend}) skipped: not installed"), lines


def test_bad_settings_are_a_warning_not_a_failure(monkeypatch, capsys):
    monkeypatch.setenv(tracking.ENV, "{not json")
    tracking.log_run({}, {}, {})
    assert capsys.readouterr().out.startswith("warning: tracking (settings) skipped: DAPT_TRACKING is not JSON")


def test_a_diverged_run_is_logged_as_such(monkeypatch, tmp_path):
    """A run recorded as failed logs its status and the step it diverged at, not a best validation score."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    use(monkeypatch, {"mlflow": {"tracking_uri": (tmp_path / "mlruns").as_uri()}})
    summary = {
        "params": {"lr": 1e6},
        "status": "diverged",
        "diverged_step": 3,
        "best_validation": -1.0,
        "best_epoch": 0,
        "epochs_run": 0,
        "train_steps": 2,
    }
    tracking.log_finetune(summary, [], ["epoch", "step", "train_loss", "val_accuracy", "val_macro_f1", "lr"])
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.params["status"] == "diverged" and run.data.metrics["diverged_step"] == 3
    assert "best_validation" not in run.data.metrics and "best_epoch" not in run.data.metrics


def test_flatten_and_names():
    assert tracking.flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
    settings = tracking.job_settings({"wandb": {"project": "p"}}, "s", "finetune", TAGS)
    assert tracking.run_name(settings) == "finetune rt/m/tapt/full/seed2"
    assert tracking.all_tags(settings) == {"study": "s", "job": "finetune", **{k: str(v) for k, v in TAGS.items()}}


# --- a real study, logged ------------------------------------------------------------------------


def wandb_runs(root: Path) -> list[dict]:
    """Every offline W&B run under `root` as its run file records it: config, tags, summary, history."""
    from wandb.proto import wandb_internal_pb2

    runs = []
    for path in sorted(root.glob("wandb/offline-run-*/*.wandb")):
        run = {"config": {}, "summary": {}, "history": [], "tags": []}
        for data in wandb_records(path):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run["config"] = {u.key: json.loads(u.value_json) for u in record.run.config.update}
                run.update(tags=list(record.run.tags), group=record.run.run_group, job_type=record.run.job_type)
            elif kind == "summary":
                run["summary"].update(
                    {u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in record.summary.update}
                )
            elif kind == "history":
                run["history"].append(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                )
        runs.append(run)
    return runs


def wandb_records(path: Path):
    """The records of a .wandb run file: a 7-byte header (":W&B", magic 0xBEE1, version), then LevelDB
    log blocks of 32 KiB holding records (crc, length, type), long ones in pieces (full/first/middle/last)."""
    import struct

    data = path.read_bytes()
    assert struct.unpack("<4sH", data[:6]) == (b":W&B", 0xBEE1), path
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # no room for a record header: the block's tail is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            yield pending
            pending = b""


@pytest.fixture(scope="module")
def tracked_study(tmp_path_factory):
    """The tiny study cut to TAPT + full fine-tuning, seed 1, tracked by MLflow (file store) and W&B (offline)."""
    root = tmp_path_factory.mktemp("tracked")
    config = tiny_config()
    config.update(
        variants={"tapt": ["tapt"]},
        methods={"full": {}},
        seeds=[1],
        finetune={**config["finetune"], "epochs": 2},
        tracking={
            "mlflow": {"tracking_uri": (root / "mlruns").as_uri()},
            "wandb": {"project": "dapt-test", "mode": "offline", "dir": str(root)},
        },
    )
    workdir = make_workdir(root / "study", config)
    proc = run_snakemake(workdir, env={"WANDB_MODE": "offline", "WANDB_DIR": str(root), "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root, workdir, config


def test_every_job_is_one_mlflow_run_with_params_curves_and_metrics(tracked_study, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # what dapt.runtime.tracking sets for a file store
    from mlflow.tracking import MlflowClient

    root, workdir, _ = tracked_study
    client = MlflowClient(tracking_uri=(root / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("study")  # the config file's name: the study's group
    runs = {r.data.tags["job"]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["finetune", "pretrain"] and len(client.search_runs([experiment.experiment_id])) == 2
    ft, pt = runs["finetune"], runs["pretrain"]
    assert {k: ft.data.tags[k] for k in ("study", "task", "model", "variant", "method", "seed")} == {
        "study": "study",
        "task": "rt_polarity",
        "model": "tiny",
        "variant": "tapt",
        "method": "full",
        "seed": "1",
    }
    assert ft.info.run_name == "finetune rt_polarity/tiny/tapt/full/seed1" and ft.info.status == "FINISHED"
    train = json.loads((workdir / "results/finetune/rt_polarity/tiny/tapt/full/seed1/train.json").read_text())
    assert float(ft.data.params["lr"]) == train["params"]["lr"] and ft.data.params["kind"] == "full"
    assert ft.data.metrics["best_validation"] == pytest.approx(train["best_validation"])
    curve = client.get_metric_history(ft.info.run_id, "val_macro_f1")
    log = (workdir / "results/finetune/rt_polarity/tiny/tapt/full/seed1/log.csv").read_text().splitlines()[1:]
    assert [(m.step, round(m.value, 6)) for m in curve] == [
        (int(r.split(",")[1]), round(float(r.split(",")[4]), 6)) for r in log
    ]
    assert pt.data.tags["chain"] == "tapt-rt_polarity" and pt.data.tags["model"] == "tiny"
    summary = json.loads((workdir / "results/pretrain/tiny/tapt-rt_polarity/summary.json").read_text())
    assert len(client.get_metric_history(pt.info.run_id, "mlm_loss")) == summary["steps"]
    assert pt.data.metrics["final_loss"] == pytest.approx(summary["final_loss"])


def test_every_job_is_one_wandb_offline_run(tracked_study):
    root, workdir, _ = tracked_study
    runs = {r["job_type"]: r for r in wandb_runs(root)}
    assert sorted(runs) == ["finetune", "pretrain"] and len(wandb_runs(root)) == 2
    ft, pt = runs["finetune"], runs["pretrain"]
    assert ft["group"] == pt["group"] == "study" and {"variant:tapt", "method:full", "seed:1"} <= set(ft["tags"])
    train = json.loads((workdir / "results/finetune/rt_polarity/tiny/tapt/full/seed1/train.json").read_text())
    assert ft["config"]["lr"] == train["params"]["lr"] and ft["config"]["tag.task"] == "rt_polarity"
    assert ft["summary"]["best_validation"] == pytest.approx(train["best_validation"])
    log = (workdir / "results/finetune/rt_polarity/tiny/tapt/full/seed1/log.csv").read_text().splitlines()[1:]
    assert [(row["_step"], round(row["val_macro_f1"], 6)) for row in ft["history"]] == [
        (int(r.split(",")[1]), round(float(r.split(",")[4]), 6)) for r in log
    ]
    summary = json.loads((workdir / "results/pretrain/tiny/tapt-rt_polarity/summary.json").read_text())
    assert [row["_step"] for row in pt["history"]] == list(range(1, summary["steps"] + 1))
    assert (
        pt["summary"]["final_loss"] == pytest.approx(summary["final_loss"]) and "chain:tapt-rt_polarity" in pt["tags"]
    )


def test_turning_tracking_off_reruns_no_training_job(tracked_study):
    """Only the report reruns (its provenance records the whole config); no pretraining or fine-tuning job."""
    import re

    import yaml

    root, workdir, config = tracked_study
    config = {k: v for k, v in config.items() if k != "tracking"}
    (workdir / "study.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    proc = run_snakemake(workdir, "-n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout.split("Job stats:")[-1], re.M))
    assert set(jobs) - {"total"} == {"report", "all"}, jobs
