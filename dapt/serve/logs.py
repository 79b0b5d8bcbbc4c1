"""Structured logs: one JSON object per line on stderr, uvicorn's own lines included. A text is logged as its
length and a salted hash (never the text) unless `--log-texts`; a header (the bearer token) never is."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time

#: The logger of the access lines (one per request) and of the service's own events.
ACCESS = "dapt.serve.access"
EVENTS = "dapt.serve"


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "pid", "message", ...fields}`: a record's `fields` extra merged in."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": os.getpid(),
            "message": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            # the exception's type and message only: a traceback's frames could carry request data
            err = record.exc_info[1]
            out["exception"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
        return json.dumps(out, ensure_ascii=False, default=str)


def log_config() -> dict:
    """uvicorn's `log_config`: every logger (uvicorn's, the service's) as JSON lines on stderr."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    loggers = {name: {"handlers": ["json"], "level": "INFO", "propagate": False} for name in ("uvicorn", EVENTS)}
    loggers["uvicorn.error"] = {"level": "INFO"}  # propagates to "uvicorn"
    loggers["uvicorn.access"] = {"handlers": [], "level": "WARNING", "propagate": False}  # ours replace it
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"json": handler},
        "loggers": loggers,
    }


def event(message: str, level: int = logging.INFO, **fields) -> None:
    logging.getLogger(EVENTS).log(level, message, extra={"fields": fields})


def access(fields: dict) -> None:
    logging.getLogger(ACCESS).info("access", extra={"fields": fields})


def describe_texts(texts: list[str], salt: str, raw: bool, most: int = 16) -> dict:
    """What the access line says of a request's texts: their number, and per text (the first `most`) its
    characters and a 16-hex salted SHA-256 (equal texts match within one start of the service), or, with
    `raw`, the text itself."""
    shown = texts[:most]
    if raw:
        items = [{"chars": len(t), "text": t} for t in shown]
    else:
        items = [{"chars": len(t), "sha256": hashlib.sha256((salt + t).encode()).hexdigest()[:16]} for t in shown]
    return {"texts": len(texts), "text_info": items}
