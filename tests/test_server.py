"""`specdecode serve`: a real server process on localhost, called with the official `openai` client."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

import specdecode as sd
from specdecode.drafters import ModelDrafter
from specdecode.models import load_model

from .tiny_models import save_pair

CONTEXT = 4096  # the tiny target's window: long enough for a generation still running when a client leaves
SPEC = {"speculative": {"gamma": 3}}  # fixed gamma: auto's choices depend on timing, and so would the RNG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(pair: tuple[str, str], *extra: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "specdecode.cli",
            "serve",
            "--target",
            pair[0],
            "--draft",
            pair[1],
            "--dtype",
            "fp32",
            "--port",
            str(port),
            "--served-model-name",
            "tiny",
            "--quiet",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read().decode() if proc.stdout else ''}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not come up in 180 s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[str, str]:
    return save_pair(tmp_path_factory.mktemp("server-models"), max_positions=CONTEXT)


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
    """The same models in this process: what the server must reproduce."""
    return sd.SpeculativeGenerator(
        load_model(pair[0], dtype="fp32", quiet=True),
        ModelDrafter(load_model(pair[1], dtype="fp32", quiet=True)),
    )


def _metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}{re.escape('{' + want + '}') if want else ''} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("stream", [False, True])
def test_completion_text_equals_generate(client, local, stream):
    kwargs = dict(max_new_tokens=40, temperature=0.8, seed=11, gamma=3)
    expected = local.generate("def quicksort(xs):", **kwargs)
    args = dict(
        model="tiny", prompt="def quicksort(xs):", max_tokens=40, temperature=0.8, seed=11, extra_body=SPEC
    )
    if stream:
        chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **args))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        usage = chunks[-1].usage
        assert chunks[-1].choices == [] and all(c.usage is None for c in chunks[:-1])  # once, as OpenAI
    else:
        res = client.completions.create(**args)
        text, finish, usage = res.choices[0].text, [res.choices[0].finish_reason], res.usage
    assert text == expected.text
    assert finish == [expected.finish_reason]  # "length", or "stop" if the random model said EOS
    n_prompt = len(local.encode("def quicksort(xs):"))
    assert usage.completion_tokens == len(expected.token_ids) and usage.prompt_tokens == n_prompt
    extra = usage.model_extra
    assert 0.0 <= extra["acceptance_rate"] <= 1.0 and extra["tokens_per_target_call"] >= 1.0
    assert extra["target_calls"] >= 1 and extra["draft_tokens"] >= extra["draft_tokens_accepted"]


@pytest.mark.parametrize("stream", [False, True])
def test_chat_text_equals_generate(client, local, stream):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort a list."}]
    expected = local.generate(messages, chat=True, max_new_tokens=30, temperature=0.7, seed=3, gamma=3)
    args = dict(model="tiny", messages=messages, max_tokens=30, temperature=0.7, seed=3, extra_body=SPEC)
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **args))
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].choices[0].finish_reason == expected.finish_reason
        assert all(c.usage is None for c in chunks)  # usage only when include_usage asks for it
        with_usage = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                                         **args))
        assert [c.usage.completion_tokens for c in with_usage if c.usage] == [len(expected.token_ids)]
    else:
        res = client.chat.completions.create(**args)
        text = res.choices[0].message.content
        assert res.object == "chat.completion" and res.choices[0].message.role == "assistant"
        assert res.usage.total_tokens == res.usage.prompt_tokens + len(expected.token_ids)
    assert text == expected.text


def test_greedy_with_auto_gamma_stop_strings_and_plain_mode(client, local):
    expected = local.generate("def f(x):", max_new_tokens=30, temperature=0)
    res = client.completions.create(model="tiny", prompt="def f(x):", max_tokens=30, temperature=0)
    assert res.choices[0].text == expected.text  # greedy: independent of gamma
    plain = client.completions.create(
        model="tiny",
        prompt="def f(x):",
        max_tokens=30,
        temperature=0,
        extra_body={"speculative": {"draft": False}},
    )
    assert plain.choices[0].text == expected.text and plain.usage.model_extra["draft_tokens"] == 0
    stop = expected.text[5:7]
    stopped = client.completions.create(
        model="tiny", prompt="def f(x):", max_tokens=30, temperature=0, stop=[stop]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == expected.text[: expected.text.index(stop)]


def test_metrics_values_equal_the_sums_of_the_responses_usage(pair):
    """Values, not names: prometheus_client prints every declared metric at zero, so only values prove
    that the counters count. A fresh server, so nothing else has touched them."""
    proc, url = _start(pair)
    try:
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        usages = [c.completions.create(model="tiny", prompt=p, max_tokens=n, temperature=0.8, seed=i,
                                       extra_body=SPEC).usage
                  for i, (p, n) in enumerate([("def a(x):", 20), ("class B:", 12), ("import os", 30)])]
        usages.append(c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=9, temperature=0, extra_body=SPEC).usage)
        ok_completions = _metric(url, "specdecode_requests_total", endpoint="/v1/completions", status="200")
        ok_chat = _metric(url, "specdecode_requests_total", endpoint="/v1/chat/completions", status="200")
        assert (ok_completions, ok_chat) == (3, 1)
        assert _metric(url, "specdecode_generated_tokens_total") == sum(u.completion_tokens for u in usages)
        assert _metric(url, "specdecode_prompt_tokens_total") == sum(u.prompt_tokens for u in usages)
        drafted = sum(u.model_extra["draft_tokens"] for u in usages)
        accepted = sum(u.model_extra["draft_tokens_accepted"] for u in usages)
        calls = sum(u.model_extra["target_calls"] for u in usages)
        assert drafted > 0, "gamma 3 must draft: otherwise this test compares zeros"
        assert _metric(url, "specdecode_draft_tokens_total") == drafted
        assert _metric(url, "specdecode_draft_tokens_accepted_total") == accepted
        assert _metric(url, "specdecode_target_calls_total") == calls
        assert _metric(url, "specdecode_acceptance_rate") == pytest.approx(accepted / drafted)
        tokens = sum(u.completion_tokens for u in usages)
        assert _metric(url, "specdecode_mean_tokens_per_target_call") == pytest.approx(tokens / calls)
    finally:
        _stop(proc)


def test_models_health_and_metrics(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["queue_length"] == 0
    text = httpx.get(f"{server}/metrics").text
    for name in (
        "specdecode_requests_total",
        "specdecode_generated_tokens_total",
        "specdecode_acceptance_rate",
        "specdecode_mean_tokens_per_target_call",
        "specdecode_draft_seconds_total",
        "specdecode_target_seconds_total",
        "specdecode_queue_length",
        "specdecode_request_latency_seconds_bucket",
        "specdecode_time_to_first_token_seconds_bucket",
    ):
        assert name in text, name


BAD_INPUTS = [
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": ', 400, "not valid JSON"),
    ("/v1/completions", {"max_tokens": 5}, 400, "missing required field 'prompt'"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": "many"}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x" * (CONTEXT + 10), "max_tokens": 5}, 400, "context window"),
    ("/v1/completions", {"prompt": "", "max_tokens": 5}, 400, "prompt is empty"),
    ("/v1/completions", {"prompt": ["a", "b"], "max_tokens": 5}, 400, "one prompt per request"),
    ("/v1/completions", {"prompt": "hi", "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", {"prompt": "hi", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"prompt": "hi", "n": 2}, 400, "n=2 is not supported"),
    ("/v1/completions", {"prompt": "hi", "stop": ["a", ""]}, 400, "non-empty"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function",
     "function": {"name": "f"}}]}, 400, "does not render tools"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"},
     400, "needs tools"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 9}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "hi", "speculative": {"gamma": 0}}, 400, "gamma"),
    ("/v1/completions", {"prompt": "hi", "speculative": {"turbo": True}}, 400, "speculative.turbo"),
    ("/v1/completions", {"prompt": "hi", "model": "gpt-4"}, 404, "'gpt-4' is not served here"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages is empty"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        400,
        "text parts only",
    ),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
]


@pytest.mark.parametrize("path,body,status,message", BAD_INPUTS)
def test_bad_input_gets_an_openai_error_and_the_server_keeps_serving(server, path, body, status, message):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(
        f"{server}{path}", content=content, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"], error
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert httpx.get(f"{server}/health").status_code == 200


def test_the_openai_client_raises_its_own_error_types(client):
    with pytest.raises(openai.BadRequestError, match="n=3 is not supported"):
        client.completions.create(model="tiny", prompt="hi", n=3)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}])


def test_32_concurrent_streaming_clients(server, local):
    prompts = [(f"item {i}: ", 100 + i) for i in range(32)]
    expected = [
        local.generate(p, max_new_tokens=20, temperature=0.9, seed=s, gamma=3).text for p, s in prompts
    ]
    before_ok = _metric(server, "specdecode_requests_total", endpoint="/v1/completions", status="200")
    before_tokens = _metric(server, "specdecode_generated_tokens_total")

    def one(job: tuple[str, int]) -> tuple[str, int]:
        client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=300)
        chunks = list(
            client.completions.create(
                model="tiny",
                prompt=job[0],
                max_tokens=20,
                temperature=0.9,
                seed=job[1],
                stream=True,
                stream_options={"include_usage": True},
                extra_body=SPEC,
            )
        )
        return "".join(c.choices[0].text for c in chunks if c.choices), chunks[-1].usage.completion_tokens

    with ThreadPoolExecutor(32) as pool:
        got = list(pool.map(one, prompts))
    assert [g[0] for g in got] == expected  # every stream complete, none lost or mixed
    ok = dict(endpoint="/v1/completions", status="200")
    deadline = time.time() + 10  # a request is counted once its response has fully gone out
    while _metric(server, "specdecode_requests_total", **ok) - before_ok < 32 and time.time() < deadline:
        time.sleep(0.1)
    assert _metric(server, "specdecode_requests_total", **ok) - before_ok == 32
    tokens = _metric(server, "specdecode_generated_tokens_total") - before_tokens
    assert tokens == sum(g[1] for g in got) > 0
    assert _metric(server, "specdecode_queue_length") == 0


def test_a_client_that_disconnects_cancels_its_generation(server, client, local):
    budget = 1500
    # a greedy prompt that runs its whole budget (the random model never says EOS): still going when we leave
    prompt = next(p for p in "abcdefgh" if local.generate(p, max_new_tokens=budget).finish_reason == "length")
    cancelled = _metric(server, "specdecode_generations_cancelled_total")
    generated = _metric(server, "specdecode_generated_tokens_total")
    body = {"prompt": prompt, "max_tokens": budget, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server}/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        first = [next(lines) for _ in range(4)]  # generation is under way
    assert any(line.startswith("data: {") for line in first)
    deadline = time.time() + 60
    while _metric(server, "specdecode_generations_cancelled_total") == cancelled and time.time() < deadline:
        time.sleep(0.2)
    assert _metric(server, "specdecode_generations_cancelled_total") == cancelled + 1
    assert _metric(server, "specdecode_generated_tokens_total") - generated < budget  # stopped early
    start = time.perf_counter()  # the queue is free again
    assert client.completions.create(model="tiny", prompt="hi", max_tokens=5, temperature=0).choices
    assert time.perf_counter() - start < 30
    assert _metric(server, "specdecode_queue_length") == 0


def test_api_key(pair):
    proc, url = _start(pair, "--api-key", "s3cret")
    try:
        assert httpx.get(f"{url}/health").status_code == 200  # health stays open for probes
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = httpx.get(f"{url}/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{url}/metrics").status_code == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        done = good.completions.create(model="tiny", prompt="hi", max_tokens=3, temperature=0)
        assert 0 < done.usage.completion_tokens <= 3 and done.choices[0].finish_reason in ("length", "stop")
        r = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and 'status="401"' in r.text
    finally:
        _stop(proc)


def test_an_exception_inside_generation_fails_that_request_only(caplog):
    from fastapi.testclient import TestClient

    from specdecode.server import ServerSettings, create_app
    from specdecode.toy import tiny_llama_pair

    target, draft = tiny_llama_pair()
    calls = {"n": 0}

    def flaky(seq: list[int], gamma: int) -> list[int]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("draft exploded")
        return seq[-gamma:]

    gen = sd.SpeculativeGenerator(target, flaky)
    with TestClient(create_app(gen, ServerSettings("tiny", gamma=2)), raise_server_exceptions=False) as http:
        bad = http.post("/v1/completions", json={"prompt": [5, 6, 7], "max_tokens": 8})
        assert bad.status_code == 500
        error = bad.json()["error"]
        assert error["type"] == "server_error" and error["code"] == "internal_error"
        assert "draft exploded" not in error["message"], "exception text must not reach the client"
        request_id = re.search(r"request id (req-[0-9a-f]+)", error["message"]).group(1)
        logged = [r for r in caplog.records if request_id in r.getMessage()]
        assert logged and "draft exploded" in str(logged[0].exc_info[1])
        # greedy, so the count is known: sampling may draw EOS early (CI once got 4 of 8 tokens)
        good = http.post("/v1/completions", json={"prompt": [5, 6, 7], "max_tokens": 8, "temperature": 0})
        expected = sd.SpeculativeGenerator(target, None).generate([5, 6, 7], max_new_tokens=8, temperature=0)
        assert good.status_code == 200
        assert good.json()["choices"][0]["text"] == expected.text
        assert good.json()["usage"]["completion_tokens"] == len(expected.token_ids) > 0
        streamed = http.post("/v1/completions", json={"prompt": [5, 6, 7], "max_tokens": 4, "stream": True})
        events = [line for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) >= 3


def test_serve_rejects_bad_options(pair, capsys):
    from specdecode import cli

    assert cli.main(["serve", "--target", pair[0], "--port", "70000", "--quiet"]) == 2
    assert "--port must be in 1..65535" in capsys.readouterr().err


@pytest.mark.parametrize("stream", [False, True])
def test_prediction_through_the_openai_client(client, local, stream):
    """OpenAI's `prediction=` argument: same text as without it, usage counts as OpenAI names them."""
    messages = [{"role": "user", "content": "Repeat: def f(x): return x"}]
    expected = local.generate(messages, chat=True, max_new_tokens=30, temperature=0)
    prediction = {"type": "content", "content": expected.text[:20] + "#junk#" + expected.text[20:]}
    args = dict(model="tiny", messages=messages, max_tokens=30, temperature=0, prediction=prediction)
    if stream:
        chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                                     **args))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = chunks[-1].usage
    else:
        res = client.chat.completions.create(**args)
        text, usage = res.choices[0].message.content, res.usage
    assert text == expected.text
    details = usage.completion_tokens_details
    assert details.accepted_prediction_tokens > 0
    assert details.accepted_prediction_tokens + details.rejected_prediction_tokens <= \
        usage.model_extra["draft_tokens"]
    # the same request through the library gives the same counts
    again = local.generate(messages, chat=True, max_new_tokens=30, temperature=0,
                           prediction=prediction["content"])
    assert again.text == expected.text


