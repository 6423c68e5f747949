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

from .batching import BatchScheduler, batchable
from .constraints import generation_options
from .logprobs import LiveLogprobs, chat_logprobs, completion_logprobs
from .metrics import Metrics
from .schemas import APIError, ChatCompletionRequest, CompletionRequest, _Common
from .worker import GenerationQueue, Job

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # as OpenAI's legacy completions endpoint

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
        default_max_tokens: int = 512,
        lookup_gamma_max: int = 32,
        parallel: int = 1,
        ctx_size: int = 4096,
        prefill_chunk: int = 256,
        kv_unified: bool = True,
    ) -> None:
        self.model_name, self.gamma, self.gamma_max = model_name, gamma, gamma_max
        # batching (llama.cpp): requests at once, positions per request, prompt tokens fed per step
        self.parallel, self.ctx_size, self.prefill_chunk = parallel, ctx_size, prefill_chunk
        self.kv_unified = kv_unified
        self.lookup_gamma_max = lookup_gamma_max
        self.api_key, self.max_waiting, self.default_max_tokens = api_key, max_waiting, default_max_tokens


def _usage(job: Job, prompt_tokens: int) -> dict[str, Any]:
    stats = job.result.stats if job.result is not None else None
    completion = stats.new_tokens if stats else 0
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
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
        if self.api_key and path != "/health":
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
            queue = BatchScheduler(gen, metrics, settings.parallel, settings.ctx_size, settings.max_waiting,
                                   settings.prefill_chunk, settings.kv_unified)
            context = queue.context  # each request's fixed share of the KV memory
            per = " per request (--ctx-size)"
        else:
            log.warning("serving one request at a time: %s", why)
    if queue is None:
        queue = GenerationQueue(metrics, settings.max_waiting)
        per = ""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if hasattr(queue, "close"):
            queue.close()

    app = FastAPI(title="specdecode", description="Exact speculative decoding, OpenAI-compatible API",
                  lifespan=lifespan)
    plain = SpeculativeGenerator(gen.target)  # for requests with speculative.draft = false
    plain._cost_models = gen._cost_models  # one target, one cost curve: calibrated at start-up, shared
    app.state.metrics, app.state.queue, app.state.settings = metrics, queue, settings
    created = int(time.time())

    app.add_middleware(AuthAndCount, api_key=settings.api_key, metrics=metrics)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            message = (
                f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})"
            )
        elif first.get("type") == "missing":
            message = f"missing required field '{'.'.join(loc)}'"
        else:
            message = f"invalid value for '{'.'.join(loc)}': {first.get('msg', 'invalid')}"
        return JSONResponse(APIError(400, message, ".".join(loc) or None).body(), status_code=400)

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

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": settings.model_name, "object": "model", "created": created, "owned_by": "specdecode"}
            ],
        }

    def _check_model(body: _Common) -> None:
        if body.model not in (None, "", settings.model_name):
            raise APIError(
                404,
                f"model '{body.model}' is not served here; this server serves "
                f"'{settings.model_name}' (see GET /v1/models)",
                "model",
                "model_not_found",
            )

    async def _prompt_ids(prompt: Any, chat: bool) -> list[int]:
        try:
            return await queue.call(gen.encode, prompt, chat)  # the tokenizer is not thread-safe
        except ValueError as e:
            raise APIError(400, str(e), "messages" if chat else "prompt") from None

    def _budget(body: _Common, prompt_len: int, default: int) -> int:
        asked = body.token_limit
        if context is None:
            return asked or default
        if prompt_len >= context:
            raise APIError(
                400,
                f"the prompt is {prompt_len} tokens but the model's context window{per} is {context}: "
                "shorten it",
                "messages" if hasattr(body, "messages") else "prompt",
                "context_length_exceeded",
            )
        if asked is not None and prompt_len + asked > context:
            raise APIError(
                400,
                f"this model's maximum context length{per} is {context} tokens; you requested "
                f"{prompt_len + asked} ({prompt_len} in the prompt, {asked} for the completion): "
                "lower max_tokens or shorten the prompt",
                "max_tokens",
                "context_length_exceeded",
            )
        return asked or min(default, context - prompt_len)

    async def _prediction_ids(body: _Common) -> list[int] | None:
        """The request's predicted output as token ids, within the context window (else a 400)."""
        if body.prediction is None:
            return None
        text = body.prediction.text()
        if gen.tokenizer is None:
            raise APIError(400, "prediction needs a tokenizer, and this model has none", "prediction")
        ids = await queue.call(lambda: gen.tokenizer(text, add_special_tokens=False)["input_ids"])
        if context is not None and len(ids) > context:
            raise APIError(400, f"the prediction is {len(ids)} tokens, more than the model's context "
                           f"window of {context}: send a shorter prediction", "prediction",
                           "context_length_exceeded")
        return list(ids)

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
        body.unsupported()
        options = generation_options(body, chat)
        _check_model(body)
        job = Job(arrived=time.perf_counter())
        if chat:
            assert isinstance(body, ChatCompletionRequest)
            prompt_ids = await _prompt_ids(body.chat_messages(), True)
            default = settings.default_max_tokens
        else:
            assert isinstance(body, CompletionRequest)
            prompt_ids = await _prompt_ids(body.prompt_value(), False)
            default = COMPLETIONS_DEFAULT_MAX_TOKENS
        budget = _budget(body, len(prompt_ids), default)
        prediction = await _prediction_ids(body)
        job.predicted = prediction is not None
        start = _starter(body, prompt_ids, budget, prediction, options)
        rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        kind = "chat.completion" if chat else "text_completion"
        head = {"id": rid, "created": int(time.time()), "model": settings.model_name}

        def pieces(admitted: bool = False) -> AsyncIterator[str]:
            return queue.run(job, start, request.is_disconnected, admitted=admitted)

        if not body.stream:
            text = []
            async with aclosing(pieces()) as stream:
                async for piece in stream:
                    text.append(piece)
            metrics.latency.observe(time.perf_counter() - job.arrived)
            content = "".join(text)
            choice: dict[str, Any] = {"index": 0, "finish_reason": _finish_reason(job), "logprobs": None}
            if job.result is not None and job.result.logprobs is not None:
                shape = chat_logprobs if chat else completion_logprobs
                choice["logprobs"] = await queue.call(shape, job.result.logprobs, gen.tokenizer)
            choice.update(
                {"message": {"role": "assistant", "content": content}} if chat else {"text": content}
            )
            return {**head, "object": kind, "choices": [choice], "usage": _usage(job, len(prompt_ids))}

        queue.admit()  # refuse before the 200 is sent, not in-band
        live = LiveLogprobs(start, gen.tokenizer, chat) if "logprobs" in options else None
        start = live.start if live is not None else start
        chunk_kind = "chat.completion.chunk" if chat else "text_completion"
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def event(choices: list[dict[str, Any]], **extra: Any) -> str:
            return f"data: {json.dumps({**head, 'object': chunk_kind, 'choices': choices, **extra})}\n\n"

        def delta(piece: str | None, finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
            if chat:
                return {
                    "index": 0,
                    "delta": {} if piece is None else {"content": piece},
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }
            return {"index": 0, "text": piece or "", "logprobs": logprobs, "finish_reason": finish}

        async def sse() -> AsyncIterator[str]:
            try:
                if chat:
                    yield event(
                        [
                            {
                                "index": 0,
                                "delta": {"role": "assistant", "content": ""},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ]
                    )
                async with aclosing(pieces(admitted=True)) as stream:
                    async for piece in stream:
                        yield event([delta(piece, logprobs=live and await queue.call(live.take))])
            except APIError as e:
                yield f"data: {json.dumps(e.body())}\n\n"
                return
            except Exception:  # after the 200 went out: report in-band, end the stream
                yield f"data: {json.dumps(_internal_error(rid).body())}\n\n"
                return
            if job.cancelled:
                return
            metrics.latency.observe(time.perf_counter() - job.arrived)
            usage = _usage(job, len(prompt_ids))
            yield event([delta(None, _finish_reason(job), live and await queue.call(live.take))], usage=usage)
            if include_usage:
                yield event([], usage=usage)
            yield "data: [DONE]\n\n"

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
