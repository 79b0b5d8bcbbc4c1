"""The service's settings: the command line, their checks, and the bearer token (never from the command line).

The parent process parses the flags once; every worker process reads the same settings back from one
environment variable (`SETTINGS_ENV`, JSON without the token) and reads the token itself, from
`TOKEN_ENV` or the file `--token-file` names.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import secrets
from pathlib import Path

from dapt.core.errors import UserError

#: The environment variable holding the bearer token (or give --token-file).
TOKEN_ENV = "DAPT_SERVE_TOKEN"
#: How the parent hands the settings to its worker processes.
SETTINGS_ENV = "DAPT_SERVE_SETTINGS"
#: A token shorter than this is refused: a guessable token is no access control.
MIN_TOKEN_CHARS = 16
#: dapt.deploy.predict's flags for how a text is read (None: the export's dapt_input.json).
READING_FLAGS = ("max_length", "long_text", "head", "stride", "pool", "max_windows")


@dataclasses.dataclass
class Settings:
    model: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    threads: int = 0
    max_batch: int = 32
    max_wait_ms: float = 2.0
    batch_tokens: int = 8192
    max_queue: int = 256
    max_texts: int = 64
    max_chars: int = 20_000
    max_body: int = 1_048_576
    retry_after: int = 1
    drain_timeout: float = 30.0
    drain_delay: float = 0.0
    token_file: str | None = None
    log_texts: bool = False
    log_salt: str = ""
    reading: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(READING_FLAGS))

    def to_env(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_env(cls) -> Settings:
        raw = os.environ.get(SETTINGS_ENV)
        if not raw:
            raise UserError(SETTINGS_ENV, "not set", "start the service with python -m dapt.serve")
        return cls(**json.loads(raw))


def parser() -> argparse.ArgumentParser:
    d = Settings()
    p = argparse.ArgumentParser(
        prog="python -m dapt.serve",
        description="HTTP service over an exported model (POST /v1/predict).",
        allow_abbrev=False,  # '--token x' must never be taken for '--token-file x'
    )
    add = p.add_argument
    add("--model", required=True, help="export folder (PyTorch or ONNX) or a .onnx file")
    add(
        "--host",
        default=d.host,
        help="address to listen on; other than loopback only with a token (default: %(default)s)",
    )
    add("--port", type=int, default=d.port, help="(default: %(default)s)")
    add("--workers", type=int, default=d.workers, help="server processes sharing the port (default: %(default)s)")
    add("--threads", type=int, default=d.threads, help="model threads per worker (0: cores / workers)")
    add("--max-batch", type=int, default=d.max_batch, help="texts gathered into one batch (default: %(default)s)")
    add("--max-wait-ms", type=float, default=d.max_wait_ms, help="longest wait to fill a batch (default: %(default)s)")
    add("--batch-tokens", type=int, default=d.batch_tokens, help="padded tokens per model call (default: %(default)s)")
    add("--max-queue", type=int, default=d.max_queue, help="texts waiting; more answer 503 (default: %(default)s)")
    add("--max-texts", type=int, default=d.max_texts, help="texts per request (default: %(default)s)")
    add("--max-chars", type=int, default=d.max_chars, help="characters per text (default: %(default)s)")
    add("--max-body", type=int, default=d.max_body, help="request body bytes (default: %(default)s)")
    add("--retry-after", type=int, default=d.retry_after, help="Retry-After seconds of a 503 (default: %(default)s)")
    add("--drain-timeout", type=float, default=d.drain_timeout, help="on SIGTERM, longest wait for requests in flight")
    add("--drain-delay", type=float, default=d.drain_delay, help="on SIGTERM, least time answering 503 before exit")
    add("--token-file", help=f"file holding the bearer token (or set {TOKEN_ENV}); never the token itself")
    add("--log-texts", action="store_true", help="log the texts themselves (default: their length and a hash)")
    add("--max-length", type=int, help="as dapt.deploy.predict (default: the export's dapt_input.json)")
    add("--long-text", choices=["head", "head_tail", "windows"], help="as dapt.deploy.predict")
    add("--head", type=int, help="head_tail: tokens from the start (as dapt.deploy.predict)")
    add("--stride", type=int, help="windows: tokens between window starts (as dapt.deploy.predict)")
    add("--pool", choices=["mean", "max"], help="windows: how a text's windows are pooled (as dapt.deploy.predict)")
    add("--max-windows", type=int, help="windows: at most this many per text (as dapt.deploy.predict)")
    return p


def parse(argv: list[str] | None) -> Settings:
    """Settings from the command line, checked; a `--token`-like flag is refused without echoing its value."""
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    for arg in argv:
        if arg.startswith("--token") and arg.split("=")[0] != "--token-file":
            raise UserError(
                arg.split("=")[0],
                "a token is never read from the command line (ps and shell history would show it)",
                f"set {TOKEN_ENV} or give --token-file",
            )
    args = parser().parse_args(argv)
    names = {f.name for f in dataclasses.fields(Settings)} - {"reading", "log_salt"}
    s = Settings(**{k: v for k, v in vars(args).items() if k in names})
    s.reading = {k: getattr(args, k) for k in READING_FLAGS}
    s.log_salt = os.environ.get("DAPT_SERVE_LOG_SALT") or secrets.token_hex(16)
    check(s)
    return s


def check(s: Settings) -> None:
    positive = ("workers", "max_batch", "batch_tokens", "max_queue", "max_texts", "max_chars", "max_body")
    for name in positive:
        if getattr(s, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}", f"{getattr(s, name)} is not a positive number")
    for name in ("threads", "max_wait_ms", "retry_after", "drain_timeout", "drain_delay"):
        if getattr(s, name) < 0:
            raise UserError(f"--{name.replace('_', '-')}", f"{getattr(s, name)} is negative")
    if s.max_queue < s.max_texts:
        raise UserError(
            "--max-queue", f"{s.max_queue} is below --max-texts {s.max_texts}", "a full request must fit the queue"
        )
    if not 0 < s.port < 65536:
        raise UserError("--port", f"{s.port} is not a TCP port")


def read_token(s: Settings) -> str | None:
    """The bearer token from `TOKEN_ENV` or `--token-file`, or None (no access control)."""
    from_env = os.environ.get(TOKEN_ENV, "")
    if from_env and s.token_file:
        raise UserError("--token-file", f"and {TOKEN_ENV} are both set", "give the token one way")
    token = from_env
    if s.token_file:
        path = Path(s.token_file)
        if not path.is_file():
            raise UserError(s.token_file, "no such token file", f"give the file holding the token, or set {TOKEN_ENV}")
        token = path.read_text(encoding="utf-8").strip()
        if not token:
            raise UserError(s.token_file, "the token file is empty")
    if not token:
        return None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        where = s.token_file or TOKEN_ENV
        raise UserError(
            where,
            f"the token is shorter than {MIN_TOKEN_CHARS} characters or holds spaces",
            "use e.g. openssl rand -hex 32",
        )
    return token


def token_for_host(s: Settings) -> str | None:
    """The bearer token (`read_token`), refusing a non-loopback `--host` without one: an open service
    listens on 127.0.0.1 only."""
    token = read_token(s)
    if token is None and not is_loopback(s.host):
        raise UserError(
            f"--host {s.host}",
            "no bearer token configured, so the service listens on loopback only",
            f"set {TOKEN_ENV} or give --token-file, or listen on 127.0.0.1",
        )
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
