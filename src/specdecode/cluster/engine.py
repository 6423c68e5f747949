"""An engine replica: one model pair, its sequence pool and the single-process server's request handling.

The ingress calls `complete` through a deployment handle, streaming: the replica answers with one
head item, then (for `stream: true`) the server-sent events, as `RequestHandler` produces them.
Items: ("error", status, body), ("json", body, replica) or ("sse", replica) followed by event strings.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from pydantic import ValidationError

from ..server.handling import RequestHandler, internal_error
from ..server.metrics import Metrics
from ..server.openai_compat import DetokenizeRequest, TokenizeRequest
from ..server.schemas import APIError, ChatCompletionRequest, CompletionRequest
from .hub import REPORT_S
from .prefix import RoutedCall

log = logging.getLogger("specdecode.cluster")


async def _never() -> bool:
    """A replica learns that a client left by the cancellation of its call, not by polling."""
    return False


class Engine:
    """One engine replica (a Ray Serve deployment): loads and warms up the model pair `options` name."""

    def __init__(self, options: dict[str, Any], hub: Any = None) -> None:
        from ray import serve

        from ..cli.commands import load_generator, server_settings
        from ..server import _off_main_thread, warm_up
        from .options import serve_args

        args = serve_args(options)
        gen = load_generator(args)
        settings = server_settings(args)
        _off_main_thread(warm_up, gen, settings)
        self.metrics = Metrics()
        self.handler = RequestHandler(gen, settings, self.metrics)
        context = serve.get_replica_context()
        self.replica = context.replica_id.to_full_id_str()
        self.info = {"pid": os.getpid(), "node": socket.gethostname(), "context": self.handler.context}
        self.hub = hub
        self._stop = threading.Event()
        if hub is not None:
            threading.Thread(target=self._report, name="specdecode-report", daemon=True).start()

    def _report(self) -> None:
        while not self._stop.wait(REPORT_S):
            try:
                queue = self.handler.queue
                pool = getattr(queue, "pool", None)
                info = {**self.info, "queue_length": queue.waiting,
                        "slots_in_use": (pool.n_seq - pool.free) if pool is not None else None}
                self.hub.report.remote(self.replica, info, self.metrics.render().decode())
            except Exception:  # the hub restarting: report again next time
                log.debug("metrics report failed", exc_info=True)

    async def complete(self, call: RoutedCall) -> AsyncIterator[Any]:
        """A completion or chat completion: the head item, then a stream's events."""
        try:
            model = ChatCompletionRequest if call.chat else CompletionRequest
            body = model.model_validate(call.body)
            reply = await self.handler.complete(body, call.chat, _never)
        except ValidationError as e:  # the ingress validated it already: only a version skew gets here
            yield ("error", 400, APIError(400, f"invalid request: {e.errors()[0].get('msg')}").body())
            return
        except APIError as e:
            yield ("error", e.status, e.body())
            return
        except Exception as exc:
            yield ("error", 500, internal_error(f"{self.replica}-{time.time():.0f}", exc).body())
            return
        if isinstance(reply, dict):
            yield ("json", reply, self.replica)
            return
        yield ("sse", self.replica)
        async with aclosing(reply) as events:
            async for event in events:
                yield event

    async def call(self, what: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """The small endpoints: ("model_card" | "tokenize" | "detokenize", body) -> (status, body)."""
        try:
            if what == "model_card":
                return 200, await self.handler.model_card()
            if what == "tokenize":
                return 200, await self.handler.tokenize(TokenizeRequest.model_validate(body))
            if what == "detokenize":
                return 200, await self.handler.detokenize(DetokenizeRequest.model_validate(body))
        except APIError as e:
            return e.status, e.body()
        raise ValueError(f"unknown engine call {what!r}")

    def check_health(self) -> None:
        """Ray Serve's health check: the replica is unhealthy once its scheduler thread has stopped."""
        thread = getattr(self.handler.queue, "_thread", None)
        if thread is not None and not thread.is_alive():
            raise RuntimeError("the batching scheduler thread has stopped")

    def __del__(self) -> None:
        self._stop.set()
        self.handler.close()
