"""Tool-call parsing per template family, the streamed split into content and calls, and the grammar a
forced call must follow."""

from __future__ import annotations

import json

import pytest

from specdecode.server.replies import StreamShaper, ToolUse, choice
from specdecode.server.tool_schemas import Tool
from specdecode.server.tools import (
    HermesParser,
    Llama3Parser,
    MistralParser,
    ToolStream,
    call_schema,
    forced_call_grammar,
    parse_reply,
    parser_for,
)

from .scripted import QWEN25_TEMPLATE

WEATHER = Tool.model_validate({"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
TIME = Tool.model_validate({"type": "function", "function": {"name": "get_time", "parameters": {}}})
TOOLS = [WEATHER, TIME]

LLAMA31 = "{{- bos_token }}{%- if tools %}<|start_header_id|>... <|python_tag|>{%- endif %}"
MISTRAL = "{%- if tools %}[AVAILABLE_TOOLS]{{ tools|tojson }}[/AVAILABLE_TOOLS]{%- endif %}[TOOL_CALLS]"


def test_the_family_is_chosen_from_the_template():
    assert isinstance(parser_for(QWEN25_TEMPLATE), HermesParser)
    assert isinstance(parser_for(LLAMA31), Llama3Parser)
    assert isinstance(parser_for(MISTRAL), MistralParser)
    assert isinstance(parser_for({"default": "x", "tool_use": QWEN25_TEMPLATE}), HermesParser)
    assert parser_for("{% for m in messages %}{{ m.content }}{% endfor %}") is None  # renders no tools
    assert parser_for(None) is None


@pytest.mark.parametrize("parser,text,content", [
    (HermesParser(), 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
                     '</tool_call>', "Let me look."),
    (HermesParser(), '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}', None),  # EOS
    (HermesParser(), '```json\n{\n  "name": "get_weather",\n  "arguments": {"city": "Paris"}\n}\n```', None),
    (HermesParser(), '{"name": "get_weather", "arguments": {"city": "Paris"}}', None),  # bare
    (Llama3Parser(), '{"name": "get_weather", "parameters": {"city": "Paris"}}', None),
    (Llama3Parser(), '<|python_tag|>{"name": "get_weather", "parameters": "{\\"city\\": \\"Paris\\"}"}',
     None),
    (MistralParser(), '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]', None),
    (MistralParser(), 'Sure. [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}', "Sure."),
])
def test_each_family_parses_its_own_syntax(parser, text, content):
    got_content, calls = parse_reply(parser, text, TOOLS, parallel=True)
    assert got_content == content
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]


def test_parallel_calls_and_parallel_tool_calls_false():
    text = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')
    _, calls = parse_reply(HermesParser(), text, TOOLS, parallel=True)
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    _, calls = parse_reply(HermesParser(), text, TOOLS, parallel=False)
    assert [c.name for c in calls] == ["get_weather"]
    _, calls = parse_reply(Llama3Parser(), '{"name": "get_time", "parameters": {}}; '
                           '{"name": "get_weather", "parameters": {"city": "Oslo"}}', TOOLS, True)
    assert [c.name for c in calls] == ["get_time", "get_weather"]
    _, calls = parse_reply(MistralParser(), '[TOOL_CALLS]get_time[ARGS]{}get_weather[ARGS]{"city": "Oslo"}',
                           TOOLS, True)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_time", {}),
                                                                  ("get_weather", {"city": "Oslo"})]


@pytest.mark.parametrize("parser,text", [
    (HermesParser(), "<tool_call>\n{not json}\n</tool_call>"),
    (HermesParser(), '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>'),  # not offered
    (HermesParser(), "No tools needed: the answer is 4."),
    (HermesParser(), '```json\n{"city": "Paris", "temp_c": 22}\n```'),  # JSON, but not a call
    (HermesParser(), '```python\nprint({"name": "get_weather", "arguments": {}})\n```'),
    (Llama3Parser(), "Use {braces} in prose: not a call."),
    (Llama3Parser(), '{"name": "get_weather", "parameters": {"city": "Paris"}'),  # cut short
    (MistralParser(), "[TOOL_CALLS][{broken"),
])
def test_a_reply_that_does_not_parse_stays_text(parser, text):
    assert parse_reply(parser, text, TOOLS, parallel=True) == (text, [])


def test_the_stream_sends_prose_at_once_holds_calls_and_releases_what_does_not_parse():
    text = 'Checking <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    stream, sent = ToolStream(HermesParser(), TOOLS, True), []
    for ch in text:  # one character at a time: a marker's beginning is held, never sent as content
        sent.append(stream.feed(ch))
    assert "".join(sent) == "Checking "
    rest, calls = stream.finish()
    assert rest == "" and calls[0].name == "get_weather"
    stream = ToolStream(HermesParser(), TOOLS, True)
    sent = [stream.feed(ch) for ch in "a <tool_cal"]
    assert "".join(sent) == "a " and stream.finish() == ("<tool_cal", [])
    stream = ToolStream(HermesParser(), TOOLS, True)  # a code block that is not a call streams
    assert stream.feed("``") == "" and stream.feed("`py") == "```py" and stream.feed("thon\n") == "thon\n"
    stream = ToolStream(Llama3Parser(), TOOLS, True)
    assert stream.feed("  ") == "" and stream.feed("Hello {x}") == "  Hello {x}"  # prose, not a call


def test_whole_and_streamed_responses_in_openai_shape():
    use = ToolUse(HermesParser(), TOOLS)
    text = 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    whole = choice(True, text, "stop", use)
    assert whole["finish_reason"] == "tool_calls" and whole["message"]["content"] == "Sure."
    (call,) = whole["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    shaper = StreamShaper(True, {"id": "x", "created": 0, "model": "m"}, use)
    events = shaper.start() + [e for ch in text for e in shaper.piece(ch)]
    events += shaper.end("stop", {"prompt_tokens": 1}, include_usage=True)
    chunks = [json.loads(e[6:]) for e in events if e.startswith("data: {")]
    assert events[-1] == "data: [DONE]\n\n"
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == "Sure.\n"
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert [(c["index"], c["function"]["name"]) for c in calls] == [(0, "get_weather")]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert [c for c in chunks if "usage" in c] == [chunks[-1]] and chunks[-1]["choices"] == []


def test_the_forced_call_grammar_for_the_grammar_engine():
    schema = call_schema(TOOLS, "get_weather")
    assert schema["properties"]["name"] == {"const": "get_weather"}
    assert schema["properties"]["arguments"] == WEATHER.function.parameters
    assert [o["properties"]["name"]["const"] for o in call_schema(TOOLS, "required")["anyOf"]] == [
        "get_weather", "get_time"]
    grammar = forced_call_grammar(HermesParser(), TOOLS, "required", parallel=True)
    assert grammar.startswith('start: call ("\\n" call)*\ncall: "<tool_call>\\n" %json{')
    assert grammar.rstrip().endswith('"\\n</tool_call>"')
    assert "parameters" in forced_call_grammar(Llama3Parser(), TOOLS, "get_time", parallel=True)
