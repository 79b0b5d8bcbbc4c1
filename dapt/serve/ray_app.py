"""`python -m dapt.serve.ray_app --model <export or .onnx> --min-replicas 1 --max-replicas 4`: the HTTP service
on Ray Serve, whose autoscaler adds and removes replicas as the ongoing requests per replica move.

    DAPT_SERVE_TOKEN=$(openssl rand -hex 32) python -m dapt.serve.ray_app --model results/deploy/T/M/export/onnx \\
        --min-replicas 1 --max-replicas 4 --target-ongoing-requests 8 --host 0.0.0.0 --port 8000

Each replica runs the application of `python -m dapt.serve` itself (`dapt.serve.app.create_app`, built on the
replica): the same `POST /v1/predict` request and response, refusals, bearer-token check, micro-batcher and
model (`dapt.deploy.predict.Predictor`); a replica takes traffic once its model is loaded and warm. Ray's
proxy routes each request to a replica; `autoscaling_config` (min/max/initial replicas, target ongoing requests
per replica, upscale/downscale delays, look-back window) is Ray Serve's own. Every flag of `python -m
dapt.serve` applies except --workers (replicas are the processes); --drain-timeout becomes the replicas'
graceful shutdown timeout. /metrics answers for the replica the request reached (use Ray's metrics for the
whole).

The token comes from DAPT_SERVE_TOKEN or --token-file, never the command line and never in the deployment's
arguments: each replica reads it from its own environment or file (a local Ray instance started here hands
this process's environment to its replicas; on a cluster every node must have it). A replica that finds no
token when one was configured refuses to start. Without a token Ray's proxy listens on loopback only.
--address joins a running Ray cluster (then --host/--port only apply if Serve is not running there yet);
by default a local Ray instance starts here. SIGTERM or Ctrl-C deletes the application (replicas drain) and
stops the local instance.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import logging.config
import os
import signal
import threading
from contextlib import asynccontextmanager

from dapt.core.errors import UserError, run_main
from dapt.serve import settings as settings_mod
from dapt.serve.logs import event, log_config
from dapt.serve.settings import TOKEN_ENV, Settings, read_token, token_for_host

DEPLOYMENT = "dapt"


@dataclasses.dataclass
class RaySettings:
    address: str | None = None
    app_name: str = "dapt"
    min_replicas: int = 1
    max_replicas: int = 4
    initial_replicas: int | None = None
    target_ongoing_requests: float = 8.0
    max_ongoing_requests: int = 32
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    look_back_period_s: float = 30.0
    replica_cpus: float = 1.0

    def autoscaling_config(self) -> dict:
        """Ray Serve's `autoscaling_config` (ray.serve.config.AutoscalingConfig)."""
        keys = ("min_replicas", "max_replicas", "initial_replicas", "target_ongoing_requests")
        keys += ("upscale_delay_s", "downscale_delay_s", "look_back_period_s")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


def ray_parser() -> argparse.ArgumentParser:
    d = RaySettings()
    p = argparse.ArgumentParser(
        prog="python -m dapt.serve.ray_app",
        description="The HTTP service of python -m dapt.serve on Ray Serve, autoscaled. Every flag of "
        "python -m dapt.serve (see its --help) applies too, --workers excepted.",
        allow_abbrev=False,
    )
    add = p.add_argument
    add("--address", help="a running Ray cluster, or auto (default: start a new local Ray instance here)")
    add("--app-name", default=d.app_name, help="the Serve application's name (default: %(default)s)")
    add("--min-replicas", type=int, default=d.min_replicas, help="(default: %(default)s)")
    add("--max-replicas", type=int, default=d.max_replicas, help="(default: %(default)s)")
    add("--initial-replicas", type=int, help="replicas at start (default: --min-replicas)")
    add(
        "--target-ongoing-requests",
        type=float,
        default=d.target_ongoing_requests,
        help="requests in progress or queued per replica that the autoscaler aims at (default: %(default)s)",
    )
    add(
        "--max-ongoing-requests",
        type=int,
        default=d.max_ongoing_requests,
        help="most requests a replica holds at once; more wait in Ray's proxy (default: %(default)s)",
    )
    add("--upscale-delay-s", type=float, default=d.upscale_delay_s, help="load above target this long adds replicas")
    add("--downscale-delay-s", type=float, default=d.downscale_delay_s, help="load below target this long removes some")
    add("--look-back-period-s", type=float, default=d.look_back_period_s, help="window the load is averaged over")
    add("--replica-cpus", type=float, default=d.replica_cpus, help="CPUs Ray reserves per replica (default: 1)")
    return p


def parse(argv: list[str] | None) -> tuple[Settings, RaySettings]:
    """The Ray flags, then every other flag as `python -m dapt.serve` parses and checks it."""
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    args, rest = ray_parser().parse_known_args(argv)
    if any(a.split("=")[0] == "--workers" for a in rest):
        raise UserError("--workers", "is not used on Ray Serve (replicas are the processes)", "give --max-replicas")
    s = settings_mod.parse(rest)
    rs = RaySettings(**vars(args))
    check(rs)
    return s, rs


