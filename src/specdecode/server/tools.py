"""Tool calls: one small parser per chat-template family (Qwen/Hermes `<tool_call>`, Llama 3.x JSON,
Mistral `[TOOL_CALLS]`), chosen from the model's chat template; OpenAI's `tool_calls` built from what
the model wrote, and the grammar a forced call (`tool_choice` required or named) must follow.

A reply that does not parse as calls of the offered functions stays plain text (`finish_reason` stop).
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from .schemas import APIError
from .tool_schemas import Tool


@dataclass
class ParsedCall:
    """One call the model wrote: the function's name and its arguments as JSON text."""

    name: str
    arguments: str

    def openai(self, index: int | None = None) -> dict[str, Any]:
        """The call in OpenAI's shape, with a fresh id (with `index`: as a streamed delta)."""
        out: dict[str, Any] = {"id": "call_" + secrets.token_hex(12), "type": "function",
                               "function": {"name": self.name, "arguments": self.arguments}}
        return out if index is None else {"index": index, **out}


def _call_from(obj: Any, args_keys: tuple[str, ...]) -> ParsedCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = next((obj[k] for k in args_keys if k in obj), {})
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return ParsedCall(obj["name"], json.dumps(args, ensure_ascii=False))


def _json_values(text: str, separators: str = " \t\r\n;,") -> list[Any] | None:
    """The JSON values `text` holds one after another (separated by `separators`), else None."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while True:
        while at < len(text) and text[at] in separators:
            at += 1
        if at == len(text):
            return values
        try:
            value, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            return None
        values.append(value)


class ToolCallParser:
    """Finds a template family's tool calls in a reply. `markers`: where calls may begin."""

    family = "generic"
    markers: tuple[str, ...] = ()
    args_key = "arguments"  # the key the family writes a call's arguments under
    prefix, suffix, separator = "", "", ""  # the text around a call, for a forced call's grammar

    def call_start(self, text: str) -> int | None:
        """Where the first call begins in `text` (None: no call yet)."""
        found = [i for i in (text.find(m) for m in self.markers) if i >= 0]
        return min(found) if found else None

    def held_from(self, text: str) -> int:
        """Where the text that could still be the beginning of a marker starts (len(text): none)."""
        for at in range(max(0, len(text) - max(map(len, self.markers), default=0) + 1), len(text)):
            if any(m.startswith(text[at:]) for m in self.markers):
                return at
        return len(text)

    def parse(self, text: str) -> tuple[str, list[ParsedCall]] | None:
        """The content around the calls and the calls, or None when `text` holds no call that parses."""
        raise NotImplementedError


class HermesParser(ToolCallParser):
    """Qwen2.5, Hermes, and others: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`. A reply
    that is only such objects, bare or in a ```json fence, counts too (Qwen2.5-Coder often writes that;
    llama-server's Hermes parser accepts it as well)."""

    family = "hermes"
    markers = ("<tool_call>",)
    bare = ("```json", "```\n", "{")  # how a reply made of bare calls begins
    prefix, suffix, separator = "<tool_call>\n", "\n</tool_call>", "\n"
    _block = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)
    _fence = re.compile(r"^```(?:json)?\s*\n(.*?)(?:\n```)?$", re.S)

    def call_start(self, text: str) -> int | None:
        stripped = text.lstrip()
        if stripped.startswith(self.bare):
            return len(text) - len(stripped)
        return super().call_start(text)

    def held_from(self, text: str) -> int:
        stripped = text.lstrip()
        if not stripped or any(b.startswith(stripped) for b in self.bare):
            return 0
        return super().held_from(text)

    def parse(self, text: str) -> tuple[str, list[ParsedCall]] | None:
        if "<tool_call>" not in text:  # bare calls: the whole reply, perhaps fenced
            body = text.strip()
            fenced = self._fence.match(body)
            values = _json_values(fenced.group(1) if fenced else body)
            calls = [_call_from(v, ("arguments", "parameters")) for v in values or []]
            if not calls or any(c is None for c in calls):
                return None
            return "", [c for c in calls if c is not None]
        calls = []
        for body in self._block.findall(text):
            values = _json_values(body.strip())
            if not values or len(values) != 1:
                return None
            call = _call_from(values[0], ("arguments", "parameters"))
            if call is None:
                return None
            calls.append(call)
        return self._block.sub("", text).strip(), calls


