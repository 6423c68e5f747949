"""Real clients against a real server on loopback: the official openai client (tool calls, streamed tool
calls), LangChain (`bind_tools` round trip, `with_structured_output`), Continue's and aider's request
shapes, `null` fields, CORS, `/v1/models/{id}`, `/tokenize` and `/detokenize`.

The model is `ScriptedLM` (tests/scripted.py): a CausalLM that writes what a tool-using model would, so
the chat template, the engine, the parsers and the wire format are all the real ones."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import openai
import pytest

import specdecode as sd

from .scripted import ScriptedLM

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
ANSWER = "It is 22 C and sunny in Paris."
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def respond(prompt: str) -> str:
    """What the scripted model answers: a tool call when offered the weather tool and not yet answered,
    the answer once the tool's result is in the conversation, otherwise prose."""
    last_user = prompt.rsplit("<|im_start|>user", 1)[-1]
    if "<tool_response>" in last_user:
        return ANSWER
    if "get_weather" in prompt and "weather" in last_user.lower():
        return "Let me check.\n" + CALL
    if "structured" in last_user:
        return 'Sure, here it is: {"city": "Paris"}'
    return "Hello! " + "x" * 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """The app on uvicorn in a thread of this process, on a loopback port."""

    def __init__(self, app) -> None:
        import uvicorn

        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def model() -> ScriptedLM:
    return ScriptedLM(respond)


@pytest.fixture(scope="module")
def server(model):
    from specdecode.server import ServerSettings, create_app

    app = create_app(sd.SpeculativeGenerator(model), ServerSettings("scripted", cors_origins=["https://ok.example"]))
    srv = _Server(app)
    yield srv.url
    srv.close()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)


def test_openai_client_gets_tool_calls(client, model):
    res = client.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL], temperature=0)
    choice = res.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me check."
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    # the tools reached the model through its chat template
    assert '"name": "get_weather"' in model.prompts[-1] and "<tools>" in model.prompts[-1]


def test_openai_client_streams_tool_call_deltas(client):
    stream = client.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL], tool_choice="auto", temperature=0, stream=True,
        stream_options={"include_usage": True})
    content, calls, finishes, usages = "", {}, [], []
    for chunk in stream:
        if chunk.usage is not None:
            usages.append(chunk.usage)
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for tc in delta.tool_calls or []:  # accumulate as OpenAI's docs do
            entry = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            entry["id"] = tc.id or entry["id"]
            entry["name"] += tc.function.name or ""
            entry["arguments"] += tc.function.arguments or ""
        if chunk.choices[0].finish_reason:
            finishes.append(chunk.choices[0].finish_reason)
    assert content == "Let me check.\n" and finishes == ["tool_calls"]
    assert list(calls) == [0] and calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    assert len(usages) == 1 and usages[0].completion_tokens == len("Let me check.\n" + CALL) + 1  # + EOS


def test_tool_choice_none_offers_no_tools_and_parses_nothing(client, model):
    res = client.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL], tool_choice="none", temperature=0)
    assert "<tools>" not in model.prompts[-1]
    assert res.choices[0].finish_reason == "stop" and res.choices[0].message.tool_calls is None


def test_a_named_tool_choice_offers_only_that_function(client, model):
    other = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    res = client.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[other, WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False, temperature=0)
    assert '"get_weather"' in model.prompts[-1] and '"get_time"' not in model.prompts[-1]
    assert [c.function.name for c in res.choices[0].message.tool_calls] == ["get_weather"]
    bad = httpx.post(f"{client.base_url}chat/completions", json={
        "messages": [{"role": "user", "content": "hi"}], "tools": [other],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tool_choice"


def test_tool_history_is_rendered_through_the_template(client, model):
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 22, "sky": "sunny"}'},
    ]
    res = client.chat.completions.create(model="scripted", messages=messages, tools=[WEATHER_TOOL],
                                         temperature=0)
    assert res.choices[0].message.content == ANSWER and res.choices[0].finish_reason == "stop"
    prompt = model.prompts[-1]
    # arguments rendered as a JSON object (not a JSON string inside JSON), the result as a tool response
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert '<tool_response>\n{"temp_c": 22, "sky": "sunny"}\n</tool_response>' in prompt


