"""Structured output, penalties and logprobs through a real server (tiny models, loopback): OpenAI's
`response_format`, llama-server's `grammar` / `json_schema`, the official client, streaming, batching on
llama.cpp, and 400s that name the field."""

from __future__ import annotations

import concurrent.futures as cf
import json
import subprocess
import sys
import time

import httpx
import openai
import pytest

import specdecode as sd
from specdecode import Constraint
from specdecode.drafters import ModelDrafter
from specdecode.models import load_model

from .test_server import SPEC, _free_port, _start, _stop
from .tiny_models import save_pair

pytest.importorskip("llguidance")

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8},
                   "size": {"enum": ["small", "medium", "large"]},
                   "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2}},
    "required": ["name", "size", "tags"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "user", "content": "Describe a box."}]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[str, str]:
    return save_pair(tmp_path_factory.mktemp("structured-models"), max_positions=1024)


@pytest.fixture(scope="module")
def server(pair):
    proc, url = _start(pair)
    yield url
    _stop(proc)


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def local(pair) -> sd.SpeculativeGenerator:
    return sd.SpeculativeGenerator(load_model(pair[0], dtype="fp32", quiet=True),
                                   ModelDrafter(load_model(pair[1], dtype="fp32", quiet=True)))


def _valid(text: str) -> dict:
    obj = json.loads(text)
    assert set(obj) == {"name", "size", "tags"} and obj["size"] in ("small", "medium", "large")
    assert len(obj["name"]) <= 8 and len(obj["tags"]) <= 2
    return obj


@pytest.mark.parametrize("stream", [False, True])
def test_response_format_json_schema_with_the_openai_client(client, local, stream):
    expected = local.generate(MESSAGES, chat=True, max_new_tokens=120, temperature=0, gamma=3,
                              constraint=Constraint.json(SCHEMA, strict=True))
    fmt = {"type": "json_schema", "json_schema": {"name": "box", "schema": SCHEMA, "strict": True}}
    args = dict(model="tiny", messages=MESSAGES, max_tokens=120, temperature=0, response_format=fmt,
                extra_body=SPEC)
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **args))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = chunks[-1].choices[0].finish_reason
    else:
        res = client.chat.completions.create(**args)
        text, finish = res.choices[0].message.content, res.choices[0].finish_reason
    assert text == expected.text and finish == "stop"
    _valid(text)


def test_json_object_and_sampling(client):
    for seed in range(3):
        res = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=200, temperature=1.0,
                                             seed=seed, response_format={"type": "json_object"})
        if res.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(res.choices[0].message.content), dict)


@pytest.mark.parametrize("field,value,check", [
    ("grammar", 'root ::= ("yes" | "no") "!"', lambda t: t in ("yes!", "no!")),
    ("json_schema", SCHEMA, _valid),
])
def test_llama_server_fields(server, local, field, value, check):
    r = httpx.post(f"{server}/v1/completions", json={"prompt": "Answer:", "max_tokens": 120, "temperature": 0,
                                                     field: value, **SPEC}, timeout=120)
    assert r.status_code == 200, r.text
    text = r.json()["choices"][0]["text"]
    constraint = Constraint.grammar(value) if field == "grammar" else Constraint.json(value, strict=False)
    assert text == local.generate("Answer:", max_new_tokens=120, gamma=3, constraint=constraint).text
    check(text)


def test_chat_logprobs_equal_the_library_and_stream_too(client, local):
    expected = local.generate(MESSAGES, chat=True, max_new_tokens=12, temperature=0, gamma=3, logprobs=2)
    args = dict(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0, logprobs=True, top_logprobs=2,
                extra_body=SPEC)
    res = client.chat.completions.create(**args)
    content = res.choices[0].logprobs.content
    assert len(content) == len(expected.token_ids)
    for item, entry in zip(content, expected.logprobs, strict=True):
        assert item.token == local.tokenizer.decode([entry.token])
        assert abs(item.logprob - entry.logprob) < 1e-4 and len(item.top_logprobs) == 2
        assert item.bytes == list(item.token.encode())
    chunks = list(client.chat.completions.create(stream=True, **args))
    streamed = [i for c in chunks if c.choices and c.choices[0].logprobs
                for i in c.choices[0].logprobs.content]
    assert [i.token for i in streamed] == [i.token for i in content]


