"""Experiment tracking, off unless the study config has a `tracking:` block: every pretraining and
fine-tuning job logs its parameters, curves and final metrics as one run in MLflow and/or Weights &
Biases, grouped by study (MLflow experiment, W&B group) and tagged with its task, model, variant,
method, seed (pretraining: model, chain).

The rules hand a job its tracking settings and tags as JSON in the environment variable
`DAPT_TRACKING` (rules/common.smk, `tracking_env`): a job without it imports neither client (their
imports cost seconds), and turning tracking on or off reruns no pretraining or fine-tuning job. The run is logged once,
when the job has written its outputs, from what it wrote: a job killed and resumed is still one run.
Tracking never fails a study: a client that is not installed, a server that is down or refuses the
run is one `warning:` line in the job's log, and the results are unaffected.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dapt.core.errors import DIVERGED, diverged

ENV = "DAPT_TRACKING"
BACKENDS = ("mlflow", "wandb")
#: A tracking server that is down must cost a job seconds, not MLflow's default minutes of retries.
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}
PARAM_CHARS = 500  # a parameter's value is shown, not stored whole (MLflow's limit is a few thousand)


def job_settings(tracking: Mapping | None, study: str, job: str, tags: Mapping[str, Any]) -> dict | None:
    """What a rule puts in DAPT_TRACKING for one job: the `tracking:` block, the study's name and the
    job's tags (None when the study tracks nothing)."""
    if not tracking or not any(b in tracking for b in BACKENDS):
        return None
    return {
        **{b: dict(tracking[b]) for b in BACKENDS if b in tracking},
        "study": tracking.get("study") or study,
        "job": job,
        "tags": {k: str(v) for k, v in tags.items()},
    }


def log_pretrain(params: Mapping, summary: Mapping, log: Sequence[Sequence[float]]) -> None:
    """A pretraining stage: its MLM settings, loss/lr/tokens per step, and its summary's totals."""
    if not os.environ.get(ENV):
        return
    curves = {
        "mlm_loss": [(int(r[0]), r[1]) for r in log],
        "lr": [(int(r[0]), r[2]) for r in log],
        "tokens": [(int(r[0]), r[3]) for r in log],
    }
    keys = (
        "steps",
        "tokens",
        "final_loss",
        "first_loss",
        "seconds",
        "peak_memory_mb",
        "total_steps",
        "total_tokens",
        "blocks",
        "head_warmup_steps",
    )
    log_run(dict(params, precision=summary.get("precision")), curves, {k: summary[k] for k in keys if k in summary})


def log_finetune(summary: Mapping, log: Sequence[Sequence[float]], columns: Sequence[str]) -> None:
    """A fine-tuning run: its hyperparameters, per-epoch loss and validation scores, and its summary."""
    if not os.environ.get(ENV):
        return
    step = columns.index("step")
    curves = {c: [(int(r[step]), r[i]) for r in log] for i, c in enumerate(columns) if c != "step"}
    keys = (
        "best_validation",
        "best_epoch",
        "epochs_run",
        "train_steps",
        "n_train",
        "n_validation",
        "trainable_params",
        "trainable_pct",
        "seconds",
        "peak_memory_mb",
    )
    status = {"status": DIVERGED} if diverged(summary) else {}
    if status:  # a run recorded as failed: no best epoch, the step it diverged at instead
        keys = ("diverged_step", *keys[2:])
    params = dict(
        summary.get("params") or {}, precision=summary.get("precision"), pretrain=summary.get("pretrain"), **status
    )
    log_run(params, curves, {k: summary[k] for k in keys if k in summary})


