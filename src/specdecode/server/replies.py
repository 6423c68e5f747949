"""A generation's text as OpenAI's response objects: the whole `choices` entry, or the stream's chunks
(content deltas, tool-call deltas, the finish chunk, usage only in the `include_usage` chunk)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .schemas import ChatCompletionRequest
from .tool_schemas import Tool
from .tools import ToolCallParser, ToolStream, forced_call_grammar, parse_reply, tool_parser


@dataclass
class ToolUse:
    """A chat request whose reply may hold calls of `tools`, written in `parser`'s syntax. `grammar`: for
    `tool_choice` required or a named function, the Lark grammar (llguidance) the reply must follow."""

    parser: ToolCallParser
    tools: list[Tool]
    parallel: bool = True
    grammar: str | None = None


def tool_use_for(body: ChatCompletionRequest, tokenizer: Any) -> ToolUse | None:
    """How the reply's tool calls are read, or None when the request offers no tools (or `none`). A named
    function is the only one offered to the model and accepted from it."""
    if body.choice == "none" or not body.tools:
        return None
    parser = tool_parser(tokenizer, body.tools)
    assert parser is not None
    allowed = [t for t in body.tools if body.choice in ("auto", "required") or t.function.name == body.choice]
    grammar = None
    if body.choice != "auto":
        grammar = forced_call_grammar(parser, body.tools, body.choice, body.parallel_tool_calls)
    return ToolUse(parser, allowed, body.parallel_tool_calls, grammar)


def choice(chat: bool, text: str, finish: str, tool_use: ToolUse | None, logprobs: Any = None
           ) -> dict[str, Any]:
    """The one `choices` entry of a whole (not streamed) response (`logprobs`: already in OpenAI's shape)."""
    out: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": logprobs}
    if not chat:
        return {**out, "text": text}
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_use is not None:
        content, calls = parse_reply(tool_use.parser, text, tool_use.tools, tool_use.parallel)
        if calls:
            message = {"role": "assistant", "content": content, "tool_calls": [c.openai() for c in calls]}
            out["finish_reason"] = "tool_calls"
    return {**out, "message": message}


class StreamShaper:
    """The server-sent events of one streamed response, chunk by chunk."""

    def __init__(self, chat: bool, head: dict[str, Any], tool_use: ToolUse | None) -> None:
        self.chat, self.head = chat, head
        self.kind = "chat.completion.chunk" if chat else "text_completion"
        self.tools = ToolStream(tool_use.parser, tool_use.tools, tool_use.parallel) if tool_use else None

    def event(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        return f"data: {json.dumps({**self.head, 'object': self.kind, 'choices': choices, **extra})}\n\n"

    def _delta(self, delta: dict[str, Any] | str, finish: str | None = None, logprobs: Any = None
               ) -> dict[str, Any]:
        if self.chat:
            return {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {"index": 0, "text": delta or "", "logprobs": logprobs, "finish_reason": finish}

    def start(self) -> list[str]:
        return [self.event([self._delta({"role": "assistant", "content": ""})])] if self.chat else []

    def piece(self, piece: str, logprobs: Any = None, provenance: dict[str, Any] | None = None) -> list[str]:
        """The events for a piece of generated text (none while a tool call is being held); `logprobs`:
        its tokens' entries in OpenAI's shape, when asked for; `provenance`: its tokens' sources (our
        `specdecode` extension, only when asked for: the chunk is otherwise unchanged)."""
        if self.tools is not None:
            piece = self.tools.feed(piece)
            if not piece:
                return []
        extra = {} if provenance is None else {"specdecode": provenance}
        delta = self._delta({"content": piece} if self.chat else piece, None, logprobs)
        return [self.event([delta], **extra)]

    def end(self, finish: str, usage: dict[str, Any], include_usage: bool, logprobs: Any = None
            ) -> list[str]:
        """The held text or the tool calls, the finish chunk, the usage chunk if asked for, [DONE]."""
        events = []
        if self.tools is not None:
            rest, calls = self.tools.finish()
            if rest:
                events.append(self.event([self._delta({"content": rest})]))
            for i, call in enumerate(calls):
                events.append(self.event([self._delta({"tool_calls": [call.openai(index=i)]})]))
            if calls:
                finish = "tool_calls"
        events.append(self.event([self._delta({} if self.chat else "", finish, logprobs)]))
        if include_usage:  # OpenAI sends usage once, in a last chunk with no choices
            events.append(self.event([], usage=usage))
        return [*events, "data: [DONE]\n\n"]