def check(rs: RaySettings) -> None:
    for name in ("max_replicas", "max_ongoing_requests"):
        if getattr(rs, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}", f"{getattr(rs, name)} is not a positive number")
    for name in ("min_replicas", "upscale_delay_s", "downscale_delay_s", "replica_cpus"):
        if getattr(rs, name) < 0:
            raise UserError(f"--{name.replace('_', '-')}", f"{getattr(rs, name)} is negative")
    if rs.target_ongoing_requests <= 0 or rs.look_back_period_s <= 0:
        raise UserError("--target-ongoing-requests/--look-back-period-s", "must be positive")
    if rs.min_replicas > rs.max_replicas:
        raise UserError("--min-replicas", f"{rs.min_replicas} is above --max-replicas {rs.max_replicas}")
    if rs.initial_replicas is not None and not rs.min_replicas <= rs.initial_replicas <= rs.max_replicas:
        raise UserError("--initial-replicas", f"{rs.initial_replicas} is outside --min-replicas..--max-replicas")
    if rs.target_ongoing_requests > rs.max_ongoing_requests:
        raise UserError(
            "--target-ongoing-requests",
            f"{rs.target_ongoing_requests} is above --max-ongoing-requests {rs.max_ongoing_requests}",
            "a replica could never reach the target",
        )


def warm_before_traffic(app) -> None:
    """The app's startup (Ray runs it before the replica takes requests) waits until the model is loaded and
    warm, so Ray routes nothing to a replica that would answer 503 'loading'."""
    inner, service = app.router.lifespan_context, app.state.service

    @asynccontextmanager
    async def lifespan(a):
        async with inner(a) as state:
            while not service.ready:
                await asyncio.sleep(0.05)
            yield state

    app.router.lifespan_context = lifespan


class Replica:
    """One Ray Serve replica: `python -m dapt.serve`'s application (`create_app`) over its own model."""

    def __init__(self, settings_json: str, token_expected: bool) -> None:
        self.settings = Settings(**json.loads(settings_json))
        self.settings.log_salt = os.environ.get("DAPT_SERVE_LOG_SALT") or os.urandom(16).hex()
        self.token = read_token(self.settings)
        if token_expected and self.token is None:
            raise RuntimeError(
                f"no bearer token on this node ({TOKEN_ENV} or --token-file): this replica will not serve without one"
            )
        logging.config.dictConfig(log_config())

    def __serve_build_asgi_app__(self):  # Ray Serve calls it on the replica, after __init__
        from dapt.serve.app import create_app

        app = create_app(self.settings, self.token)
        warm_before_traffic(app)
        return app


def thread_env(threads: int) -> dict[str, str]:
    """The replica's thread-pool variables, set before its process starts (as `limit_threads` does here)."""
    from dapt.runtime.cli import THREAD_VARIABLES

    env = dict.fromkeys(THREAD_VARIABLES, str(threads))
    return env | {"TOKENIZERS_PARALLELISM": str(threads > 1).lower(), "TQDM_DISABLE": "1"}


def application(s: Settings, rs: RaySettings, token_expected: bool):
    """The Serve application: the `Replica` deployment with the autoscaling policy, bound to its settings."""
    from ray import serve

    threads = s.threads or max(1, int(rs.replica_cpus))
    shipped = dataclasses.replace(s, threads=threads, log_salt="")  # no salt in Ray's stored arguments
    deployment = serve.deployment(serve.ingress()(Replica)).options(
        name=DEPLOYMENT,
        autoscaling_config=rs.autoscaling_config(),
        max_ongoing_requests=rs.max_ongoing_requests,
        graceful_shutdown_timeout_s=s.drain_timeout,
        ray_actor_options={"num_cpus": rs.replica_cpus, "runtime_env": {"env_vars": thread_env(threads)}},
    )
    return deployment.bind(shipped.to_env(), token_expected)


def deploy(s: Settings, rs: RaySettings, token_expected: bool) -> None:
    """Start Serve's proxy on --host/--port (unless Serve already runs) and run the application; returns once
    the initial replicas are ready. Ray must be initialised."""
    from ray import serve

    serve.start(http_options={"host": s.host, "port": s.port})
    serve.run(application(s, rs, token_expected), name=rs.app_name, route_prefix="/")


def replica_counts(app_name: str) -> dict[str, int]:
    """The deployment's replicas by state (RUNNING, STARTING, STOPPING, ...) from `serve.status()`."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None or DEPLOYMENT not in app.deployments:
        return {}
    return {str(getattr(k, "value", k)): n for k, n in app.deployments[DEPLOYMENT].replica_states.items()}


def main(argv: list[str] | None = None) -> None:
    from dapt.serve.__main__ import check_model

    s, rs = parse(argv)
    check_model(s.model)
    token = token_for_host(s)
    import ray
    from ray import serve

    logging.config.dictConfig(log_config())
    ray.init(address=rs.address or "local", include_dashboard=False, logging_level=logging.WARNING)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    try:
        deploy(s, rs, token is not None)
        event("serving on Ray Serve", url=f"http://{s.host}:{s.port}/v1/predict", **rs.autoscaling_config())
        if token is None:
            event(f"no bearer token configured ({TOKEN_ENV} or --token-file): loopback only", logging.WARNING)
        while not stop.wait(60):
            event("replicas", **replica_counts(rs.app_name))
        event("stopping: deleting the application (replicas drain)")
        serve.delete(rs.app_name)
    finally:
        if rs.address is None:
            serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    run_main(main)
