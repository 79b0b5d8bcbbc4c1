"""`python -m dapt.serve` as a real process on 127.0.0.1 for a test: started, waited for, always stopped."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def records(self) -> list[dict]:
        """The JSON lines of the log (a line that is not JSON fails the test that reads it)."""
        return [json.loads(line) for line in self.text().splitlines() if line.strip()]

    def metrics(self, headers: dict | None = None) -> str:
        res = httpx.get(self.url + "/metrics", headers=headers or {}, timeout=10)
        res.raise_for_status()
        return res.text

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited ({self.proc.returncode}):\n{self.text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"not ready in {timeout} s:\n{self.text()[-3000:]}")


@contextmanager
def serving(model, log: Path, *flags: str, token: str | None = None, ready: bool = True, timeout: float = 90):
    """A server on a free loopback port with 1 model thread; `token` goes in DAPT_SERVE_TOKEN."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAPT_SERVE_", "PROMETHEUS_"))}
    env["PYTHONUNBUFFERED"] = "1"
    if token:
        env["DAPT_SERVE_TOKEN"] = token
    cmd = [sys.executable, "-m", "dapt.serve", "--model", str(model), "--port", str(port), "--threads", "1", *flags]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    server = Server(proc, port, log)
    try:
        if ready:
            server.wait_ready(timeout)
        yield server
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples (with these labels) in a Prometheus exposition."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total
