"""The HTTP service (python -m dapt.serve) as a real uvicorn process on 127.0.0.1: it answers, batches
concurrent requests, refuses bad bodies, tokens and oversize input with one clear message (401, 413, 422,
503 queue full), never logs a text or the token, drains on SIGTERM, gives dapt.deploy.predict's
predictions, and replaces a killed worker.

The model: a random 2-layer BERT classifier with MiniLM's real tokenizer, exported to ONNX by
dapt.deploy.onnx, reading texts as a task with max_length 48 (its dapt_input.json).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import REPO, minilm_dir, rt_examples, rt_reviews, tiny_bert_config

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from serve_process import metric, serving, stop  # noqa: E402

TOKEN = "test-token-5f1d2c9a8b7e6d4c3b2a1908"
CANARY = "zebracanary"  # in every text sent: must never be in a log
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def texts(n: int = 40) -> list[str]:
    """Sentences of varied length, and long reviews (cut at 48 tokens), each with the canary word."""
    short, long = rt_examples()["text"].tolist(), rt_reviews()["text"].tolist()
    return [f"{t} {CANARY}" for pair in zip(short, long) for t in pair][:n]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """An ONNX export folder (model.onnx, tokenizer, config with labels, dapt_input.json)."""
    import torch
    from transformers import BertForSequenceClassification

    from dapt.core.files import write_json
    from dapt.data.model_store import load_tokenizer
    from dapt.deploy.onnx import export_onnx

    root = tmp_path_factory.mktemp("serve")
    tok = load_tokenizer(minilm_dir())
    torch.manual_seed(0)
    config = tiny_bert_config(
        tok,
        initializer_range=0.5,  # outputs far from 50/50, so a wrong row shows
        id2label={0: "neg", 1: "pos"},
        label2id={"neg": 0, "pos": 1},
    )
    BertForSequenceClassification(config).eval().save_pretrained(root / "hf")
    tok.save_pretrained(root / "hf")
    write_json(root / "hf" / "dapt_input.json", {"max_length": 48, "long_text": {"strategy": "head"}})
    return export_onnx(root / "hf", root / "onnx").parent


@pytest.fixture(scope="module")
def server(export, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    flags = ["--max-texts", "8", "--max-chars", "2000", "--max-body", "8192", "--max-wait-ms", "20"]
    with serving(export, log, *flags, token=TOKEN) as srv:
        yield srv


def post(srv, body=None, headers=AUTH, timeout: float = 30) -> httpx.Response:
    return httpx.post(srv.url + "/v1/predict", json=body, headers=headers, timeout=timeout)


def one_line_error(res: httpx.Response, status: int, *fragments: str) -> str:
    assert res.status_code == status, res.text
    msg = res.json()["error"]
    assert isinstance(msg, str) and "\n" not in msg and all(f in msg for f in fragments), msg
    return msg


def test_the_service_answers_and_describes_itself(server):
    assert httpx.get(server.url + "/healthz").json() == {"alive": True}
    assert httpx.get(server.url + "/readyz").json()["ready"] is True
    res = post(server, {"texts": texts(3)})
    assert res.status_code == 200, res.text
    preds = res.json()["predictions"]
    assert len(preds) == 3 and {p["label"] for p in preds} <= {"neg", "pos"}
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-5 for p in preds)
    schema = httpx.get(server.url + "/openapi.json").json()
    answers = schema["paths"]["/v1/predict"]["post"]["responses"]
    assert {"200", "401", "413", "422", "503"} <= set(answers)
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "texts" in schema["components"]["schemas"]["PredictRequest"]["properties"]


def test_predictions_equal_deploy_predict(server, export):
    """The service's labels and probabilities are dapt.deploy.predict's, for texts shorter and longer than
    max_length; the batcher's sorted, token-budgeted model calls too, and the windows reading."""
    from dapt.deploy.predict import Predictor
    from dapt.serve.batcher import run_sorted
    from dapt.study.config import resolve_long_text

    sample = texts(16)
    predictor = Predictor(str(export / "model.onnx"), threads=1)
    want = predictor.predict_proba(sample)
    got = [p for i in range(0, 16, 8) for p in post(server, {"texts": sample[i : i + 8]}).json()["predictions"]]
    assert [p["label"] for p in got] == [predictor.labels[i] for i in want.argmax(1)]
    np.testing.assert_allclose([[p["probabilities"][lab] for lab in predictor.labels] for p in got], want, atol=1e-5)
    assert np.ptp(want[:, 0]) > 0.05  # the texts get different answers: a shuffled row would show
    np.testing.assert_allclose(run_sorted(predictor, sample, batch_tokens=100), want, atol=1e-5)
    predictor.use(resolve_long_text({"strategy": "windows", "stride": 16}, predictor.max_length))
    np.testing.assert_allclose(run_sorted(predictor, sample, 100), predictor.predict_proba(sample), atol=1e-5)