def test_prediction_as_text_parts_on_completions(server, local):
    expected = local.generate("def g(y):", max_new_tokens=20, temperature=0)
    body = {"model": "tiny", "prompt": "def g(y):", "max_tokens": 20, "temperature": 0,
            "prediction": {"type": "content", "content": [{"type": "text", "text": expected.text[:10]},
                                                          {"type": "text", "text": expected.text[10:]}]}}
    res = httpx.post(f"{server}/v1/completions", json=body, timeout=60).json()
    assert res["choices"][0]["text"] == expected.text
    assert res["usage"]["completion_tokens_details"]["accepted_prediction_tokens"] > 0
    plain = httpx.post(f"{server}/v1/completions", json={**body, "prediction": None}, timeout=60).json()
    assert "completion_tokens_details" not in plain["usage"]


@pytest.mark.parametrize("prediction, fragment", [
    ({"type": "content", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
     "prediction.content.0"),
    ({"type": "file", "content": "x"}, "prediction.type"),
    ({"content": "x"}, "prediction.type"),
    ("just text", "prediction"),
    ({"type": "content", "content": "word " * 5000}, "context window"),
])
def test_bad_predictions_are_400s_naming_the_field(server, prediction, fragment):
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 5, "prediction": prediction}
    res = httpx.post(f"{server}/v1/completions", json=body, timeout=60)
    assert res.status_code == 400, res.text
    error = res.json()["error"]
    assert fragment in error["message"] or fragment == error["param"], error
    assert httpx.get(f"{server}/health").status_code == 200


def test_requests_never_calibrate(monkeypatch):
    """Costs are measured once at start-up up to the server's caps; a request's gamma_max (above or
    below the cap) and a prediction are served from them."""
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
    assert at_start >= 1
    with TestClient(create_app(gen, settings)) as http:
        for body in ({"speculative": {"gamma_max": 32}}, {"speculative": {"gamma_max": 2}},
                     {"prediction": {"type": "content", "content": "1 2 3"}}, {}):
            res = http.post("/v1/completions", json={"prompt": [5, 6, 7], "max_tokens": 6, **body})
            assert res.status_code == 200, res.text
    assert len(calls) == at_start, f"a request calibrated: {calls[at_start:]}"