class Llama3Parser(ToolCallParser):
    """Llama 3.1-3.3 JSON tool calls: `{"name": ..., "parameters": {...}}` as the whole reply (optionally
    after `<|python_tag|>`; several separated by `;`)."""

    family = "llama3"
    markers = ("<|python_tag|>", "{")
    args_key = "parameters"
    separator = "; "

    def call_start(self, text: str) -> int | None:
        stripped = text.lstrip()
        if stripped.startswith(self.markers):  # a call is the whole reply, not a brace inside prose
            return len(text) - len(stripped)
        return None

    def held_from(self, text: str) -> int:
        stripped = text.lstrip()
        if not stripped or any(m.startswith(stripped) for m in self.markers):
            return 0
        return len(text)

    def parse(self, text: str) -> tuple[str, list[ParsedCall]] | None:
        body = text.strip().removeprefix("<|python_tag|>")
        values = _json_values(body)
        if not values:
            return None
        calls = [_call_from(v, ("parameters", "arguments")) for v in values]
        if any(c is None for c in calls):
            return None
        return "", [c for c in calls if c is not None]


class MistralParser(ToolCallParser):
    """Mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` (v3) or
    `[TOOL_CALLS]name[ARGS]{...}` repeated (v11 and later)."""

    family = "mistral"
    markers = ("[TOOL_CALLS]",)
    prefix, suffix, separator = "[TOOL_CALLS][", "]", ", "

    def parse(self, text: str) -> tuple[str, list[ParsedCall]] | None:
        at = text.find("[TOOL_CALLS]")
        if at < 0:
            return None
        content, rest = text[:at].strip(), text[at:].replace("[TOOL_CALLS]", "").strip()
        calls: list[ParsedCall | None] = []
        if rest.startswith("["):
            values = _json_values(rest)
            if not values or not all(isinstance(v, list) for v in values):
                return None
            calls = [_call_from(v, ("arguments", "parameters")) for group in values for v in group]
        else:
            for name, args in re.findall(r"([A-Za-z0-9_.\-]+)(?:\[CALL_ID\][A-Za-z0-9]+)?\[ARGS\]"
                                         r"(.*?)(?=\s*[A-Za-z0-9_.\-]+(?:\[CALL_ID\][A-Za-z0-9]+)?\[ARGS\]|$)",
                                         rest, re.S):
                values = _json_values(args.strip())
                calls.append(_call_from({"name": name, "arguments": values[0]}, ("arguments",))
                             if values and len(values) == 1 else None)
        if not calls or any(c is None for c in calls):
            return None
        return content, [c for c in calls if c is not None]


def parser_for(chat_template: Any) -> ToolCallParser | None:
    """The parser of the template's family; None when the template does not render tools at all."""
    if isinstance(chat_template, dict):  # transformers' named templates ("default", "tool_use", ...)
        chat_template = "\n".join(str(t) for t in chat_template.values())
    template = chat_template or ""
    if "tools" not in template and "tool_call" not in template:
        return None
    if "[TOOL_CALLS]" in template:
        return MistralParser()
    if "<|python_tag|>" in template or "<|start_header_id|>" in template:
        return Llama3Parser()
    return HermesParser()  # `<tool_call>` (Qwen, Hermes) and templates that name no syntax of their own


