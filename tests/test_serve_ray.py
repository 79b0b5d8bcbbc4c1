"""The service on Ray Serve (python -m dapt.serve.ray_app) on a local Ray instance: its replicas answer with
dapt.deploy.predict's predictions and the same JSON as python -m dapt.serve, refuse a wrong token with 401,
and Ray's autoscaler adds replicas under concurrent load (ongoing requests above the target) and removes
them once the load stops. What this cannot show: a multi-node Ray cluster (docs/serving.md).

The model: the random 2-layer BERT classifier of tests/test_serve.py, exported to ONNX.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import minilm_dir, rt_examples, tiny_bert_config

pytestmark = [
    pytest.mark.slow,
    # the push interval comes from PUSH_ENV (which replace the deprecated metrics_interval_s), so Ray's check of
    # look_back_period_s against metrics_interval_s's default does not apply; and Ray's own pydantic fields
    pytest.mark.filterwarnings("ignore:`look_back_period_s`:FutureWarning"),
    pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`:DeprecationWarning"),
]

TOKEN = "test-token-ray-7c2e9b4a1d8f6e3c5b0a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MIN, MAX = 1, 2
#: the autoscaler's settings: short delays, a target of one ongoing request per replica
AUTOSCALING = {"target_ongoing_requests": 1, "upscale_delay_s": 1, "downscale_delay_s": 3, "look_back_period_s": 2}
#: how long the replicas may take to go up under load and back down after it (2 busy cores)
UP_WITHIN_S, DOWN_WITHIN_S = 90, 60
#: Ray's replicas and proxy push their ongoing-request counts every 10 s by default: every 0.5 s here
PUSH_ENV = (
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S",
)


def texts(n: int) -> list[str]:
    return rt_examples()["text"].tolist()[:n]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    import torch
    from transformers import BertForSequenceClassification

    from dapt.core.files import write_json
    from dapt.data.model_store import load_tokenizer
    from dapt.deploy.onnx import export_onnx

    root = tmp_path_factory.mktemp("serve_ray")
    tok = load_tokenizer(minilm_dir())
    torch.manual_seed(0)
    config = tiny_bert_config(tok, initializer_range=0.5, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    BertForSequenceClassification(config).eval().save_pretrained(root / "hf")
    tok.save_pretrained(root / "hf")
    write_json(root / "hf" / "dapt_input.json", {"max_length": 48, "long_text": {"strategy": "head"}})
    return export_onnx(root / "hf", root / "onnx").parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ray_service(export):
    """A local Ray instance (its processes inherit this environment: the token, the push intervals) running
    the application with min 1 / max 2 replicas; the URL of Ray's proxy."""
    import ray
    from ray import serve

    from dapt.serve import ray_app

    mp = pytest.MonkeyPatch()
    mp.setenv("DAPT_SERVE_TOKEN", TOKEN)
    for name in PUSH_ENV:
        mp.setenv(name, "0.5")
    port = free_port()
    s, rs = ray_app.parse(
        ["--model", str(export), "--port", str(port), "--threads", "1", "--max-wait-ms", "5"]
        + ["--min-replicas", str(MIN), "--max-replicas", str(MAX), "--replica-cpus", "1"]
        + [f"--{k.replace('_', '-')}={v}" for k, v in AUTOSCALING.items()]
    )
    ray.init("local", num_cpus=MAX + 1, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        start = time.monotonic()
        ray_app.deploy(s, rs, token_expected=True)
        print(f"deployed in {time.monotonic() - start:.1f} s")
        yield f"http://127.0.0.1:{port}", rs.app_name
    finally:
        serve.shutdown()
        ray.shutdown()
        mp.undo()


def running(app_name: str) -> tuple[int, dict]:
    from dapt.serve.ray_app import replica_counts

    counts = replica_counts(app_name)
    return counts.get("RUNNING", 0), counts


def wait_for(app_name: str, ok, within: float) -> tuple[float, dict]:
    start = time.monotonic()
    while True:
        n, counts = running(app_name)
        if ok(n, counts) or time.monotonic() - start > within:
            return time.monotonic() - start, counts
        time.sleep(0.25)


def test_predictions_are_deploy_predicts_and_the_token_is_checked(ray_service, export):
    from dapt.deploy.predict import Predictor

    url, _ = ray_service
    sample = texts(8)
    res = httpx.post(url + "/v1/predict", json={"texts": sample}, headers=AUTH, timeout=60)
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["model"] == "onnx" and len(body["predictions"]) == len(sample)
    predictor = Predictor(str(export / "model.onnx"), threads=1)
    want = predictor.predict_proba(sample)
    got = [[p["probabilities"][lab] for lab in predictor.labels] for p in body["predictions"]]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert [p["label"] for p in body["predictions"]] == [predictor.labels[i] for i in want.argmax(1)]
    for headers in ({}, {"Authorization": "Bearer " + "x" * len(TOKEN)}):
        res = httpx.post(url + "/v1/predict", json={"texts": sample[:1]}, headers=headers, timeout=30)
        assert res.status_code == 401 and "bearer token" in res.json()["error"], res.text
    res = httpx.post(url + "/v1/predict", json={"texts": []}, headers=AUTH, timeout=30)
    assert res.status_code == 422 and "error" in res.json()  # the service's own refusals, through Ray's proxy
    assert httpx.get(url + "/readyz", timeout=30).json()["ready"] is True


def test_replicas_go_up_under_load_and_back_down_after(ray_service):
    url, app_name = ray_service
    assert running(app_name)[0] == MIN
    stop, statuses, lock = threading.Event(), [], threading.Lock()

    def client() -> None:
        with httpx.Client(headers=AUTH, timeout=60) as http:
            while not stop.is_set():
                status = http.post(url + "/v1/predict", json={"texts": texts(8)}).status_code
                with lock:
                    statuses.append(status)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]  # 8 ongoing > target 1
    for t in threads:
        t.start()
    try:
        up_s, counts = wait_for(app_name, lambda n, c: n > MIN, UP_WITHIN_S)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    print(f"under load: {counts} after {up_s:.1f} s, {len(statuses)} requests")
    assert counts.get("RUNNING", 0) > MIN, f"no upscale within {UP_WITHIN_S} s: {counts}"
    assert statuses and set(statuses) == {200}, f"statuses under load: {sorted(set(statuses))}"
    down_s, counts = wait_for(app_name, lambda n, c: n == MIN and sum(c.values()) == MIN, DOWN_WITHIN_S)
    print(f"after the load: {counts} after {down_s:.1f} s")
    assert running(app_name)[0] == MIN and sum(counts.values()) == MIN, f"no downscale within {DOWN_WITHIN_S} s"
    res = httpx.post(url + "/v1/predict", json={"texts": texts(2)}, headers=AUTH, timeout=60)
    assert res.status_code == 200  # the remaining replica still answers