def test_concurrent_requests_are_batched(server):
    before = server.metrics(AUTH)
    sample = texts(40)

    async def load():
        async with httpx.AsyncClient(headers=AUTH, timeout=60, limits=httpx.Limits(max_connections=40)) as client:
            return await asyncio.gather(*(client.post(server.url + "/v1/predict", json={"texts": [t]}) for t in sample))

    answers = asyncio.run(load())
    assert [r.status_code for r in answers] == [200] * len(sample)
    after = server.metrics(AUTH)
    batches = metric(after, "dapt_serve_batch_texts_count") - metric(before, "dapt_serve_batch_texts_count")
    single = metric(after, "dapt_serve_batch_texts_bucket", le="1.0") - metric(
        before, "dapt_serve_batch_texts_bucket", le="1.0"
    )
    assert batches - single > 0, "no batch of more than one text under concurrent load"
    assert batches < len(sample), f"{batches} batches for {len(sample)} concurrent requests"
    assert metric(after, "dapt_serve_model_load_seconds") > 0


def test_401_without_the_right_token(server):
    body = {"texts": [f"one {CANARY}"]}
    for headers in ({}, {"Authorization": "Bearer " + "x" * len(TOKEN)}, {"Authorization": f"Basic {TOKEN}"}):
        res = post(server, body, headers=headers)
        one_line_error(res, 401, "bearer token")
        assert res.headers["www-authenticate"] == "Bearer"
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.get(server.url + "/healthz").status_code == 200  # probes need no token


