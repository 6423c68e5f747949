"""OpenAI's response shapes for log-probabilities: chat's `{"content": [...]}` and completions'
`{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`."""

from __future__ import annotations

from typing import Any


def _text(tokenizer: Any, token: int) -> str:
    return tokenizer.decode([token]) if tokenizer is not None else str(token)


def chat_logprobs(entries: list[Any], tokenizer: Any) -> dict[str, Any]:
    """`choices[i].logprobs` of a chat completion (or of one streamed chunk)."""

    def item(token: int, logprob: float) -> dict[str, Any]:
        text = _text(tokenizer, token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    content = [{**item(e.token, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]}
               for e in entries]
    return {"content": content, "refusal": None}


def completion_logprobs(entries: list[Any], tokenizer: Any, offset: int = 0) -> dict[str, Any]:
    """`choices[i].logprobs` of a text completion; `offset`: the text offset of the first entry."""
    tokens, offsets = [], []
    for e in entries:
        offsets.append(offset)
        text = _text(tokenizer, e.token)
        tokens.append(text)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{_text(tokenizer, t): lp for t, lp in e.top} for e in entries],
        "text_offset": offsets,
    }


class LiveLogprobs:
    """Streams logprobs: wraps a request's `start` to keep the generation it starts, and `take` shapes the
    entries produced since the last call (each chunk carries those of the steps before it)."""

    def __init__(self, start: Any, tokenizer: Any, chat: bool) -> None:
        self._start, self.tokenizer, self.chat = start, tokenizer, chat
        self._entries: list[Any] | None = None
        self._sent, self._offset = 0, 0

    def start(self, *args: Any) -> Any:
        started = self._start(*args)
        self._entries = started.live_logprobs
        return started

    def take(self) -> dict[str, Any] | None:
        """The not yet sent entries in OpenAI's shape (None when there are none)."""
        if self._entries is None or len(self._entries) <= self._sent:
            return None
        new = self._entries[self._sent :]
        self._sent += len(new)
        if self.chat:
            return chat_logprobs(new, self.tokenizer)
        shaped = completion_logprobs(new, self.tokenizer, self._offset)
        self._offset += sum(len(t) for t in shaped["tokens"])
        return shaped