def test_completion_logprobs_and_penalties(server, local):
    body = {"prompt": "abcabc", "max_tokens": 10, "temperature": 0, "logprobs": 3, "presence_penalty": 1.2,
            "frequency_penalty": 0.5, "repeat_penalty": 1.3, **SPEC}
    r = httpx.post(f"{server}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    expected = local.generate("abcabc", max_new_tokens=10, gamma=3, logprobs=3, presence_penalty=1.2,
                              frequency_penalty=0.5, repeat_penalty=1.3)
    assert choice["text"] == expected.text
    lp = choice["logprobs"]
    assert "".join(lp["tokens"]) == expected.text and len(lp["top_logprobs"][0]) == 3
    assert lp["text_offset"][0] == 0 and all(v <= 0 for v in lp["token_logprobs"])


BAD = [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strng"}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"grammar": "root ::= [a-"}, "grammar"),
    ({"json_schema": {"type": "object", "properties": {"a": {"type": 7}}}}, "json_schema"),
    ({"grammar": 'root ::= "a"', "response_format": {"type": "json_object"}}, "grammar"),
    ({"logprobs": False, "top_logprobs": 3}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"repeat_penalty": 0}, "repeat_penalty"),
    ({"logit_bias": {"5": 1.0}}, "logit_bias"),
]


@pytest.mark.parametrize("extra,param", BAD, ids=[p for _, p in BAD])
def test_bad_fields_are_400s_naming_the_field(server, extra, param):
    r = httpx.post(f"{server}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 5, **extra},
                   timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()


def test_constrained_requests_batched_on_llama_cpp(tmp_path):
    """--parallel 3 on llama.cpp: concurrent constrained requests get their one-at-a-time texts."""
    pytest.importorskip("llama_cpp")
    from .tiny_gguf import write_tiny_llama

    target = write_tiny_llama(tmp_path / "t.gguf", seed=0)
    draft = write_tiny_llama(tmp_path / "d.gguf", seed=0, scale=0.7)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "specdecode.cli", "serve", "--target", str(target),
                             "--draft", f"ngram+{draft}", "--port", str(port), "--parallel", "3",
                             "--ctx-size", "512", "--served-model-name", "tiny", "--quiet",
                             "--no-kv-unified"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert httpx.get(f"{url}/health", timeout=2).json()["slots"]["total"] == 3
        bodies = [{"prompt": f"Item {i}:", "max_tokens": 80, "temperature": 0 if i % 2 else 0.8, "seed": i,
                   "json_schema": SCHEMA, **SPEC} for i in range(6)]

        def post(body: dict) -> str:
            r = httpx.post(f"{url}/v1/completions", json=body, timeout=300)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]

        alone = [post(b) for b in bodies]
        with cf.ThreadPoolExecutor(6) as pool:
            together = list(pool.map(post, bodies))
        assert together == alone
        for text in alone:
            _valid(text)
    finally:
        _stop(proc)


def test_constrained_requests_never_calibrate(monkeypatch):
    """Costs are measured at start-up only: constrained requests (forced tokens are a lookup source, with
    longer blocks than a model draft's), with the draft model or without it, are served from them."""
    from fastapi.testclient import TestClient

    import specdecode.generator as generator_module
    from specdecode.server import ServerSettings, create_app, warm_up
    from specdecode.toy import tiny_llama_pair

    calls = []
    real = generator_module.calibrate
    monkeypatch.setattr(generator_module, "calibrate", lambda *a: calls.append(a[2]) or real(*a))
    target, draft = tiny_llama_pair()
    gen = sd.SpeculativeGenerator(target, draft)
    settings = ServerSettings("tiny", gamma="auto", gamma_max=4, lookup_gamma_max=8)
    warm_up(gen, settings)
    at_start = len(calls)
    with TestClient(create_app(gen, settings)) as http:
        for extra in ({}, {"speculative": {"draft": False}}):
            res = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 30, "json_schema": SCHEMA,
                                                     **extra})
            assert res.status_code == 200, res.text
    assert len(calls) == at_start, f"a request calibrated: {calls[at_start:]}"
