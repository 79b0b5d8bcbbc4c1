"""`python -m dapt.serve --model <export folder or .onnx>`: the HTTP service over an exported model.

    DAPT_SERVE_TOKEN=$(openssl rand -hex 32) python -m dapt.serve --model results/deploy/T/M/export/onnx_int8 \\
        --host 0.0.0.0 --port 8000 --workers 2
    curl -s -H "Authorization: Bearer $DAPT_SERVE_TOKEN" -H 'Content-Type: application/json' \\
        -d '{"texts": ["a gripping, warm film", "dull"]}' http://127.0.0.1:8000/v1/predict
    # {"model": "onnx_int8", "predictions": [{"label": "pos", "probabilities": {"neg": 0.08, "pos": 0.92}}, ...]}

FastAPI under uvicorn. Endpoints: `POST /v1/predict` (texts -> label and probabilities per text, read as
`dapt.deploy.predict` reads them: the export's max_length and long-text setting, the same flags to replace
them), `GET /healthz` (alive), `GET /readyz` (model loaded and warm; 503 while loading or shutting down),
`GET /metrics` (Prometheus), `GET /openapi.json` and `/docs` (the schema).

Concurrent requests are micro-batched: up to --max-batch texts, waiting at most --max-wait-ms for a batch
to fill, sorted by token length, model calls of at most --batch-tokens padded tokens. Limits answer at
once with `{"error": "..."}`: 413 over --max-body bytes, --max-texts texts or --max-chars characters per
text; 422 a body that is not JSON, empty, or of the wrong shape or types; 503 with Retry-After when more
than --max-queue texts would wait, while the model loads, and while shutting down.

Access: the bearer token comes from the environment variable DAPT_SERVE_TOKEN or the file --token-file
(never the command line; at least 16 characters; compared in constant time; never logged); /v1/predict and
/metrics need it, the probes and the schema do not. Without a token the service listens on loopback only
and says so (another --host is refused).

Logs: JSON lines on stderr (uvicorn's too); one access line per request with method, path, status, ms,
client, and per text its length and a salted SHA-256 prefix, never the text (unless --log-texts; salt:
DAPT_SERVE_LOG_SALT, else random per start). SIGTERM drains: /readyz and new predictions answer 503, the
requests in flight finish (at most --drain-timeout s, at least --drain-delay s of 503s), exit status 0.
--workers N: N processes share the port (uvicorn's supervisor replaces a worker that dies); --threads
(default: cores / workers) are each worker's model threads. Exit status 2: a bad setting or model (one
line); 3: a worker's model failed to load.
"""

from __future__ import annotations

import atexit
import logging
import logging.config
import os
import shutil
import signal
import tempfile
from pathlib import Path

from dapt.core.errors import UserError, run_main
from dapt.serve import settings as settings_mod
from dapt.serve.logs import event, log_config
from dapt.serve.settings import SETTINGS_ENV, TOKEN_ENV, Settings, token_for_host

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def check_model(model: str) -> None:
    """The checks `dapt.deploy.predict.Predictor` makes first, before any process loads the model."""
    from dapt.deploy.export import read_input_settings

    path = Path(model)
    if not path.exists():
        raise UserError(model, "no such model file or folder", "give an export folder or a .onnx file")
    folder = path.parent if path.is_file() else path
    if not (folder / "config.json").is_file():
        raise UserError(
            model, "no config.json beside the model (labels unknown)", "give a folder written by the deploy step"
        )
    read_input_settings(folder)


def serve(s: Settings, token: str | None) -> None:
    import uvicorn

    from dapt.runtime.cli import limit_threads, quiet_progress_bars
    from dapt.serve.service import model_threads

    s.threads = model_threads(s)
    limit_threads(s.threads)
    quiet_progress_bars()
    if s.workers > 1 and not os.environ.get(MULTIPROC_ENV):
        folder = tempfile.mkdtemp(prefix="dapt-serve-metrics-")
        atexit.register(shutil.rmtree, folder, True)
        os.environ[MULTIPROC_ENV] = folder
    os.environ[SETTINGS_ENV] = s.to_env()
    logging.config.dictConfig(log_config())
    shown = {k: v for k, v in vars(s).items() if k not in ("log_salt", "reading")}
    event("starting", **shown, reading={k: v for k, v in s.reading.items() if v is not None})
    if token:
        event("access control: bearer token required on /v1/predict and /metrics", token_from=s.token_file or TOKEN_ENV)
    else:
        event(
            f"no bearer token configured ({TOKEN_ENV} or --token-file): listening on {s.host} only, "
            "without access control",
            logging.WARNING,
        )
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully; this handler (the one
    # it restores) takes it, so a drained service exits 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    uvicorn.run(
        "dapt.serve.app:create_app",
        factory=True,
        host=s.host,
        port=s.port,
        workers=s.workers,
        log_config=log_config(),
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=int(s.drain_timeout) + 5,
    )


def main(argv: list[str] | None = None) -> None:
    s = settings_mod.parse(argv)
    check_model(s.model)
    token = token_for_host(s)
    serve(s, token)


if __name__ == "__main__":
    run_main(main)
