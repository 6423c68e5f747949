"""The Ray Serve cluster (`specdecode serve --replicas N`): the same API as one process, prefix-affinity
routing, and a replica killed mid-stream ending only its own streams while Ray restarts it.

Skipped when the `cluster` extra is not installed (pip install 'specdecode[cluster]')."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

import specdecode

pytest.importorskip("llama_cpp")
pytest.importorskip("ray.serve",
                    reason="the 'cluster' extra is not installed: pip install 'specdecode[cluster]'")

from specdecode.cluster.hub import MetricsHub  # noqa: E402
from specdecode.cluster.options import changed_options, serve_args  # noqa: E402
from specdecode.cluster.prefix import PrefixIndex, affinity_key  # noqa: E402
from specdecode.server.metrics import Metrics  # noqa: E402

from .tiny_gguf import write_tiny_llama  # noqa: E402

SOURCE = str(Path(specdecode.__file__).resolve().parents[1])
KEY = "cluster-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CTX = 1024


# -- the parts, without Ray -------------------------------------------------------------------------------
def test_the_index_finds_the_longest_prefix_sent_and_forgets_stopped_replicas():
    index = PrefixIndex(block_chars=4, max_blocks=100)
    index.record("abcdefghijkl", "r1")
    index.record("abcdefgh", "r2")
    assert index.match("abcdefghijklmnop", ["r1", "r2"]) == (["r1"], 12)
    assert index.match("abcdefgh-other", ["r1", "r2"]) == (["r1", "r2"], 8)
    assert index.match("abcdefghijkl", ["r2"]) == (["r2"], 8)  # only running replicas count
    assert index.match("zzzzabcd", ["r1", "r2"]) == ([], 0)
    index.forget(["r2"])
    assert index.match("abcdefghijkl", ["r1", "r2"]) == (["r2"], 8)
    small = PrefixIndex(block_chars=4, max_blocks=2)
    small.record("abcdefghijkl", "r1")
    assert len(small) == 2  # least recently used blocks go first


def test_the_routing_key_is_the_prompt_in_order():
    chat = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]}
    assert affinity_key(chat, True) == "<system>S\n<user>U"
    assert affinity_key({"prompt": "P"}, False) == "P"
    assert affinity_key({"prompt": [1, 2]}, False) == "[1, 2]"


def test_options_come_as_serve_run_strings_or_typed_values():
    args = serve_args({"target": "t.gguf", "replicas": "3", "prefix-cache": "false", "parallel": 2,
                       "cors_origin": ["https://a.example"]})
    assert (args.replicas, args.prefix_cache, args.parallel, args.cors_origin) == (
        3, False, 2, ["https://a.example"])
    assert changed_options(args) == {"target": "t.gguf", "replicas": 3, "prefix_cache": False, "parallel": 2,
                                     "cors_origin": ["https://a.example"]}
    with pytest.raises(ValueError, match="unknown cluster option 'bogus'"):
        serve_args({"bogus": 1})
    with pytest.raises(ValueError, match="--parallel"):
        serve_args({"parallel": "many"})


def test_metrics_of_the_replicas_add_up():
    a, b, ingress = Metrics(), Metrics(), Metrics()
    a.generated.inc(10), a.target_calls.inc(5), b.generated.inc(20), b.target_calls.inc(5)
    a.first_token.observe(0.3), b.first_token.observe(0.7), b.running.set(2)
    ingress.requests.labels("/v1/completions", "200").inc()
    hub = MetricsHub()
    hub.report("r1", {"pid": 1}, a.render().decode())
    hub.report("r2", {"pid": 2}, b.render().decode())
    lines = hub.render(ingress.render().decode()).splitlines()
    assert "specdecode_generated_tokens_total 30.0" in lines
    assert "specdecode_mean_tokens_per_target_call 3.0" in lines  # recomputed from the sums, not added
    assert "specdecode_time_to_first_token_seconds_count 2.0" in lines
    assert "specdecode_requests_running 2.0" in lines
    assert 'specdecode_requests_total{endpoint="/v1/completions",status="200"} 1.0' in lines
    assert "specdecode_replicas 2" in lines
    assert [r["id"] for r in hub.replicas()] == ["r1", "r2"]


def test_the_single_process_server_never_imports_ray():
    code = ("import sys, specdecode.cli, specdecode.cli.commands, specdecode.server; "
            "from specdecode.server import create_app; assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- a real cluster: 2 replicas of the tiny models on loopback --------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("cluster")
    target, draft = write_tiny_llama(d / "target.gguf", seed=0), write_tiny_llama(d / "draft.gguf", scale=0.7)
    os.makedirs("/tmp/ray", exist_ok=True)
    ray_tmp = tempfile.mkdtemp(prefix="sdtest-", dir="/tmp/ray")  # short: Ray's socket paths are limited
    port = _free_port()
    log = open(d / "cluster.log", "w+b")  # noqa: SIM115
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_TMPDIR": ray_tmp, "SPECDECODE_API_KEY": KEY,
           # the Ray workers import the specdecode under test
           "PYTHONPATH": os.pathsep.join(p for p in [SOURCE, os.environ.get("PYTHONPATH")] if p)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "specdecode.cli", "serve", "--replicas", "2", "--threads", "1", "--parallel",
         "2", "--ctx-size", str(CTX), "--target", str(target), "--draft", f"ngram+{draft}",
         "--served-model-name", "tiny", "--port", str(port), "--max-waiting", "16"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            if proc.poll() is not None or time.time() > deadline:
                log.seek(0)
                tail = log.read().decode(errors="replace")[-3000:]
                raise RuntimeError(f"the cluster did not come up: {tail}")
            try:
                r = httpx.get(f"{url}/health", timeout=5)
                if r.status_code == 200 and len(r.json()["replicas"]) == 2:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)  # serve.shutdown and ray.shutdown: its own processes stop too
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the session this test started, and only it
            proc.wait(timeout=10)
        log.seek(0)
        print(log.read().decode(errors="replace")[-4000:])  # shown by pytest when a test failed
        log.close()


def _post(url: str, path: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(f"{url}{path}", json={"model": "tiny", **body}, headers=AUTH, timeout=120, **kw)


def _replicas(url: str) -> dict[str, int]:
    return {r["id"]: r["pid"] for r in httpx.get(f"{url}/health", timeout=10).json()["replicas"]}


def test_the_cluster_serves_the_same_api(cluster):
    url = cluster
    assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 401  # the key guards all but /health
    card = httpx.get(f"{url}/v1/models", headers=AUTH, timeout=30).json()["data"][0]
    assert (card["id"], card["max_model_len"]) == ("tiny", CTX)
    body = {"prompt": "def add(a, b):", "max_tokens": 12, "temperature": 0}
    whole = _post(url, "/v1/completions", body).json()
    assert whole["object"] == "text_completion" and whole["usage"]["completion_tokens"] == 12
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, headers=AUTH,
                      timeout=60) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == whole["choices"][0]["text"]
    chat = _post(url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                "max_tokens": 4,
                                                "prediction": {"type": "content", "content": "hello there"}})
    assert chat.status_code == 200
    assert "accepted_prediction_tokens" in chat.json()["usage"]["completion_tokens_details"]
    tokens = _post(url, "/tokenize", {"content": "hello world"}).json()["tokens"]
    assert _post(url, "/detokenize", {"tokens": tokens}).json()["content"] == "hello world"
    too_long = _post(url, "/v1/completions", {"prompt": "word " * (CTX + 10), "max_tokens": 4})
    assert too_long.status_code == 400
    error = too_long.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
    assert f"context window on this server (--ctx-size) is {CTX}" in error["message"]
    assert _post(url, "/v1/completions", {"prompt": "x", "n": 2}).status_code == 400  # same validation
    time.sleep(1.5)  # the replicas report their metrics every second
    metrics = httpx.get(f"{url}/metrics", headers=AUTH, timeout=10).text
    assert "specdecode_prompt_tokens_cached_total" in metrics and "specdecode_replicas 2" in metrics
    generated = next(float(x.split()[1]) for x in metrics.splitlines()
                     if x.startswith("specdecode_generated_tokens_total"))
    assert generated >= 28


def test_requests_sharing_a_long_prefix_go_to_the_replica_holding_it(cluster):
    url = cluster
    system = "You are a careful assistant. " * 40  # ~1200 characters
    served, cached = set(), []
    for i in range(5):
        r = _post(url, "/v1/chat/completions", {"messages": [{"role": "system", "content": system},
                                                             {"role": "user", "content": f"question {i}"}],
                                                "max_tokens": 2, "temperature": 0})
        served.add(r.headers["x-specdecode-replica"])
        cached.append(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])
    assert len(served) == 1, served
    assert all(c > 200 for c in cached[1:]), cached
    spread = set()
    for i in range(12):  # no shared prefix: power of two choices spreads them
        r = _post(url, "/v1/completions", {"prompt": f"{i} unrelated prompt {i * 7919}", "max_tokens": 2})
        spread.add(r.headers["x-specdecode-replica"])
    assert len(spread) == 2


def _stream(url: str, body: dict, out: dict) -> None:
    with httpx.stream("POST", f"{url}/v1/completions", json={"model": "tiny", **body, "stream": True},
                      headers=AUTH, timeout=120) as r:
        out["replica"] = r.headers.get("x-specdecode-replica")
        out["started"].set()
        out["events"] = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]


def test_a_replica_killed_mid_stream_ends_only_its_streams_and_comes_back(cluster):
    url = cluster
    before = _replicas(url)
    long = {"max_tokens": 900, "temperature": 0.8, "seed": 1, "speculative": {"draft": False}}
    a = {"started": threading.Event()}
    ta = threading.Thread(target=_stream, args=(url, {"prompt": "def first(x):", **long}, a))
    ta.start()
    assert a["started"].wait(60)
    for attempt in range(6):  # the second stream on the other replica (its queue is the shorter)
        b = {"started": threading.Event()}
        tb = threading.Thread(target=_stream, args=(url, {"prompt": f"class Second{attempt}:", **long}, b))
        tb.start()
        assert b["started"].wait(60)
        if b["replica"] != a["replica"]:
            break
        tb.join()
    assert b["replica"] != a["replica"]
    time.sleep(0.5)
    os.kill(before[a["replica"]], signal.SIGKILL)
    ta.join(60)
    tb.join(120)
    assert "replica_failed" in a["events"][-1] and "[DONE]" not in a["events"]  # a clean error event
    assert b["events"][-1] == "[DONE]"  # the other replica's stream went on to its end
    for i in range(4):  # routed around the dead replica while Ray restarts it
        assert _post(url, "/v1/completions", {"prompt": f"after {i}", "max_tokens": 2}).status_code == 200
    deadline = time.time() + 90
    while time.time() < deadline:
        now = _replicas(url)
        if len(now) == 2 and a["replica"] not in now:
            break
        time.sleep(1)
    assert len(now) == 2 and a["replica"] not in now, now  # Ray started a new replica in its place
