"""The OpenAI-compatible HTTP API over a `SpeculativeGenerator`: completions, chat, models, health, metrics.

Responses follow OpenAI's shapes (ids, `object`, `choices`, `finish_reason`, server-sent events ending
in `data: [DONE]`); `usage` also carries our speculation stats. Errors use OpenAI's error shape.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .batching import BatchScheduler, batchable
from .errors import http_error, validation_error
from .limits import DEFAULT_MAX_BODY_MB, BodyLimit, max_body_bytes
from .logprobs import LiveLogprobs, chat_logprobs, completion_logprobs
from .metrics import Metrics
from .openai_compat import CORS, add_routes
from .provenance import provenance_option, with_provenance
from .replies import StreamShaper, choice
from .schemas import APIError, ChatCompletionRequest, CompletionRequest, _Common
from .validation import Intake
from .web import add_web, public
from .worker import GenerationQueue, Job

# the prefix cache's defaults (BENCHMARKS.md, prefix cache): finished sequences go to host memory, not to
# the KV buffer, where every parked position slows every decode step (2048 parked: 1.09x a step's time)
DEFAULT_CACHE_TOKENS = 0
DEFAULT_CACHE_RAM_MIB = 4096

log = logging.getLogger("specdecode.server")


class ServerSettings:
    """What `specdecode serve` was started with."""

    def __init__(
        self,
        model_name: str,
        gamma: int | str = "auto",
        gamma_max: int = 8,
        api_key: str | None = None,
        max_waiting: int = 64,
        default_max_tokens: int | None = None,
        lookup_gamma_max: int = 32,
        parallel: int = 1,
        ctx_size: int | None = None,
        prefill_chunk: int = 256,
        kv_unified: bool = True,
        cors_origins: list[str] | None = None,
        prefix_cache: bool = True,
        cache_tokens: int = DEFAULT_CACHE_TOKENS,
        cache_ram_mib: int = DEFAULT_CACHE_RAM_MIB,
        max_body_mb: float = DEFAULT_MAX_BODY_MB,
    ) -> None:
        self.model_name, self.gamma, self.gamma_max = model_name, gamma, gamma_max
        # batching (llama.cpp): requests at once, KV positions they share (None: the model's trained
        # context), prompt tokens fed per step
        self.parallel, self.ctx_size, self.prefill_chunk = parallel, ctx_size, prefill_chunk
        self.kv_unified = kv_unified
        # the prefix cache: on or off, KV positions kept for finished requests, host RAM for evicted ones
        self.prefix_cache, self.cache_tokens, self.cache_ram_mib = prefix_cache, cache_tokens, cache_ram_mib
        self.lookup_gamma_max = lookup_gamma_max
        # default_max_tokens: a chat completion's limit when the request sets none (None: the context's end)
        self.api_key, self.max_waiting, self.default_max_tokens = api_key, max_waiting, default_max_tokens
        self.cors_origins = list(cors_origins or [])  # browser origins allowed besides loopback and our own
        self.max_body_mb = max_body_mb  # larger request bodies get a 413 before they are read


def _usage(job: Job, prompt_tokens: int) -> dict[str, Any]:
    stats = job.result.stats if job.result is not None else None
    completion = stats.new_tokens if stats else 0
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": stats.cached_tokens if stats else 0},
    }
    if stats is not None:
        usage.update(
            {
                "acceptance_rate": round(stats.acceptance_rate, 4),
                "tokens_per_target_call": round(stats.mean_tokens_per_target_call, 4),
                "target_calls": stats.target_calls,
                "draft_tokens": stats.drafted,
                "draft_tokens_accepted": stats.accepted,
                "gamma_histogram": {str(g): n for g, n in stats.gamma_histogram.items()},
                "queue_s": round((job.started or job.arrived) - job.arrived, 4),
                "prefill_s": round(stats.prefill_s, 4),
                "target_s": round(stats.target_s, 4),
                "draft_s": round(stats.draft_s, 4),
                "decode_tokens_per_s": round(stats.decode_tokens_per_s, 3),
            }
        )
        if job.predicted:  # OpenAI's Predicted Outputs counts
            usage["completion_tokens_details"] = {
                "accepted_prediction_tokens": stats.accepted_prediction_tokens,
                "rejected_prediction_tokens": stats.rejected_prediction_tokens,
            }
    return usage


def _internal_error(request_id: str, exc: BaseException | None = None) -> APIError:
    """A 500 for the client (a generic message and the request id) whose details go to the server log."""
    log.error("request %s failed", request_id, exc_info=exc if exc is not None else True)
    return APIError(500, f"internal error while generating (request id {request_id}); the server log has "
                    "the details", code="internal_error")


def _finish_reason(job: Job) -> str:
    reason = job.result.finish_reason if job.result is not None else "length"
    return "stop" if reason == "stop" else "length"


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


def create_app(gen: Any, settings: ServerSettings) -> FastAPI:
    """The FastAPI app serving `gen` (a SpeculativeGenerator); run it with uvicorn."""
    from ..generator import SpeculativeGenerator

    metrics = Metrics()
    queue: Any = None
    context = getattr(gen.target, "max_length", None)
    if settings.parallel > 1:
        why = batchable(gen)
        if why is None:
            on = settings.prefix_cache
            kv, ram = (settings.cache_tokens, settings.cache_ram_mib << 20) if on else (0, 0)
            queue = BatchScheduler(gen, metrics, settings.parallel, settings.ctx_size, settings.max_waiting,
                                   settings.prefill_chunk, settings.kv_unified, kv, ram)
            context = queue.context  # what one request may use of the shared KV memory
            per = " on this server (--ctx-size)"
        else:
            log.warning("serving one request at a time: %s", why)
    if queue is None:
        queue = GenerationQueue(metrics, settings.max_waiting, held=lambda: int(gen.target.length))
        per = ""
    intake = Intake(gen, settings.model_name, context, per, settings.default_max_tokens)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        intake.close()
        if hasattr(queue, "close"):
            queue.close()

    app = FastAPI(title="specdecode", description="Exact speculative decoding, OpenAI-compatible API",
                  lifespan=lifespan)
    plain = SpeculativeGenerator(gen.target)  # for requests with speculative.draft = false
    plain._cost_models = gen._cost_models  # one target, one cost curve: calibrated at start-up, shared
    app.state.metrics, app.state.queue, app.state.settings = metrics, queue, settings
    created = int(time.time())

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
        err = _internal_error("req-" + secrets.token_hex(8), exc)
        return JSONResponse(err.body(), status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        out: dict[str, Any] = {"status": "ok", "model": settings.model_name, "queue_length": queue.waiting}
        pool = getattr(queue, "pool", None)
        if pool is not None:  # batching: slots of fixed context
            out["slots"] = {"total": pool.n_seq, "in_use": pool.n_seq - pool.free, "context": pool.n_ctx_seq}
        return out

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    add_routes(app, gen, intake, settings.model_name, created, context)  # tokenising off the model thread
    add_web(app, gen, settings, context)

    def _starter(body: _Common, prompt_ids: list[int], budget: int, prediction: list[int] | None = None,
                 options: dict[str, Any] | None = None) -> Any:
        spec = body.speculative
        use = gen if spec is None or spec.draft else plain
        gamma = spec.gamma if spec is not None and spec.gamma is not None else settings.gamma
        # a request may lower the caps, never raise them: costs are calibrated once, at start-up
        gamma_max, lookup_gamma_max = settings.gamma_max, settings.lookup_gamma_max
        if spec is not None and spec.gamma_max is not None:
            gamma_max = min(spec.gamma_max, gamma_max)
            lookup_gamma_max = min(spec.gamma_max, lookup_gamma_max)
        kwargs = dict(
            max_new_tokens=budget,
            temperature=body.temperature,
            top_k=body.top_k,
            top_p=body.top_p,
            min_p=body.min_p,
            seed=body.seed,
            stop=body.stops or None,
            gamma=gamma,
            gamma_max=gamma_max,
            lookup_gamma_max=lookup_gamma_max,
            prediction=prediction,
            cache_prompt=settings.prefix_cache and body.cache_prompt is not False,
            **(options or {}),  # structured output, penalties, logprobs (server.constraints)
        )

        def start(bind: Any = None) -> Any:
            """The stream (one request at a time) or, given `bind` (a batching slot), the Generation."""
            try:
                if bind is None:
                    return use.stream(prompt_ids, **kwargs)
                return use.open(prompt_ids, **kwargs, **bind(use))
            except ValueError as e:  # settings the generator refuses (e.g. gamma_max): the client's fault
                raise APIError(400, str(e), "speculative") from None

        return start

    async def _serve(request: Request, body: _Common, chat: bool) -> Any:
        job = Job(arrived=time.perf_counter())
        ready = await intake.prepare(body, chat)  # checks and tokens, off the loop and ahead of the queue
        prompt_ids, options, tool_use = ready.prompt_ids, ready.options, ready.tool_use
        job.prompt_tokens, job.predicted = len(prompt_ids), ready.prediction is not None
        options.update(provenance_option(body, tool_use))
        prov, start = with_provenance(_starter(body, prompt_ids, ready.budget, ready.prediction, options),
                                      options, gen)
        rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        head = {"id": rid, "created": int(time.time()), "model": settings.model_name}

        def pieces(admitted: bool = False) -> AsyncIterator[str]:
            return queue.run(job, start, request.is_disconnected, admitted=admitted)

        if not body.stream:
            text = []
            async with aclosing(pieces()) as stream:
                async for piece in stream:
                    text.append(piece)
            metrics.latency.observe(time.perf_counter() - job.arrived)
            kind = "chat.completion" if chat else "text_completion"
            logprobs = None
            if job.result is not None and job.result.logprobs is not None:
                shape = chat_logprobs if chat else completion_logprobs
                logprobs = await queue.call(shape, job.result.logprobs, gen.tokenizer)
            reply = choice(chat, "".join(text), _finish_reason(job), tool_use, logprobs)
            out = {**head, "object": kind, "choices": [reply], "usage": _usage(job, len(prompt_ids))}
            return {**out, "specdecode": await queue.call(prov.spans, "".join(text))} if prov else out

        queue.admit()  # refuse before the 200 is sent, not in-band
        live = LiveLogprobs(start, gen.tokenizer, chat) if "logprobs" in options else None
        start = live.start if live is not None else start
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        shaper = StreamShaper(chat, head, tool_use)

        async def sse() -> AsyncIterator[str]:
            try:
                for event in shaper.start():
                    yield event
                async with aclosing(pieces(admitted=True)) as stream:
                    async for piece in stream:
                        spans = prov and await queue.call(prov.spans, piece)
                        for event in shaper.piece(piece, live and await queue.call(live.take), spans):
                            yield event
            except APIError as e:
                yield f"data: {json.dumps(e.body())}\n\n"
                return
            except Exception:  # after the 200 went out: report in-band, end the stream
                yield f"data: {json.dumps(_internal_error(rid).body())}\n\n"
                return
            if job.cancelled:
                return
            metrics.latency.observe(time.perf_counter() - job.arrived)
            last = live and await queue.call(live.take)
            for event in shaper.end(_finish_reason(job), _usage(job, len(prompt_ids)), include_usage, last):
                yield event

        return StreamingResponse(
            sse(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest) -> Any:
        return await _serve(request, body, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatCompletionRequest) -> Any:
        return await _serve(request, body, chat=True)

    return app