def test_413_over_the_limits(server):
    big = {"texts": ["word " * 2000]}  # 10,000 bytes > --max-body 8192
    one_line_error(post(server, big), 413, "8192 bytes", "--max-body")

    def chunks():  # no Content-Length: counted while read
        yield b'{"texts": ["'
        for _ in range(20):
            yield b"x" * 1000
        yield b'"]}'

    res = httpx.post(server.url + "/v1/predict", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    one_line_error(res, 413, "--max-body")
    one_line_error(post(server, {"texts": ["a"] * 9}), 413, "9 texts", "at most 8", "--max-texts")
    one_line_error(post(server, {"texts": ["a", "b" * 2001]}), 413, "texts[1]", "2001 characters", "--max-chars")


def test_422_on_bad_bodies(server):
    raw = lambda content, ctype="application/json": httpx.post(
        server.url + "/v1/predict", content=content, headers={**AUTH, "Content-Type": ctype}
    )
    one_line_error(raw(b"{bad json"), 422, "not valid JSON")
    one_line_error(raw(b""), 422, "empty")
    one_line_error(raw(b'["a list"]'), 422, "not a JSON object")
    one_line_error(raw(b'{"texts": ["a"]}', "text/plain"), 422, "Content-Type")
    one_line_error(post(server, {"texts": "not a list"}), 422, "texts", "list")
    one_line_error(post(server, {"texts": ["ok", 3]}), 422, "texts[1]", "string")
    one_line_error(post(server, {"texts": []}), 422, "texts", "at least 1")
    one_line_error(post(server, {"texts": ["a"], "extra": 1}), 422, "extra")


def test_logs_never_hold_a_text_or_the_token(server):
    """Every test above sent the canary word (and the token or a wrong one); the log is JSON lines."""
    post(server, {"texts": [f"last {CANARY}"]})
    text = server.text()
    assert CANARY not in text and TOKEN not in text and "x" * 20 not in text
    access = [r for r in server.records() if r["logger"] == "dapt.serve.access" and r["path"] == "/v1/predict"]
    assert {r["status"] for r in access} >= {200, 401, 413, 422}
    shown = [t for r in access for t in r.get("text_info", [])]
    assert shown and all(set(t) == {"chars", "sha256"} and len(t["sha256"]) == 16 for t in shown)


@pytest.mark.parametrize("host", ["0.0.0.0"])
def test_no_token_means_loopback_only(export, tmp_path, host):
    cmd = [sys.executable, "-m", "dapt.serve", "--model", str(export), "--host", host]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr
    assert "no bearer token" in res.stderr and "127.0.0.1" in res.stderr
    res = subprocess.run([*cmd[:-2], "--token", TOKEN], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert (
        res.returncode == 2
        and TOKEN not in res.stderr + res.stdout
        and "never read from the command line" in res.stderr
    )


def test_503_at_once_when_the_queue_is_full(export, tmp_path):
    flags = ["--max-queue", "2", "--max-texts", "2", "--max-wait-ms", "4000", "--max-batch", "64"]
    with serving(export, tmp_path / "log", *flags) as srv:
        first: list = []
        waiting = threading.Thread(target=lambda: first.append(post(srv, {"texts": ["a", "b"]}, headers={})))
        waiting.start()
        deadline = time.monotonic() + 10
        while metric(srv.metrics(), "dapt_serve_queue_texts") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        start = time.monotonic()
        res = post(srv, {"texts": ["c"]}, headers={})
        assert time.monotonic() - start < 1.5  # at once: not after the first batch's 4 s wait
        one_line_error(res, 503, "queue is full")
        assert res.headers["retry-after"] == "1"
        waiting.join(30)
        assert first[0].status_code == 200
        started = next(r for r in srv.records() if "no bearer token" in r["message"])
        assert "127.0.0.1 only" in started["message"]


def test_sigterm_drains_and_exits_0(export, tmp_path):
    """A request in flight (waiting for its batch) is answered; one sent while draining gets 503."""
    flags = ["--max-wait-ms", "5000", "--drain-delay", "2"]
    with serving(export, tmp_path / "log", *flags) as srv:
        first: list = []
        waiting = threading.Thread(target=lambda: first.append(post(srv, {"texts": ["in flight"]}, headers={})))
        waiting.start()
        deadline = time.monotonic() + 10
        while metric(srv.metrics(), "dapt_serve_queue_texts") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        srv.proc.send_signal(signal.SIGTERM)
        waiting.join(20)
        assert first and first[0].status_code == 200, first
        late = post(srv, {"texts": ["too late"]}, headers={})
        one_line_error(late, 503, "shutting down")
        assert srv.proc.wait(30) == 0
        assert "drained" in srv.text()


def test_a_killed_worker_is_replaced(export, tmp_path):
    """SIGKILL one of two workers under load: the other answers at once, uvicorn's supervisor starts a
    replacement, both are ready again (the metrics count live workers only), SIGTERM exits 0."""
    import psutil

    with serving(export, tmp_path / "log", "--workers", "2", timeout=120) as srv:
        parent = psutil.Process(srv.proc.pid)
        deadline = time.monotonic() + 60
        while metric(srv.metrics(), "dapt_serve_ready_workers") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)

        def workers() -> set[int]:
            """The worker processes (not multiprocessing's resource tracker, not a zombie)"""
            found = set()
            for child in parent.children():
                try:
                    if "spawn_main" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                        found.add(child.pid)
                except psutil.Error:
                    pass
            return found

        before = workers()
        assert len(before) == 2
        answers: list[tuple[float, int]] = []
        loading = threading.Event()

        body = {"texts": texts(4)}

        def load():
            with httpx.Client(timeout=5) as client:
                while not loading.is_set():
                    sent = time.monotonic()
                    try:
                        code = client.post(srv.url + "/v1/predict", json=body).status_code
                    except httpx.TransportError:
                        code = 0
                    answers.append((sent, code))

        loader = threading.Thread(target=load)
        loader.start()
        while len(answers) < 5 and loader.is_alive():
            time.sleep(0.05)
        victim = min(before)
        psutil.Process(victim).kill()
        killed = time.monotonic()
        ok = False
        while time.monotonic() - killed < 10 and not ok:
            try:
                ok = post(srv, {"texts": ["again"]}, headers={}, timeout=2).status_code == 200
            except httpx.TransportError:
                time.sleep(0.1)
        assert ok, "the service did not answer within 10 s of a worker's death"
        loading.set()
        loader.join(10)
        assert sum(code == 200 for at, code in answers if at < killed) >= 5  # (the killed worker's in-flight one fails)
        assert any(code == 200 for at, code in answers if at > killed), answers[-5:]
        while time.monotonic() - killed < 10 and not workers() - before:
            time.sleep(0.1)
        assert victim not in workers() and len(workers() - before) == 1, "no replacement worker"
        deadline = time.monotonic() + 60
        while metric(srv.metrics(), "dapt_serve_ready_workers") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert metric(srv.metrics(), "dapt_serve_ready_workers") == 2
        assert stop(srv.proc) == 0
        assert json.loads(srv.text().splitlines()[0])["workers"] == 2


def test_kubernetes_manifests_agree_with_the_service():
    """serving/k8s cannot be applied here (no cluster): its Deployment's arguments are flags dapt.serve accepts,
    its probes hit /healthz and /readyz on the served port, the token is the mounted Secret's file, the grace
    period outlasts the preStop sleep plus the drain, and the Service, autoscaler and budget find the pods."""
    import yaml

    from dapt.serve.settings import parser

    docs = {}
    for path in sorted((REPO / "serving" / "k8s").glob("*.yaml")):
        docs |= {d["kind"]: d for d in yaml.safe_load_all(path.read_text())}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor"} <= set(docs)
    deploy = docs["Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    (box,) = pod["containers"]
    args = parser().parse_args(box["args"])
    assert args.host == "0.0.0.0" and args.workers == 1
    assert [p["containerPort"] for p in box["ports"] if p["name"] == "http"] == [args.port]
    paths = {probe: box[probe]["httpGet"] for probe in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {k: v["path"] for k, v in paths.items()} == {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    assert {v["port"] for v in paths.values()} == {"http"}
    mounts = {m["name"]: m["mountPath"] for m in box["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    token_volume = next(n for n, v in volumes.items() if "secret" in v)
    secret = volumes[token_volume]["secret"]
    assert args.token_file == f"{mounts[token_volume]}/{secret['items'][0]['path']}"
    assert not any("token" in a and "token-file" not in a for a in box["args"])
    assert args.model.startswith(mounts["models"] + "/")
    sleep = int(box["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > sleep + args.drain_timeout
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"] == labels
    assert docs["Service"]["spec"]["selector"] == labels and docs["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    target = docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deploy["metadata"]["name"])
    scrape = docs["ServiceMonitor"]["spec"]["endpoints"][0]
    assert scrape["path"] == "/metrics" and scrape["authorization"]["credentials"]["name"] == secret["secretName"]
    dockerfile = (REPO / "serving" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "-m", "dapt.serve"]' in dockerfile
    assert f"USER {pod['securityContext']['runAsUser']}" in dockerfile
