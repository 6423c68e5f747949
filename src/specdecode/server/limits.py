"""The request-body limit: a body larger than `--max-body-mb` is refused with a 413 before it is read.

A body that announces its size (Content-Length) is refused on its headers alone; a chunked body is read
only up to the limit and refused as soon as it passes it. Either way the server never holds more than the
limit of any request's body, and the client gets an OpenAI-shaped error, not a dropped connection (the
server discards what the client still sends, so the client reads the 413 once it has written its body).
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from .schemas import APIError

DEFAULT_MAX_BODY_MB = 4.0  # a 32k-token prompt and a prediction as long, JSON-escaped, fit with room to spare


def max_body_bytes(mb: float) -> int:
    """`--max-body-mb` in bytes (MiB); a ValueError unless it is positive."""
    if not 0 < mb < 1 << 20:
        raise ValueError(f"--max-body-mb must be a positive number of MiB (under 1 TiB), got {mb}")
    return int(mb * (1 << 20))


def too_large(size: int | None, limit: int) -> APIError:
    """The 413 for a body of `size` bytes (None: unknown, streamed past the limit)."""
    said = f"is {size} bytes" if size is not None else "is larger than that (cut off there)"
    mib = limit / (1 << 20)
    return APIError(413, f"this server accepts request bodies of at most {limit} bytes ({mib:g} MiB, "
                    f"--max-body-mb); this one {said}", code="request_too_large")


class BodyLimit:
    """ASGI middleware: refuse request bodies over `max_bytes` with a 413, before they are read."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:  # the HTTP parser refuses these before us; never trust it anyway
                size = self.max_bytes + 1
            if size > self.max_bytes:
                return await self._refuse(too_large(size, self.max_bytes), scope, receive, send)
            return await self.app(scope, receive, send)
        if b"chunked" not in headers.get(b"transfer-encoding", b"").lower():
            return await self.app(scope, receive, send)  # no body
        chunks, size = [], 0
        while True:  # a chunked body: read it here, up to the limit, then hand it on whole
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                return await self._refuse(too_large(None, self.max_bytes), scope, receive, send)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _refuse(self, err: APIError, scope: Any, receive: Any, send: Any) -> None:
        await JSONResponse(err.body(), status_code=err.status)(scope, receive, send)


def _replay(body: bytes, receive: Any) -> Any:
    """A `receive` that gives `body` first, then whatever the connection says next (a disconnect)."""
    given = False

    async def replay() -> Any:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
