"""The request handling behind the OpenAI-compatible API: from a validated request body to a reply.

`RequestHandler` owns one generator and its request queue (the batching scheduler or one request at a
time); the HTTP app (`server.app`) calls it in a single process, and each engine replica of a Ray Serve
cluster (`specdecode.cluster`) calls the same handler, so both paths validate, tokenize, budget, generate
and shape replies with this one code.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

from .batching import BatchScheduler, batchable
from .logprobs import LiveLogprobs, chat_logprobs, completion_logprobs
from .metrics import Metrics
from .openai_compat import DetokenizeRequest, TokenizeRequest, model_card
from .provenance import provenance_option, with_provenance
from .replies import StreamShaper, choice
from .schemas import APIError, _Common
from .settings import ServerSettings
from .validation import COMPLETIONS_DEFAULT_MAX_TOKENS, Intake
from .worker import GenerationQueue, Job

__all__ = ["COMPLETIONS_DEFAULT_MAX_TOKENS", "Reply", "RequestHandler", "internal_error"]

log = logging.getLogger("specdecode.server")

Reply = dict[str, Any] | AsyncIterator[str]  # a whole response body, or a stream's server-sent events


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


def internal_error(request_id: str, exc: BaseException | None = None) -> APIError:
    """A 500 for the client (a generic message and the request id) whose details go to the server log."""
    log.error("request %s failed", request_id, exc_info=exc if exc is not None else True)
    return APIError(500, f"internal error while generating (request id {request_id}); the server log has "
                    "the details", code="internal_error")


def _finish_reason(job: Job) -> str:
    reason = job.result.finish_reason if job.result is not None else "length"
    return "stop" if reason == "stop" else "length"


class RequestHandler:
    """Serves completions, chat completions, tokenization and health for one generator (`gen`, a
    `SpeculativeGenerator`), through its own request queue; counts into `metrics`."""

    def __init__(self, gen: Any, settings: ServerSettings, metrics: Metrics) -> None:
        from ..generator import SpeculativeGenerator

        self.gen, self.settings, self.metrics = gen, settings, metrics
        self.created = int(time.time())
        queue: Any = None
        self.context: int | None = getattr(gen.target, "max_length", None)
        self.per = ""
        if settings.parallel > 1:
            why = batchable(gen)
            if why is None:
                on = settings.prefix_cache
                kv, ram = (settings.cache_tokens, settings.cache_ram_mib << 20) if on else (0, 0)
                queue = BatchScheduler(gen, metrics, settings.parallel, settings.ctx_size,
                                       settings.max_waiting, settings.prefill_chunk, settings.kv_unified,
                                       kv, ram)
                self.context = queue.context  # what one request may use of the shared KV memory
                self.per = " on this server (--ctx-size)"
            else:
                log.warning("serving one request at a time: %s", why)
        if queue is None:
            queue = GenerationQueue(metrics, settings.max_waiting, held=lambda: int(gen.target.length))
        self.queue = queue
        # checks and tokens on threads of their own, ahead of the queue (a bad request never waits)
        self.intake = Intake(gen, settings.model_name, self.context, self.per, settings.default_max_tokens)
        self.plain = SpeculativeGenerator(gen.target)  # for requests with speculative.draft = false
        self.plain._cost_models = gen._cost_models  # one target, one cost curve: calibrated at start-up

    def close(self) -> None:
        """Stop the intake and the request queue (running requests are failed)."""
        self.intake.close()
        if hasattr(self.queue, "close"):
            self.queue.close()

    # -- the small endpoints --------------------------------------------------------------------------
    async def health(self) -> tuple[int, dict[str, Any]]:
        """The /health status code and body."""
        queue = self.queue
        out: dict[str, Any] = {"status": "ok", "model": self.settings.model_name,
                               "queue_length": queue.waiting}
        pool = getattr(queue, "pool", None)
        if pool is not None:  # batching: slots of fixed context
            out["slots"] = {"total": pool.n_seq, "in_use": pool.n_seq - pool.free, "context": pool.n_ctx_seq}
        return 200, out

    async def model_card(self) -> dict[str, Any]:
        """The served model as OpenAI's model object."""
        return model_card(self.settings.model_name, self.created, self.context)

    async def metrics_text(self) -> bytes:
        """The Prometheus text of GET /metrics."""
        return self.metrics.render()

    def _tokenizer(self) -> Any:
        if self.gen.tokenizer is None:
            raise APIError(400, "this model has no tokenizer: send and read token ids", "content")
        return self.gen.tokenizer

    async def tokenize(self, body: TokenizeRequest) -> dict[str, Any]:
        """llama-server's /tokenize."""
        tok = self._tokenizer()
        ids = await self.intake.call(lambda: list(tok(body.content, add_special_tokens=body.add_special)
                                                  ["input_ids"]))
        if not body.with_pieces:
            return {"tokens": ids}
        pieces = await self.intake.call(lambda: [tok.decode([t]) for t in ids])
        return {"tokens": [{"id": t, "piece": p} for t, p in zip(ids, pieces, strict=True)]}

    async def detokenize(self, body: DetokenizeRequest) -> dict[str, Any]:
        """llama-server's /detokenize."""
        vocab = int(self.gen.target.vocab_size)
        bad = [t for t in body.tokens if not 0 <= t < vocab]
        if bad:
            raise APIError(400, f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})", "tokens")
        tok = self._tokenizer()
        return {"content": await self.intake.call(lambda: tok.decode(body.tokens))}

    # -- completions ----------------------------------------------------------------------------------
    def _starter(self, body: _Common, prompt_ids: list[int], budget: int,
                 prediction: list[int] | None = None, options: dict[str, Any] | None = None) -> Any:
        settings, spec = self.settings, body.speculative
        use = self.gen if spec is None or spec.draft else self.plain
        gamma = spec.gamma if spec is not None and spec.gamma is not None else settings.gamma
        # a request may lower the caps, never raise them: costs are calibrated once, at start-up
        gamma_max, lookup_gamma_max = settings.gamma_max, settings.lookup_gamma_max
        if spec is not None and spec.gamma_max is not None:
            gamma_max = min(spec.gamma_max, gamma_max)
            lookup_gamma_max = min(spec.gamma_max, lookup_gamma_max)
        kwargs = dict(
            max_new_tokens=budget, temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
            min_p=body.min_p, seed=body.seed, stop=body.stops or None, gamma=gamma, gamma_max=gamma_max,
            lookup_gamma_max=lookup_gamma_max, prediction=prediction,
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

    async def complete(self, body: _Common, chat: bool, disconnected: Callable[[], Awaitable[bool]]
                       ) -> Reply:
        """A completion (`chat` False) or chat completion: the whole response body, or for `stream: true`
        the server-sent events. Anything wrong with the request raises `APIError` before a stream starts;
        `disconnected()` turning true stops the generation."""
        gen, settings, queue, metrics = self.gen, self.settings, self.queue, self.metrics
        job = Job(arrived=time.perf_counter())
        ready = await self.intake.prepare(body, chat)  # checks and tokens, off the loop, ahead of the queue
        prompt_ids, options, tool_use = ready.prompt_ids, ready.options, ready.tool_use
        job.prompt_tokens, job.predicted = len(prompt_ids), ready.prediction is not None
        options.update(provenance_option(body, tool_use))
        starter = self._starter(body, prompt_ids, ready.budget, ready.prediction, options)
        prov, start = with_provenance(starter, options, gen)
        rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        head = {"id": rid, "created": int(time.time()), "model": settings.model_name}

        def pieces(admitted: bool = False) -> AsyncIterator[str]:
            return queue.run(job, start, disconnected, admitted=admitted)

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
                yield f"data: {json.dumps(internal_error(rid).body())}\n\n"
                return
            if job.cancelled:
                return
            metrics.latency.observe(time.perf_counter() - job.arrived)
            last = live and await queue.call(live.take)
            for event in shaper.end(_finish_reason(job), _usage(job, len(prompt_ids)), include_usage, last):
                yield event

        return sse()