def test_flags_are_checked_and_a_replica_without_the_token_refuses_to_start(monkeypatch):
    from dapt.core.errors import UserError
    from dapt.serve.ray_app import Replica, parse
    from dapt.serve.settings import Settings

    s, rs = parse(["--model", "m", "--max-replicas", "3", "--upscale-delay-s", "5", "--max-wait-ms", "20"])
    assert s.max_wait_ms == 20 and rs.autoscaling_config() == {
        "min_replicas": 1,
        "max_replicas": 3,
        "target_ongoing_requests": 8.0,
        "upscale_delay_s": 5.0,
        "downscale_delay_s": 600.0,
        "look_back_period_s": 30.0,
    }
    for argv, where in (
        (["--workers", "2"], "--workers"),
        (["--token=" + TOKEN], "--token"),
        (["--min-replicas", "3", "--max-replicas", "2"], "--min-replicas"),
        (["--target-ongoing-requests", "64"], "--target-ongoing-requests"),
    ):
        with pytest.raises(UserError) as err:
            parse(["--model", "m", *argv])
        assert str(err.value).startswith(where) and TOKEN not in str(err.value)
    monkeypatch.delenv("DAPT_SERVE_TOKEN", raising=False)
    with pytest.raises(RuntimeError, match="no bearer token on this node"):
        Replica(Settings(model="m").to_env(), token_expected=True)
