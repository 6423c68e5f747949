"""The `specdecode.provenance` extension of the API: which source produced each token of the reply.

Opt-in (`"specdecode": {"provenance": true}` in the request): each streamed chunk then carries
`"specdecode": {"tokens": [{"text", "token", "source", "p", "draft"}, ...]}`, whose texts join to exactly
that chunk's text, and a whole response carries the same object for its whole text. Without it nothing
changes on the wire.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ..text import TextStream
from .schemas import APIError

UNKNOWN = "unknown"  # text no recorded token accounts for (never expected; reported rather than hidden)


def provenance_option(body: Any, tools: Any) -> dict[str, Any]:
    """The generation option a request's `specdecode.provenance` asks for (a 400 when it also offers
    tools: tool calls are not streamed as text, so their tokens would have no place)."""
    options = getattr(body, "specdecode", None)
    if options is None or not options.provenance:
        return {}
    if tools is not None:
        raise APIError(400, "specdecode.provenance cannot be combined with tools: leave one out",
                       "specdecode.provenance")
    return {"provenance": True}


def with_provenance(start: Any, options: dict[str, Any], gen: Any) -> tuple[LiveProvenance | None, Any]:
    """The request's `start`, wrapped to follow the sources of its tokens when `options` ask for them,
    and the `LiveProvenance` that does (None when they do not)."""
    if not options.get("provenance"):
        return None, start
    live = LiveProvenance(start, gen.tokenizer)
    return live, live.start


class LiveProvenance:
    """Wraps a request's `start` to keep the generation it starts; `spans(text)` gives the tokens that
    wrote the next piece of the reply's text, with their sources, cut to fit the piece exactly.

    Each token's text is decoded here as the reply's text is (the same incremental decoder, token by
    token), so the pieces line up character for character; a token that ends inside a multi-byte
    character gets its text with the token that completes it.
    """

    def __init__(self, start: Any, tokenizer: Any) -> None:
        self._start, self._text = start, TextStream(tokenizer, [])
        self._sources: list[Any] | None = None
        self._read = 0  # sources decoded so far
        self._pending: deque[list[Any]] = deque()  # [text not yet sent, its TokenSource]
        self._last: list[Any] | None = None
        self._flushed = False

    def start(self, *args: Any) -> Any:
        started = self._start(*args)
        self._sources = started.live_provenance
        return started

    def _decode(self) -> None:
        sources = self._sources or []
        for entry in sources[self._read : len(sources)]:
            self._read += 1
            piece = self._text.add([entry.token])
            if piece:
                self._last = [piece, entry]
                self._pending.append(self._last)

    def _flush(self) -> None:
        """The text the decoder still holds (an incomplete character at the very end), to the last token."""
        self._flushed = True
        tail = self._text.finish()
        if tail and self._last is not None:
            if self._pending and self._pending[-1] is self._last:
                self._last[0] += tail
            else:
                self._last = [tail, self._last[1]]
                self._pending.append(self._last)

    def spans(self, text: str) -> dict[str, Any]:
        """`{"tokens": [...]}` for the next `text` of the reply: one entry per token (or part of one, when a
        token's text straddles two pieces), their `text`s joined being `text`."""
        self._decode()
        out: list[dict[str, Any]] = []
        at = 0
        while at < len(text):
            if not self._pending and not self._flushed:
                self._flush()
            if not self._pending:
                out.append({"text": text[at:], "source": UNKNOWN})
                break
            head = self._pending[0]
            n = min(len(head[0]), len(text) - at)
            out.append({"text": text[at : at + n], **head[1].to_dict()})
            at += n
            head[0] = head[0][n:]
            if not head[0]:
                self._pending.popleft()
        return {"tokens": out}