def tool_parser(tokenizer: Any, tools: list[Tool] | None) -> ToolCallParser | None:
    """The parser for a request offering `tools` (None without tools); a 400 when the model's chat
    template cannot render tools."""
    if not tools:
        return None
    parser = parser_for(getattr(tokenizer, "chat_template", None))
    if parser is None:
        raise APIError(400, "this model's chat template does not render tools, so the model cannot be "
                       "offered functions: leave out 'tools' or serve a model whose template supports them",
                       "tools")
    return parser


def keep_calls(parsed: tuple[str, list[ParsedCall]] | None, tools: list[Tool], parallel: bool
               ) -> tuple[str, list[ParsedCall]] | None:
    """`parsed`, if every call names an offered function (else None: the reply stays text); only the
    first call when `parallel_tool_calls` is false."""
    if parsed is None:
        return None
    names = {t.function.name for t in tools}
    content, calls = parsed
    if any(c.name not in names for c in calls):
        return None
    return content, calls if parallel else calls[:1]


class ToolStream:
    """Splits a streamed reply into content to send now and calls parsed at the end: text before a call
    marker streams as content (a possible marker's beginning is held back), the rest is held until the
    reply ends and then parsed; when it does not parse it is sent as content."""

    def __init__(self, parser: ToolCallParser, tools: list[Tool], parallel: bool) -> None:
        self.parser, self.tools, self.parallel = parser, tools, parallel
        self.text, self.sent, self.in_call = "", 0, False

    def feed(self, piece: str) -> str:
        """The content that can go out now."""
        self.text += piece
        if self.in_call:
            return ""
        start = self.parser.call_start(self.text)
        if start is not None:
            self.in_call = True
            out, self.sent = self.text[self.sent : start], start
            return out
        hold = max(self.sent, self.parser.held_from(self.text))
        out, self.sent = self.text[self.sent : hold], hold
        return out

    def finish(self) -> tuple[str, list[ParsedCall]]:
        """The content not yet sent and the calls (none when the held text did not parse)."""
        rest = self.text[self.sent:]
        parsed = keep_calls(self.parser.parse(rest), self.tools, self.parallel) if self.in_call else None
        if parsed is None:
            return rest, []
        content, calls = parsed
        return content, calls


def parse_reply(parser: ToolCallParser, text: str, tools: list[Tool], parallel: bool
                ) -> tuple[str | None, list[ParsedCall]]:
    """A whole reply's content (None when only calls) and calls."""
    start = parser.call_start(text)
    parsed = keep_calls(parser.parse(text[start:]), tools, parallel) if start is not None else None
    if parsed is None:
        return text, []
    content = (text[:start] + ("\n" if parsed[0] else "") + parsed[0]).strip()
    return content or None, parsed[1]


# -- forcing a call: the seam to the grammar engine ------------------------------------------------------

def call_schema(tools: list[Tool], choice: str, args_key: str = "arguments") -> dict[str, Any]:
    """The JSON schema of one call the request allows: the named function's, or any offered one's for
    `required`."""
    allowed = [t for t in tools if choice == "required" or t.function.name == choice]
    options = [
        {"type": "object",
         "properties": {"name": {"const": t.function.name},
                        args_key: t.function.parameters or {"type": "object"}},
         "required": ["name", args_key], "additionalProperties": False}
        for t in allowed
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def forced_call_grammar(parser: ToolCallParser, tools: list[Tool], choice: str, parallel: bool) -> str:
    """A Lark grammar (llguidance's dialect: `%json{...}` embeds a JSON schema) for a reply that is only
    calls in the family's own syntax: one call, or with `parallel` one or more."""
    schema = json.dumps(call_schema(tools, choice, parser.args_key))
    call = " ".join([json.dumps(parser.prefix)] * bool(parser.prefix) + [f"%json{schema}"]
                    + [json.dumps(parser.suffix)] * bool(parser.suffix))
    calls = f"call ({json.dumps(parser.separator)} call)*" if parallel and choice == "required" else "call"
    return f"start: {calls}\ncall: {call}\n"
