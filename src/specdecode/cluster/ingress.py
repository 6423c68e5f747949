"""The cluster's ingress: the single-process server's HTTP app (`create_api`) over the engine replicas.

`RemoteEngine` is the app's engine here: it sends each completion to a replica through the deployment
handle (the router picks the replica by prompt prefix), turns the replica's head item into the same
reply or error as one process gives, and relays a stream's events. A replica that dies before the reply
started is retried on another; one that dies mid-stream ends that stream with an error event.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

from ..server.metrics import Metrics
from ..server.schemas import APIError, _Common
from ..server.settings import ServerSettings
from .prefix import RoutedCall, affinity_key

log = logging.getLogger("specdecode.cluster")
ATTEMPTS = 3  # a request whose replica died before answering is sent again, at most this many times in all
REPLICA_HEADER = "x-specdecode-replica"


def _replica_failed(exc: BaseException) -> APIError:
    log.warning("an engine replica failed while serving a request: %r", exc)
    return APIError(503, "the engine replica serving this request stopped; the cluster is restarting it: "
                    "retry the request", code="replica_failed")


def _busy(exc: BaseException) -> bool:
    from ray.serve.exceptions import BackPressureError

    return isinstance(exc, BackPressureError)


class RemoteEngine:
    """The `server.app.Engine` of the ingress: completions and the small endpoints on engine replicas,
    health and metrics from the hub."""

    def __init__(self, engine: Any, hub: Any, settings: ServerSettings, metrics: Metrics) -> None:
        self.engine, self.hub, self.settings, self.metrics = engine, hub, settings, metrics
        self._card: dict[str, Any] | None = None
        self._routing = 0  # requests waiting for a replica's first answer

    async def complete(self, body: _Common, chat: bool, request: Request) -> Any:
        raw = await request.json()
        call = RoutedCall(chat, raw, affinity_key(raw, chat))
        for attempt in range(ATTEMPTS):
            stream = self.engine.options(stream=True).complete.remote(call)
            self._routing += 1
            self.metrics.queue_length.set(self._routing)
            try:
                head = await stream.__anext__()
            except asyncio.CancelledError:
                stream.cancel()  # the client went away: the replica stops generating
                raise
            except Exception as exc:
                if _busy(exc):
                    raise APIError(503, f"the server is busy: {self.settings.max_waiting} requests "
                                   "already wait (--max-waiting); retry later", code="server_busy") from None
                if attempt + 1 < ATTEMPTS:
                    log.warning("retrying a request whose replica failed before answering: %r", exc)
                    continue
                raise _replica_failed(exc) from None
            finally:
                self._routing -= 1
                self.metrics.queue_length.set(self._routing)
            kind = head[0]
            if kind == "error":
                status, err = head[1], head[2]["error"]
                raise APIError(status, err["message"], err.get("param"), err.get("code"), err.get("type"))
            request.state.replica = head[-1]
            if kind == "json":
                return head[1]
            return self._relay(stream)
        raise AssertionError("unreachable")

    async def _relay(self, stream: Any) -> AsyncIterator[str]:
        done = False
        try:
            async for event in stream:
                yield event
            done = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the replica died mid-stream: this stream ends, cleanly, in-band
            done = True
            yield f"data: {json.dumps(_replica_failed(exc).body())}\n\n"
        finally:
            if not done:
                stream.cancel()  # the client went away: the replica stops generating

    async def _call(self, what: str, body: Any = None) -> Any:
        try:
            status, out = await self.engine.call.remote(what, body)
        except Exception as exc:
            if _busy(exc):
                raise APIError(503, "the server is busy; retry later", code="server_busy") from None
            raise _replica_failed(exc) from None
        if status != 200:
            err = out["error"]
            raise APIError(status, err["message"], err.get("param"), err.get("code"), err.get("type"))
        return out

    async def tokenize(self, body: Any) -> dict[str, Any]:
        return await self._call("tokenize", body.model_dump())

    async def detokenize(self, body: Any) -> dict[str, Any]:
        return await self._call("detokenize", body.model_dump())

    async def model_card(self) -> dict[str, Any]:
        if self._card is None:
            self._card = await self._call("model_card")
        return self._card

    async def health(self) -> tuple[int, dict[str, Any]]:
        replicas = await self.hub.replicas.remote()
        body = {"status": "ok" if replicas else "unavailable", "model": self.settings.model_name,
                "queue_length": self._routing, "replicas": replicas}
        return (200 if replicas else 503), body

    async def metrics_text(self) -> bytes:
        return (await self.hub.render.remote(self.metrics.render().decode())).encode()

    def close(self) -> None:
        pass


class Ingress:
    """The HTTP ingress (a Ray Serve deployment): the OpenAI-compatible app over `engine` replicas."""

    def __init__(self, options: dict[str, Any], engine: Any, hub: Any) -> None:
        from ..cli.commands import server_settings
        from .options import serve_args

        self.settings = server_settings(serve_args(options))
        self.metrics = Metrics()
        self.remote = RemoteEngine(engine, hub, self.settings, self.metrics)

    def __serve_build_asgi_app__(self) -> Any:
        from ..server.app import create_api

        app = create_api(self.remote, self.settings, self.metrics)
        app.add_middleware(ReplicaHeader)
        return app


class ReplicaHeader:
    """ASGI middleware: the id of the replica that served a completion, in the `x-specdecode-replica`
    response header."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_replica(message: Any) -> None:
            replica = scope.get("state", {}).get("replica")
            if message["type"] == "http.response.start" and replica:
                headers = list(message.get("headers", [])) + [(REPLICA_HEADER.encode(), replica.encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_replica)
