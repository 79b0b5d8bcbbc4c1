"""The FastAPI application: `POST /v1/predict`, `GET /healthz`, `/readyz`, `/metrics`, the OpenAPI schema at
`/openapi.json` (and `/docs`). Every refusal is `{"error": "<one line>"}` with its status: 401 (token), 413
(body bytes, texts per request, characters per text), 422 (a body that is not JSON, empty, of the wrong
shape or types), 503 with Retry-After (queue full, model loading, shutting down).

`create_app()` is uvicorn's factory (`dapt.serve.app:create_app`): each worker process builds its own app
from the settings the parent put in its environment."""

# no `from __future__ import annotations`: FastAPI reads the route's annotations, one of them a local class
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from starlette.exceptions import HTTPException

from dapt.serve import logs, metrics
from dapt.serve.batcher import QueueFull
from dapt.serve.guard import Guard, Refused
from dapt.serve.service import Service
from dapt.serve.settings import Settings, read_token


class Prediction(BaseModel):
    label: str = Field(description="the most probable label")
    probabilities: dict[str, float] = Field(description="each label's probability (they sum to 1)")


class PredictResponse(BaseModel):
    model: str = Field(description="the served export's folder name")
    predictions: list[Prediction] = Field(description="one per text, in the request's order")


class ErrorResponse(BaseModel):
    error: str = Field(description="what was wrong and how to fix it, in one line")


def request_model(s: Settings) -> type[BaseModel]:
    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"texts": ["a gripping, warm film"]}})
        texts: list[StrictStr] = Field(
            min_length=1,
            description=f"the texts to label: 1 to {s.max_texts}, each at most {s.max_chars} characters "
            f"(more: 413), the body at most {s.max_body} bytes (more: 413)",
        )

    return PredictRequest


def validation_message(err: RequestValidationError, content_type: str) -> str:
    """Pydantic's errors as one line: the first, where it is, and how many more there are."""
    errors = err.errors()
    first = errors[0] if errors else {"type": "", "loc": (), "msg": "invalid request"}
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first.get("loc", ())[1:]).lstrip(".")
    shape = 'send a JSON object {"texts": ["..."]}'
    if first["type"] == "json_invalid":
        msg = f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')}): {shape}"
    elif first["type"] == "missing" and not where:
        msg = f"the body is empty: {shape}"
    elif not where and "json" not in content_type.lower():
        sent = content_type or "none"
        msg = f"the body is not sent as JSON (Content-Type: {sent}): {shape} as Content-Type: application/json"
    elif not where:
        msg = f"the body is not a JSON object: {shape}"
    else:
        msg = f"{where}: {first['msg']}"
    return msg + (f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else "")


ANSWERS = {
    401: {"model": ErrorResponse, "description": "missing or wrong bearer token"},
    413: {"model": ErrorResponse, "description": "body, texts per request or characters per text over the limit"},
    422: {"model": ErrorResponse, "description": "a body that is not JSON, empty, or of the wrong shape or types"},
    503: {"model": ErrorResponse, "description": "queue full, model loading or shutting down (see Retry-After)"},
}


def create_app(settings: Settings | None = None, token: str | None = None) -> FastAPI:
    """The app of one worker: settings from the environment (the parent's) unless given."""
    if settings is None:
        settings = Settings.from_env()
        token = read_token(settings)
    service = Service(settings, token)
    s = settings

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        yield
        await service.stop()

    app = FastAPI(
        title="dapt.serve",
        version="1",
        summary="Text classification with an exported dapt model, micro-batched.",
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.service = service
    bearer = HTTPBearer(auto_error=False, description="the token of DAPT_SERVE_TOKEN or --token-file")
    PredictRequest = request_model(s)

    @app.exception_handler(Refused)
    async def refuse(request: Request, err: Refused) -> JSONResponse:
        request.scope.get("dapt", {})["error"] = err.message
        return JSONResponse({"error": err.message}, err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return await refuse(request, Refused(422, validation_message(err, request.headers.get("content-type", ""))))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return await refuse(request, Refused(err.status_code, str(err.detail), err.headers))

    @app.post("/v1/predict", response_model=PredictResponse, responses=ANSWERS, dependencies=[Depends(bearer)])
    async def predict(body: PredictRequest, request: Request) -> JSONResponse:  # type: ignore[valid-type]
        """Label each text: its most probable label and every label's probability. Texts are read as
        `dapt.deploy.predict` reads them (the export's max_length and long-text setting)."""
        texts = body.texts
        request.scope.get("dapt", {}).update(logs.describe_texts(texts, s.log_salt, s.log_texts))
        if len(texts) > s.max_texts:
            raise Refused(413, f"texts: {len(texts)} texts, at most {s.max_texts} per request (--max-texts)")
        for i, text in enumerate(texts):
            if len(text) > s.max_chars:
                raise Refused(413, f"texts[{i}]: {len(text)} characters, at most {s.max_chars} per text (--max-chars)")
        retry = {"Retry-After": str(s.retry_after)}
        if not service.ready:
            raise Refused(503, "the model is loading: retry shortly", retry)
        try:
            probs = await service.predict(texts)
        except QueueFull as err:
            raise Refused(503, f"the queue is full ({err}): retry shortly", retry) from None
        labels = service.labels
        out = [
            {"label": labels[int(row.argmax())], "probabilities": {lab: float(p) for lab, p in zip(labels, row)}}
            for row in probs
        ]
        return JSONResponse({"model": service.model_name, "predictions": out})

    @app.get("/healthz")
    async def healthz() -> dict:
        """Alive: the process answers (the model may still be loading)."""
        return {"alive": True}

    @app.get("/readyz", responses={503: ANSWERS[503]})
    async def readyz() -> JSONResponse:
        """Ready: the model is loaded and warm and the server is not shutting down."""
        if service.ready:
            return JSONResponse({"ready": True, "model": service.model_name, "load_seconds": service.load_seconds})
        why = "shutting down" if service.draining else "the model is loading"
        return JSONResponse({"error": why}, 503, headers={"Retry-After": str(s.retry_after)})

    @app.get("/metrics", responses={401: ANSWERS[401]}, dependencies=[Depends(bearer)])
    async def prometheus() -> Response:
        """Prometheus metrics (text exposition format), summed over the workers."""
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    app.add_middleware(Guard, service=service)
    return app