def log_run(params: Mapping, curves: Mapping[str, Iterable[tuple[int, float]]], metrics: Mapping[str, Any]) -> None:
    """Log one run to every backend DAPT_TRACKING names; a failing backend is a warning line."""
    text = os.environ.get(ENV)
    if not text:
        return
    try:
        settings = json.loads(text)
    except ValueError as err:
        warn("settings", f"{ENV} is not JSON ({err})")
        return
    curves = {k: [(s, float(v)) for s, v in points if _number(v)] for k, points in curves.items()}
    metrics = {k: float(v) for k, v in metrics.items() if _number(v)}
    flat = {k: v if isinstance(v, (int, float, bool)) else _param_text(v) for k, v in flatten(params).items()}
    for backend in BACKENDS:
        if backend in settings:
            try:
                (_log_mlflow if backend == "mlflow" else _log_wandb)(settings, flat, curves, metrics)
            except ImportError as err:
                warn(backend, f"not installed ({err.name or err}); pip install -r requirements.txt")
            except Exception as err:  # noqa: BLE001 (any client failure: the study goes on)
                warn(backend, f"{type(err).__name__}: {err}")


def warn(backend: str, reason: str) -> None:
    line = " ".join(str(reason).split())[:400]
    print(f"warning: tracking ({backend}) skipped: {line}; the job's results are unaffected", flush=True)


def run_name(settings: Mapping) -> str:
    tags = settings.get("tags") or {}
    if settings.get("job") == "pretrain":
        return f"pretrain {tags.get('model', '')}/{tags.get('chain', '')}"
    return f"{settings.get('job', 'job')} " + "/".join(
        tags[k] if k != "seed" else f"seed{tags[k]}"
        for k in ("task", "model", "variant", "method", "seed")
        if k in tags
    )


def all_tags(settings: Mapping) -> dict[str, str]:
    return {"study": str(settings["study"]), "job": str(settings.get("job", "")), **(settings.get("tags") or {})}


def flatten(obj: Mapping, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:PARAM_CHARS]


def _log_mlflow(settings: Mapping, params: dict, curves: dict, metrics: dict) -> None:
    for key, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    spec = settings["mlflow"]
    if "://" not in spec["tracking_uri"] or spec["tracking_uri"].startswith("file:"):
        # MLflow 3 keeps its file store in "maintenance mode" and refuses it unless told: a study that
        # names one asked for it (a server: http://...; a database: sqlite:// with mlflow's SQL extras)
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=spec["tracking_uri"])
    name = spec.get("experiment") or settings["study"]
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            experiment_id = client.create_experiment(name)
        except Exception:  # noqa: BLE001 (another job created it meanwhile)
            experiment_id = client.get_experiment_by_name(name).experiment_id
    else:
        experiment_id = experiment.experiment_id
    run = client.create_run(experiment_id, run_name=run_name(settings), tags=all_tags(settings))
    now = int(time.time() * 1000)
    points = [Metric(k, v, now, s) for k, series in curves.items() for s, v in series]
    points += [Metric(k, v, now, 0) for k, v in metrics.items()]
    items = [Param(k, _param_text(v)) for k, v in params.items()]
    for start in range(0, max(len(points), len(items)), 100):  # MLflow's batch limits
        client.log_batch(
            run.info.run_id,
            metrics=points[start : start + 100],
            params=items[start : start + 100],
            tags=[RunTag("mlflow.source.name", "dapt-workflow")] if start == 0 else [],
        )
    client.set_terminated(run.info.run_id)


def _log_wandb(settings: Mapping, params: dict, curves: dict, metrics: dict) -> None:
    import wandb

    spec = settings["wandb"]
    tags = all_tags(settings)
    run = wandb.init(
        project=spec["project"],
        entity=spec.get("entity"),
        group=tags["study"],
        job_type=tags["job"],
        name=run_name(settings),
        tags=[f"{k}:{v}"[:64] for k, v in tags.items()],
        config={**params, **{f"tag.{k}": v for k, v in tags.items()}},
        mode=spec.get("mode", "online"),
        dir=spec.get("dir"),
        reinit="finish_previous",
        settings=wandb.Settings(silent=True, console="off", init_timeout=30),
    )
    try:
        rows: dict[int, dict[str, float]] = {}
        for key, series in curves.items():
            for step, value in series:
                rows.setdefault(step, {})[key] = value
        for step in sorted(rows):  # W&B needs steps in order
            run.log(rows[step], step=step)
        run.summary.update(metrics)
    finally:
        run.finish()
