"""The OpenAI-compatible HTTP API: completions, chat, models, tokenize, health, metrics.

Responses follow OpenAI's shapes (ids, `object`, `choices`, `finish_reason`, server-sent events ending
in `data: [DONE]`); `usage` also carries our speculation stats. Errors use OpenAI's error shape.

`create_api` builds the app over an engine: in one process the `RequestHandler` of one generator
(`create_app`), in a Ray Serve cluster the replicas behind the ingress (`specdecode.cluster`). Both
serve exactly these routes, middleware and error shapes.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import http_error, validation_error
from .handling import COMPLETIONS_DEFAULT_MAX_TOKENS, Reply, RequestHandler, internal_error
from .limits import BodyLimit, max_body_bytes
from .metrics import Metrics
from .openai_compat import CORS, add_routes
from .schemas import APIError, ChatCompletionRequest, CompletionRequest, _Common
from .settings import DEFAULT_CACHE_RAM_MIB, DEFAULT_CACHE_TOKENS, ServerSettings
from .web import add_web, public

__all__ = ["COMPLETIONS_DEFAULT_MAX_TOKENS", "DEFAULT_CACHE_RAM_MIB", "DEFAULT_CACHE_TOKENS", "AuthAndCount",
           "Engine", "ServerSettings", "create_api", "create_app"]


class Engine(Protocol):
    """What the HTTP app serves from: one `RequestHandler`, or the replicas of a cluster."""

    async def complete(self, body: _Common, chat: bool, request: Request) -> Reply: ...
    async def tokenize(self, body: Any) -> dict[str, Any]: ...
    async def detokenize(self, body: Any) -> dict[str, Any]: ...
    async def health(self) -> tuple[int, dict[str, Any]]: ...
    async def model_card(self) -> dict[str, Any]: ...
    async def metrics_text(self) -> bytes: ...
    def close(self) -> None: ...


class LocalEngine:
    """The engine of a single-process server: its `RequestHandler`, told of disconnects by the request."""

    def __init__(self, handler: RequestHandler) -> None:
        self.handler = handler
        self.tokenize, self.detokenize = handler.tokenize, handler.detokenize
        self.health, self.model_card = handler.health, handler.model_card
        self.metrics_text = handler.metrics_text
        self.close = handler.close

    async def complete(self, body: _Common, chat: bool, request: Request) -> Reply:
        return await self.handler.complete(body, chat, request.is_disconnected)


class AuthAndCount:
    """ASGI middleware: the bearer-key check (every path but /health) and the request counter."""

    def __init__(self, app: Any, api_key: str | None, metrics: Metrics) -> None:
        self.app, self.api_key, self.metrics = app, api_key, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if self.api_key and path != "/health" and not public(path):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, f"Bearer {self.api_key}".encode()):
                err = APIError(
                    401,
                    "missing or wrong API key: send 'Authorization: Bearer <key>' with the "
                    "key the server was started with (--api-key)",
                    code="invalid_api_key",
                )
                self.metrics.requests.labels(path, "401").inc()
                return await JSONResponse(err.body(), status_code=401)(scope, receive, send)
        status = {"code": 500}

        async def send_and_note(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            if path.startswith("/v1/"):
                self.metrics.requests.labels(path, str(status["code"])).inc()


def create_api(engine: Engine, settings: ServerSettings, metrics: Metrics) -> FastAPI:
    """The FastAPI app serving `engine`, counting HTTP requests into `metrics`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.close()

    app = FastAPI(title="specdecode", description="Exact speculative decoding, OpenAI-compatible API",
                  lifespan=lifespan)
    app.state.metrics, app.state.settings, app.state.engine = metrics, settings, engine
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes(settings.max_body_mb))
    app.add_middleware(AuthAndCount, api_key=settings.api_key, metrics=metrics)
    app.add_middleware(CORS, origins=settings.cors_origins, api_key=settings.api_key)  # outermost

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_error(list(exc.errors()), exc.body).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_errors(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = http_error(exc.status_code, exc.detail, exc.__cause__)
        return JSONResponse(err.body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        err = internal_error("req-" + secrets.token_hex(8), exc)
        return JSONResponse(err.body(), status_code=500)

    @app.get("/health")
    async def health() -> JSONResponse:
        status, body = await engine.health()
        return JSONResponse(body, status_code=status)

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(await engine.metrics_text(), media_type="text/plain; version=0.0.4")

    add_routes(app, engine, settings.model_name)

    async def serve(request: Request, body: _Common, chat: bool) -> Any:
        reply = await engine.complete(body, chat, request)
        if isinstance(reply, dict):
            return reply
        return StreamingResponse(reply, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest) -> Any:
        return await serve(request, body, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatCompletionRequest) -> Any:
        return await serve(request, body, chat=True)

    return app


def create_app(gen: Any, settings: ServerSettings) -> FastAPI:
    """The FastAPI app serving `gen` (a SpeculativeGenerator) in this process; run it with uvicorn."""
    metrics = Metrics()
    handler = RequestHandler(gen, settings, metrics)
    app = create_api(LocalEngine(handler), settings, metrics)
    app.state.queue = handler.queue
    add_web(app, gen, settings, handler.context)  # the page at / (one process; a cluster serves the API)
    return app
