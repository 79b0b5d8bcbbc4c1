"""The ASGI middleware in front of the routes: the access line and the request metrics of every request, then,
before a body is read, the bearer token (constant-time compare) and the drain, then the body size limit
(Content-Length, or counted while reading a chunked body)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

from dapt.serve import logs, metrics

#: Paths that need the bearer token (when one is configured); the probes and the schema do not.
PROTECTED = ("/v1/predict", "/metrics")
PREDICT = "/v1/predict"


class Refused(Exception):
    """An answer with one clear message: `{"error": message}` and the status (and headers)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


async def send_error(send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    head += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value
    return None


def token_ok(scope, digest: bytes) -> bool:
    """Whether the request's `Authorization: Bearer <token>` is the token: SHA-256 digests compared with
    `hmac.compare_digest`, so neither the token's content nor its length shows in the timing."""
    value = header(scope, b"authorization") or b""
    scheme, _, given = value.partition(b" ")
    if scheme.lower() != b"bearer":
        given = b""
    return hmac.compare_digest(hashlib.sha256(given.strip()).digest(), digest)


class Guard:
    def __init__(self, app, service) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [0]
        info: dict = {}
        scope["dapt"] = info  # the route adds what it knows (texts, error) for the access line

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        predicting = scope["path"] == PREDICT
        if predicting:
            self.service.in_flight += 1
            metrics.IN_FLIGHT.inc()
        try:
            await self._guarded(scope, receive, send_status, info)
        finally:
            if predicting:
                self.service.in_flight -= 1
                metrics.IN_FLIGHT.dec()
            seconds = time.perf_counter() - start
            label = metrics.path_label(scope["path"])
            metrics.REQUESTS.labels(label, str(status[0] or 500)).inc()
            metrics.LATENCY.labels(label).observe(seconds)
            client = scope.get("client")
            logs.access(
                {
                    "method": scope["method"],
                    "path": label,
                    "status": status[0] or 500,
                    "ms": round(seconds * 1000, 2),
                    "client": client[0] if client else None,
                    **info,
                }
            )

    async def _guarded(self, scope, receive, send, info: dict) -> None:
        s = self.service
        try:
            if s.token_digest is not None and scope["path"] in PROTECTED and not token_ok(scope, s.token_digest):
                raise Refused(
                    401, "missing or wrong bearer token (Authorization: Bearer <token>)", {"WWW-Authenticate": "Bearer"}
                )
            if s.draining and scope["path"] == PREDICT:
                raise Refused(
                    503,
                    "the server is shutting down: retry (another instance answers)",
                    {"Retry-After": str(s.settings.retry_after), "Connection": "close"},
                )
            receive = await self._bounded_body(scope, receive)
        except Refused as err:
            info["error"] = err.message
            return await send_error(send, err.status, err.message, err.headers)
        await self.app(scope, receive, send)

    async def _bounded_body(self, scope, receive):
        """The request body read in full, at most --max-body bytes (else 413), replayed to the route."""
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return receive
        limit = self.service.settings.max_body
        too_big = Refused(413, f"the body is over {limit} bytes (--max-body): send fewer or shorter texts")
        length = header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_big
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return receive
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                raise too_big
            more = message.get("more_body", False)
        body, sent = b"".join(chunks), [False]

        async def replay():
            if not sent[0]:
                sent[0] = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay
