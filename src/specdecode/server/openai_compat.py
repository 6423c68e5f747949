"""What clients expect around the completions: CORS for browser clients, `/v1/models/{id}`, and
llama-server's `/tokenize` and `/detokenize`."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from .schemas import APIError

CORS_HEADERS = "Authorization, Content-Type, OpenAI-Organization, OpenAI-Project, X-Stainless-*"


def _loopback(origin: str) -> bool:
    host = urlsplit(origin).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class CORS:
    """ASGI middleware: browsers may call the API from loopback origins, from the server's own pages and
    from the `--cors-origin` list ("*": any); with an API key set, from any origin (the key guards it).
    A request from any other origin gets a 403, so that a page the user visits cannot drive the model."""

    def __init__(self, app: Any, origins: list[str] | None = None, api_key: str | None = None) -> None:
        self.app, self.api_key = app, api_key
        self.origins = {o.rstrip("/") for o in origins or []}

    def allowed(self, origin: str, host: str) -> bool:
        """Whether a page at `origin` may call this server (reached as `host`)."""
        if "*" in self.origins or self.api_key or origin.rstrip("/") in self.origins or _loopback(origin):
            return True
        return urlsplit(origin).netloc == host  # the server's own page

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        origin = headers.get(b"origin", b"").decode("latin-1")
        if not origin:  # not a browser's cross-origin call
            return await self.app(scope, receive, send)
        if not self.allowed(origin, headers.get(b"host", b"").decode("latin-1")):
            err = APIError(403, f"cross-origin requests from {origin} are not allowed: start the server with "
                           f"--cors-origin {origin} (or an --api-key) to allow them", code="cors_forbidden")
            return await JSONResponse(err.body(), status_code=403)(scope, receive, send)
        allow = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
        if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
            asked = headers.get(b"access-control-request-headers", CORS_HEADERS.encode())
            response = Response(status_code=204)
            response.raw_headers.extend(allow + [
                (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                (b"access-control-allow-headers", asked),
                (b"access-control-max-age", b"600"),
            ])
            return await response(scope, receive, send)

        async def send_with_cors(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + allow}
            await send(message)

        await self.app(scope, receive, send_with_cors)


class TokenizeRequest(BaseModel):
    """llama-server's POST /tokenize body."""

    model_config = ConfigDict(extra="ignore")

    content: str
    add_special: bool = False
    with_pieces: bool = False


class DetokenizeRequest(BaseModel):
    """llama-server's POST /detokenize body."""

    model_config = ConfigDict(extra="ignore")

    tokens: list[int]


def model_card(name: str, created: int, context: int | None) -> dict[str, Any]:
    """The served model as OpenAI's model object (plus its context window, as vLLM's `max_model_len`)."""
    card: dict[str, Any] = {"id": name, "object": "model", "created": created, "owned_by": "specdecode"}
    if context:
        card["max_model_len"] = context
    return card


def add_routes(app: FastAPI, gen: Any, queue: Any, name: str, created: int, context: int | None) -> None:
    """`/v1/models`, `/v1/models/{id}`, `/tokenize` and `/detokenize` on `app`; `queue.call(fn)` runs the
    tokenizer off the event loop."""

    def tokenizer() -> Any:
        if gen.tokenizer is None:
            raise APIError(400, "this model has no tokenizer: send and read token ids", "content")
        return gen.tokenizer

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(name, created, context)]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != name:
            raise APIError(404, f"model '{model_id}' is not served here; this server serves '{name}'",
                           "model", "model_not_found")
        return model_card(name, created, context)

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        tok = tokenizer()
        ids = await queue.call(lambda: list(tok(body.content, add_special_tokens=body.add_special)
                                            ["input_ids"]))
        if not body.with_pieces:
            return {"tokens": ids}
        pieces = await queue.call(lambda: [tok.decode([t]) for t in ids])
        return {"tokens": [{"id": t, "piece": p} for t, p in zip(ids, pieces, strict=True)]}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict[str, Any]:
        vocab = int(gen.target.vocab_size)
        bad = [t for t in body.tokens if not 0 <= t < vocab]
        if bad:
            raise APIError(400, f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})", "tokens")
        tok = tokenizer()
        return {"content": await queue.call(lambda: tok.decode(body.tokens))}