def test_langchain_bind_tools_round_trip(server, model):
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        return json.dumps({"city": city, "temp_c": 22, "sky": "sunny"})

    llm = langchain_openai.ChatOpenAI(base_url=f"{server}/v1", api_key="unused", model="scripted",
                                      temperature=0, max_retries=0)
    with_tools = llm.bind_tools([get_weather])
    messages = [HumanMessage("What is the weather in Paris?")]
    first = with_tools.invoke(messages)
    assert [(c["name"], c["args"]) for c in first.tool_calls] == [("get_weather", {"city": "Paris"})]
    messages.append(first)
    for call in first.tool_calls:
        messages.append(ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"]))
    final = with_tools.invoke(messages)
    assert final.content == ANSWER and not final.tool_calls
    assert '"temp_c": 22' in model.prompts[-1] and "<tool_response>" in model.prompts[-1]
    # streamed, with usage counted once (stream_usage)
    chunks = list(llm.bind_tools([get_weather]).stream([HumanMessage("What is the weather in Paris?")],
                                                       stream_usage=True))
    merged = chunks[0]
    for c in chunks[1:]:
        merged = merged + c
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert merged.usage_metadata["output_tokens"] == len("Let me check.\n" + CALL) + 1


def test_langchain_with_structured_output(server):
    langchain_openai = pytest.importorskip("langchain_openai")
    from typing import Literal

    from pydantic import BaseModel

    class Place(BaseModel):
        city: Literal["Paris"]  # an enum: the schema alone forces every token of the reply

    llm = langchain_openai.ChatOpenAI(base_url=f"{server}/v1", api_key="unused", model="scripted",
                                      temperature=0, max_retries=0)
    assert llm.with_structured_output(Place).invoke("Give me a structured answer") == Place(city="Paris")


def test_continue_request_shape(server):
    """Continue's default chat request: max_tokens 4096 (beyond this 2048 window: clamped), 10 stops."""
    stops = ["<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>", "[/INST]", "```\n\n", "\nUser:",
             "\n\n\n", "<end_of_turn>", "x" * 10]
    body = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4096,
            "stop": stops, "stream": True, "stream_options": {"include_usage": True}, "temperature": 0.01}
    events = []
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello! "  # cut at the first stop string ("x" * 10)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert [c for c in chunks if c.get("usage")] == [chunks[-1]]


def test_aider_request_shape_generates_until_end_of_sequence(client):
    """aider's whole-file edits: temperature 0 and no max_tokens (the reply is as long as it needs)."""
    res = client.chat.completions.create(model="scripted", temperature=0,
                                         messages=[{"role": "user", "content": "hi"}])
    assert res.choices[0].message.content == "Hello! " + "x" * 40
    assert res.choices[0].finish_reason == "stop" and res.usage.completion_tokens == 48


def test_null_means_not_set(server):
    body = {"model": "scripted", "messages": [{"role": "user", "content": "hi", "name": None}],
            "temperature": None, "top_p": None, "max_tokens": None, "max_completion_tokens": None, "n": None,
            "stop": None, "seed": None, "stream": None, "stream_options": None, "tools": None,
            "tool_choice": None, "parallel_tool_calls": None, "presence_penalty": None,
            "frequency_penalty": None, "logit_bias": None, "logprobs": None, "top_logprobs": None,
            "user": None, "prediction": None, "speculative": None, "response_format": None}
    r = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    # temperature null is the default, 1.0, and seed null no seed: the scripted reply is only likely (each
    # character leaves the script with probability ~0.4%), so the text itself is not asserted
    assert choice["message"]["content"] and choice["finish_reason"] in ("stop", "length")


def test_models_tokenize_and_detokenize(server, model):
    card = httpx.get(f"{server}/v1/models/scripted").json()
    assert card["id"] == "scripted" and card["object"] == "model" and card["max_model_len"] == 2048
    missing = httpx.get(f"{server}/v1/models/gpt-4")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    ids = httpx.post(f"{server}/tokenize", json={"content": "hi!"}).json()["tokens"]
    assert ids == model.tokenizer("hi!", add_special_tokens=False)["input_ids"] and len(ids) == 3
    pieces = httpx.post(f"{server}/tokenize", json={"content": "hi", "with_pieces": True}).json()["tokens"]
    assert pieces == [{"id": ids[0], "piece": "h"}, {"id": ids[1], "piece": "i"}]
    assert httpx.post(f"{server}/detokenize", json={"tokens": ids}).json() == {"content": "hi!"}
    bad = httpx.post(f"{server}/detokenize", json={"tokens": [10**6]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"


@pytest.mark.parametrize("origin,allowed", [
    ("http://localhost:3000", True), ("http://127.0.0.1:8080", True), ("http://[::1]:5173", True),
    ("https://ok.example", True),  # --cors-origin
    ("https://evil.example", False), ("http://localhost.evil.example", False),
])
def test_cors(server, origin, allowed):
    pre = httpx.options(f"{server}/v1/chat/completions", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    post = httpx.post(f"{server}/v1/chat/completions", headers={"Origin": origin},
                      json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    if allowed:
        assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == origin
        assert "POST" in pre.headers["access-control-allow-methods"]
        assert post.status_code == 200 and post.headers["access-control-allow-origin"] == origin
    else:
        assert pre.status_code == 403 and post.status_code == 403
        assert "access-control-allow-origin" not in post.headers
        assert "--cors-origin" in post.json()["error"]["message"]


def test_cors_with_an_api_key_allows_any_origin(model):
    from fastapi.testclient import TestClient

    from specdecode.server import ServerSettings, create_app

    app = create_app(sd.SpeculativeGenerator(model), ServerSettings("scripted", api_key="k"))
    with TestClient(app) as http:
        pre = http.options("/v1/models", headers={"Origin": "https://any.example",
                                                  "Access-Control-Request-Method": "GET"})
        assert pre.status_code == 204  # the preflight carries no key; the request itself must
        assert http.get("/v1/models", headers={"Origin": "https://any.example"}).status_code == 401
        ok = http.get("/v1/models", headers={"Origin": "https://any.example", "Authorization": "Bearer k"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://any.example"


def test_a_chat_template_error_is_a_400():
    from fastapi.testclient import TestClient

    from specdecode.server import ServerSettings, create_app

    strict = ScriptedLM(respond, template="{% for m in messages %}{% if m.role == 'system' %}"
                        "{{ raise_exception('System role not supported') }}{% endif %}{{ m.content }}"
                        "{% endfor %}")
    with TestClient(create_app(sd.SpeculativeGenerator(strict), ServerSettings("scripted"))) as http:
        r = http.post("/v1/chat/completions", json={"messages": [{"role": "system", "content": "x"},
                                                                 {"role": "user", "content": "hi"}]})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert "System role not supported" in err["message"] and err["param"] == "messages"


def test_a_chat_template_error_is_a_400_on_llama_cpp_too(tmp_path):
    pytest.importorskip("llama_cpp")
    from fastapi.testclient import TestClient

    from specdecode.backends.llamacpp import LlamaCppModel
    from specdecode.server import ServerSettings, create_app

    from .tiny_gguf import write_tiny_llama

    model = LlamaCppModel(write_tiny_llama(tmp_path / "tiny.gguf"))
    model.tokenizer.chat_template = ("{% for m in messages %}{% if m.role == 'system' %}"
                                     "{{ raise_exception('System role not supported') }}{% endif %}"
                                     "{{ m.content }}{% endfor %}")
    model.tokenizer._formatter = None  # the GGUF tokenizer compiles its template on first use
    with TestClient(create_app(sd.SpeculativeGenerator(model), ServerSettings("tiny", parallel=2,
                                                                              ctx_size=512))) as http:
        body = {"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]}
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 400 and "System role not supported" in r.json()["error"]["message"]
        broken = "{% for m in messages %}{{ m.content }"  # a template that does not even compile
        model.tokenizer.chat_template, model.tokenizer._formatter = broken, None
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages", r.text
