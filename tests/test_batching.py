"""Continuous batching on llama.cpp: the multi-sequence pool, auto-gamma in a shared step, and a real server
with many concurrent clients (texts equal their one-at-a-time references, nothing lost or mixed,
disconnects free their slots, one failing request leaves the others intact, the KV bound gives a 400)."""

from __future__ import annotations

import concurrent.futures as cf
import json
import socket
import threading
import time

import httpx
import pytest
import torch

pytest.importorskip("llama_cpp")

import specdecode as sd  # noqa: E402
from specdecode.backends.llamacpp import LlamaCppModel  # noqa: E402
from specdecode.backends.llamacpp_pool import SequencePool  # noqa: E402
from specdecode.compare import first_divergence, near_tie_margin  # noqa: E402
from specdecode.drafters import NgramDrafter  # noqa: E402
from specdecode.gamma import AutoGamma, BatchLoad, CostModel  # noqa: E402

from .serve_process import serve_process  # noqa: E402
from .tiny_gguf import write_tiny_llama  # noqa: E402

CTX = 1024  # positions per request
PROMPTS = [f"def f{i}(x):\n    return x * {i} + {i % 3}\n\n# {'abc ' * (i % 4)}" for i in range(16)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("batching")
    return {"target": write_tiny_llama(d / "target.gguf", seed=0),
            "draft": write_tiny_llama(d / "draft.gguf", seed=0, scale=0.7)}


@pytest.fixture(scope="module")
def target(files):
    return LlamaCppModel(files["target"])


# -- the pool ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("unified", [False, True])
def test_one_batched_decode_equals_each_sequence_alone(target, unified):
    # one shared KV buffer changes the attention's summation order (differences around 1e-3)
    tol = 1e-3 if not unified else 1e-2
    pool = SequencePool(target, 3, 256, kv_unified=unified)
    a, b, c = (pool.acquire() for _ in range(3))
    feeds = {a: list(range(100, 140)), b: list(range(300, 307)), c: [5]}
    alone = {}
    for slot, ids in feeds.items():
        target.reset()
        alone[slot] = target.forward(torch.tensor([ids]), logits_to_keep=2)[0].clone()
    out = pool.decode([(s, ids, 2) for s, ids in feeds.items()])
    for (slot, ids), logits in zip(feeds.items(), out, strict=True):
        assert slot.length == len(ids)
        assert logits.shape == (min(2, len(ids)), target.vocab_size)
        assert torch.allclose(logits, alone[slot][-logits.shape[0]:], atol=tol, rtol=0)
    # rolling one sequence back leaves the others alone
    a.truncate(10)
    assert (a.length, b.length, c.length) == (10, 7, 1)
    target.reset()
    target.forward(torch.tensor([feeds[a][:10]]))
    expected = target.forward(torch.tensor([[7, 8]]), logits_to_keep=1)[0, -1].clone()
    target.reset()
    target.forward(torch.tensor([feeds[b]]))
    expected_b = target.forward(torch.tensor([[9]]), logits_to_keep=1)[0, -1].clone()
    got_a, got_b = pool.decode([(a, [7, 8], 1), (b, [9], 1)])
    assert torch.allclose(got_a[-1], expected, atol=tol, rtol=0)
    assert torch.allclose(got_b[-1], expected_b, atol=tol, rtol=0)  # b's cache still holds its own
    assert (a.length, b.length) == (12, 8)


def test_a_step_split_into_several_calls_gives_the_same_logits(target):
    pool = SequencePool(target, 3, 256)
    slots = [pool.acquire() for _ in range(3)]
    feeds = [list(range(100, 110)), [7, 8, 9], list(range(300, 305))]
    whole = [x.clone() for x in pool.decode([(s, ids, 2) for s, ids in zip(slots, feeds, strict=True)])]
    for s in slots:
        s.truncate(0)
    # calls ending inside a sequence's rows (10 = 4 + 6) and across sequences
    split = pool.decode([(s, ids, 2) for s, ids in zip(slots, feeds, strict=True)], calls=[4, 7, 1, 6])
    for a, b in zip(whole, split, strict=True):
        assert torch.allclose(a, b, atol=1e-3)
    assert [s.length for s in slots] == [10, 3, 5]


def test_the_cheapest_split_of_a_call_follows_the_measured_curve():
    # measured on 2 cores (ms): 8 rows cost more than 4 + 4, 16 less than 8 + 8
    curve = {1: 31, 2: 61, 3: 83, 4: 102, 5: 127, 6: 147, 7: 172, 8: 225, 9: 243, 12: 281, 16: 270,
             24: 344, 32: 392, 33: 437}
    costs = CostModel({k: v / 1000 for k, v in curve.items()}, draft_s=0.01)
    assert costs.split(1) == [1] and costs.split(4) == [4] and costs.split(16) == [16]
    assert sum(costs.split(8)) == 8 and costs.t_split(8) < costs.t(8)
    assert all(sum(costs.split(k)) == k and costs.t_split(k) <= costs.t(k) + 1e-12 for k in range(1, 65))
    assert costs.split(500) == [500]  # prompt-sized calls are not split
    before = {k: costs.split(k) for k in range(1, 65)}
    costs.observe_target(8, 0.4)  # observations rescale the curve: the splits stay
    assert {k: costs.split(k) for k in range(1, 65)} == before


def test_pool_bounds_and_bad_input(target):
    pool = SequencePool(target, 2, 256)
    a, _ = pool.acquire(), pool.acquire()
    assert pool.free == 0
    with pytest.raises(RuntimeError, match="all 2 sequences are in use"):
        pool.acquire()
    with pytest.raises(ValueError, match="do not fit a sequence's context of 256"):
        pool.decode([(a, [1] * 257, 1)])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        pool.decode([(a, [target.vocab_size], 1)])
    assert a.length == 0  # nothing of a refused call reached the cache
    pool.release(a)


def test_unified_sequences_share_the_kv_memory(target):
    pool = SequencePool(target, 3, 512)  # one buffer: each sequence may grow to 512, all together too
    assert (pool.n_ctx, pool.n_ctx_seq) == (512, 512)
    a, b = pool.acquire(), pool.acquire()
    pool.decode([(a, [1] * 300, 1)])
    assert pool.room == 212
    with pytest.raises(ValueError, match="do not fit the 212 left in the shared KV memory"):
        pool.decode([(b, [1] * 213, 1)])
    assert b.length == 0
    pool.decode([(b, [1] * 212, 1)])
    assert pool.room == 0
    split = SequencePool(target, 2, 512, kv_unified=False)  # a buffer each: half the positions each
    assert (split.n_ctx, split.n_ctx_seq) == (512, 256)
    assert pool.free == 1 and pool.acquire().length == 0
    with pytest.raises(ValueError, match="--parallel must be >= 1|parallel sequences must be >= 1"):
        SequencePool(target, 0)


# -- auto-gamma in a shared step ---------------------------------------------------------------------------
def test_batched_choice_equals_the_single_one_without_others():
    costs = CostModel({k: 0.03 + 0.01 * k for k in range(1, 40)}, draft_s=1e-5)
    for alpha in (0.2, 0.6, 0.9):
        a = AutoGamma(costs, lookup_gamma_max=32, priors={"ngram": alpha})
        b = AutoGamma(costs, lookup_gamma_max=32, priors={"ngram": alpha})
        assert a.choose(100, "ngram") == b.choose(100, "ngram", BatchLoad())


def test_a_shared_step_prices_a_block_at_the_calls_marginal_cost():
    # the 2-core cost curve of MODELS.md: 16 rows cost little more than 8
    costs = CostModel({1: 0.030, 2: 0.045, 4: 0.072, 8: 0.122, 16: 0.141, 32: 0.242, 64: 0.444}, 1e-5)

    def choose(alpha: float, rows: int = 0, sequences: int = 0, own: int = 1) -> int:
        policy = AutoGamma(costs, lookup_gamma_max=32, priors={"ngram": alpha})
        if not rows:
            return policy.choose(100, "ngram")
        load = BatchLoad(rows=rows, sequences=sequences)
        load.leave(own)  # the one choosing now was counted with its pending rows
        assert load.rows == rows - own
        return policy.choose(100, "ngram", load)

    # alone, a good source takes a 16-token block (T(16) is about T(8)); among 8 plain sequences the
    # same source fills the call up to 16 rows, the point where rows stop being nearly free
    assert (choose(0.9), choose(0.9, rows=8, sequences=8)) == (15, 8)
    # a poor source drafts neither alone nor in a prompt-heavy call, where a row costs a prefill row
    assert choose(0.3) == 0 and choose(0.3, rows=252, sequences=4, own=60) == 0
    # the saving of an accepted token is a plain step's time per sequence: cheap rows of a full call
    # make a middling source worth a short block there
    assert (choose(0.6), choose(0.6, rows=8, sequences=8)) == (1, 3)
    # a model draft, whose calls run one sequence at a time, is probed alone but never while others wait
    flat = CostModel({1: 0.030, 2: 0.032, 4: 0.036, 8: 0.050}, draft_s=0.005)
    alone_model = AutoGamma(flat, priors={"model": 0.05}, probe_every=1)
    assert 1 in [alone_model.choose(100, "model") for _ in range(3)]
    shared = AutoGamma(flat, priors={"model": 0.05}, probe_every=1)
    assert [shared.choose(100, "model", BatchLoad(rows=4, sequences=4)) for _ in range(5)] == [0] * 5


# -- a real server ----------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


@pytest.fixture(scope="module")
def server(files, tmp_path_factory):
    # a KV buffer per request: on this f32 model a request's logits are then bitwise the same whatever
    # else is in the call, so any difference from its one-at-a-time text would be the scheduler's
    # (mixed states or random streams), not the kernels' summation order
    args = ["--target", files["target"], "--draft", f"ngram+{files['draft']}", "--parallel", "8",
            "--ctx-size", str(8 * CTX), "--max-waiting", "64", "--served-model-name", "tiny", "--quiet",
            "--no-kv-unified"]
    with serve_process(args, _free_port(), tmp_path_factory.mktemp("server-log") / "server.log") as url:
        yield url


def _complete(url: str, body: dict) -> dict:
    r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", **body}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _bodies() -> list[dict]:
    """16 requests: greedy with auto gamma, seeded sampling with a fixed gamma, two with a prediction."""
    bodies = []
    for i, prompt in enumerate(PROMPTS):
        body: dict = {"prompt": prompt, "max_tokens": 24 + 3 * i}
        if i % 2:
            body.update(temperature=0.9, seed=100 + i, speculative={"gamma": 3})
        else:
            body.update(temperature=0)
        if i in (4, 10):
            body["prediction"] = {"type": "content", "content": prompt * 2}
        bodies.append(body)
    return bodies


def test_sixteen_concurrent_clients_get_their_one_at_a_time_texts(server, target):
    bodies = _bodies()
    alone = [_complete(server, b) for b in bodies]  # one at a time: the references
    with cf.ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda b: _complete(server, b), bodies))
    assert len(together) == 16
    for i, (ref, got) in enumerate(zip(alone, together, strict=True)):
        a, b = ref["choices"][0]["text"], got["choices"][0]["text"]
        assert got["usage"]["prompt_tokens"] == ref["usage"]["prompt_tokens"]
        if a == b:
            continue
        # greedy may differ only at a near-tie (a batch computes the same logits by other kernels)
        assert bodies[i]["temperature"] == 0, f"seeded request {i} changed with others running"
        ids = target.tokenizer.encode(PROMPTS[i])
        div = first_divergence(target, ids, target.tokenizer.encode(a, add_special_tokens=False),
                               target.tokenizer.encode(b, add_special_tokens=False))
        assert div is not None and div.top2_margin <= near_tie_margin(target), (i, a, b)
    # predictions reported as OpenAI does
    details = together[4]["usage"]["completion_tokens_details"]
    assert set(details) == {"accepted_prediction_tokens", "rejected_prediction_tokens"}
    # the steps really were shared: more requests than target calls in some of them
    text = httpx.get(f"{server}/metrics").text
    rows = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
            if line.startswith("specdecode_batch_requests_")}
    assert rows["specdecode_batch_requests_sum"] > rows["specdecode_batch_requests_count"]
    assert _metric(server, "specdecode_slots_in_use") == 0
    health = httpx.get(f"{server}/health").json()
    assert health["slots"] == {"total": 8, "in_use": 0, "context": CTX}


def test_streams_of_concurrent_clients_are_not_mixed(server):
    bodies = _bodies()[:8]
    refs = [_complete(server, b)["choices"][0]["text"] for b in bodies]

    def stream(body: dict) -> str:
        out = []
        with httpx.stream("POST", f"{server}/v1/completions", json={**body, "stream": True},
                          timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    out += [c["text"] for c in chunk["choices"]]
        return "".join(out)

    with cf.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(stream, bodies)) == refs


def test_a_disconnect_frees_its_slot(server):
    cancelled = _metric(server, "specdecode_generations_cancelled_total")
    for _ in range(3):
        with httpx.stream("POST", f"{server}/v1/completions", timeout=60,
                          json={"prompt": PROMPTS[0], "max_tokens": CTX - 64, "temperature": 0,
                                "stream": True}) as r:
            for i, _ in enumerate(r.iter_lines()):
                if i > 4:
                    break
    deadline = time.time() + 30
    while time.time() < deadline and _metric(server, "specdecode_slots_in_use") > 0:
        time.sleep(0.2)
    assert _metric(server, "specdecode_slots_in_use") == 0
    assert _metric(server, "specdecode_generations_cancelled_total") >= cancelled + 3
    after = _complete(server, {"prompt": "hi", "max_tokens": 3, "temperature": 0})
    assert after["usage"]["completion_tokens"] > 0


def test_max_tokens_beyond_the_window_is_clamped_and_a_prompt_beyond_it_is_a_400(server):
    prompt_tokens = _complete(server, {"prompt": PROMPTS[0], "max_tokens": 1})["usage"]["prompt_tokens"]
    r = _complete(server, {"prompt": PROMPTS[0], "max_tokens": 2 * CTX, "temperature": 0,
                           "stop": None, "logit_bias": None})
    usage, finish = r["usage"], r["choices"][0]["finish_reason"]
    # the generation runs to the end of its window (finish length) unless the model ends it first
    if finish == "length":
        assert usage["prompt_tokens"] + usage["completion_tokens"] == CTX
    else:
        assert finish == "stop"
    assert usage["completion_tokens"] <= CTX - prompt_tokens
    r = httpx.post(f"{server}/v1/completions", timeout=30,
                   json={"prompt": "x " * (2 * CTX), "max_tokens": 4, "temperature": 0})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and str(CTX) in err["message"]


# -- in-process: an exception inside one request's generation --------------------------------------------
class _Server:
    """The app on uvicorn in a thread of this process (so a test can hand it a failing drafter)."""

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


MARKER = 4242


def test_one_failing_request_leaves_the_others_intact(files):
    from specdecode.server import ServerSettings, create_app

    def flaky(seq: list[int], gamma: int) -> list[int]:
        if MARKER in seq:
            raise RuntimeError("draft exploded")
        return seq[-gamma:]

    gen = sd.SpeculativeGenerator(LlamaCppModel(files["target"]), flaky)
    app = create_app(gen, ServerSettings("tiny", gamma=2, parallel=4, ctx_size=CTX))
    srv = _Server(app)
    try:
        prompts = [[10 + i, 20 + i, 30 + i, 40] for i in range(6)]
        prompts[2] = [11, MARKER, 12]
        plain = sd.SpeculativeGenerator(LlamaCppModel(files["target"]))
        refs = [plain.generate(p, max_new_tokens=20, temperature=0).text for p in prompts]

        def post(p):
            return httpx.post(f"{srv.url}/v1/completions", timeout=60,
                              json={"prompt": p, "max_tokens": 20, "temperature": 0})

        with cf.ThreadPoolExecutor(6) as pool:
            res = list(pool.map(post, prompts))
        assert res[2].status_code == 500 and res[2].json()["error"]["code"] == "internal_error"
        assert "draft exploded" not in res[2].text
        for i, r in enumerate(res):
            if i != 2:
                assert r.status_code == 200 and r.json()["choices"][0]["text"] == refs[i]
        assert app.state.queue.pool.free == 4
    finally:
        srv.close()


def test_shared_kv_buffer_keeps_greedy_texts_up_to_near_ties(files):
    from specdecode.server import ServerSettings, create_app

    model = LlamaCppModel(files["target"])
    gen = sd.SpeculativeGenerator(model, NgramDrafter())
    app = create_app(gen, ServerSettings("tiny", parallel=6, ctx_size=CTX))  # kv_unified by default
    assert app.state.queue.pool.kv_unified
    srv = _Server(app)
    try:
        def post(prompt: str) -> str:
            r = httpx.post(f"{srv.url}/v1/completions", timeout=60,
                           json={"prompt": prompt, "max_tokens": 32, "temperature": 0})
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]

        prompts = PROMPTS[:6]
        alone = [post(p) for p in prompts]
        with cf.ThreadPoolExecutor(6) as pool:
            together = list(pool.map(post, prompts))
        reference = LlamaCppModel(files["target"])
        for prompt, a, b in zip(prompts, alone, together, strict=True):
            if a != b:
                tok = reference.tokenizer
                div = first_divergence(reference, tok.encode(prompt), tok.encode(a, add_special_tokens=False),
                                       tok.encode(b, add_special_tokens=False))
                assert div is not None and div.top2_margin <= near_tie_margin(reference), (prompt, a, b)
    finally:
        srv.close()


def test_requests_without_max_tokens_share_the_kv_memory_and_end_when_it_is_full(files):
    from specdecode.server import ServerSettings, create_app

    gen = sd.SpeculativeGenerator(LlamaCppModel(files["target"]))
    app = create_app(gen, ServerSettings("tiny", parallel=2, ctx_size=512))
    assert app.state.queue.context == 512  # one request may use all of it
    srv = _Server(app)
    try:
        def post(prompt: str) -> dict:  # chat: no max_tokens means until the end of the context
            r = httpx.post(f"{srv.url}/v1/chat/completions", timeout=120,
                           json={"messages": [{"role": "user", "content": prompt}], "max_tokens": None,
                                 "temperature": 0, "stream": False})
            assert r.status_code == 200, r.text
            return r.json()

        with cf.ThreadPoolExecutor(2) as pool:
            replies = list(pool.map(post, PROMPTS[:2]))
        used = [r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"] for r in replies]
        finishes = [r["choices"][0]["finish_reason"] for r in replies]
        assert max(used) <= 512 and set(finishes) <= {"length", "stop"}
        if finishes == ["length", "length"]:  # (a random model rarely ends a reply itself)
            # the memory ran out while both grew: the fuller one ended there, the other then had it all
            assert sorted(used)[0] < 512 == sorted(used)[1]
        assert app.state.queue.pool.free == 2 and app.state.queue.pool.room == 512
    finally:
        srv.close()


def test_max_waiting_gives_503_beyond_the_queue(files):
    from specdecode.server import ServerSettings, create_app

    gen = sd.SpeculativeGenerator(LlamaCppModel(files["target"]))
    app = create_app(gen, ServerSettings("tiny", parallel=2, ctx_size=2048, max_waiting=1))
    srv = _Server(app)
    scheduler = app.state.queue
    gate = threading.Event()
    original = scheduler._step

    def held_step() -> None:  # hold the running request until the test has seen the 503
        gate.wait(30)
        original()

    scheduler._step = held_step

    def wait_for(condition) -> None:
        deadline = time.time() + 10
        while not condition() and time.time() < deadline:
            time.sleep(0.02)
        assert condition()

    try:
        body = {"prompt": "hello", "max_tokens": 8, "temperature": 0}
        with cf.ThreadPoolExecutor(2) as pool:
            running = pool.submit(httpx.post, f"{srv.url}/v1/completions", json=body, timeout=60)
            wait_for(lambda: scheduler.pool.free == 1)  # in a slot; its first step is held
            waiting = pool.submit(httpx.post, f"{srv.url}/v1/completions", json=body, timeout=60)
            wait_for(lambda: scheduler.waiting == 1)  # the scheduler is busy: it waits in the queue
            refused = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=60)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_busy"
            gate.set()
            assert running.result().status_code == 200 and waiting.result().status_code == 200
        assert scheduler.pool.free == 2 and scheduler.waiting == 0
    finally:
        gate.set()
        srv.close()


def test_transformers_backend_keeps_one_request_at_a_time(caplog):
    from specdecode.server import ServerSettings, create_app
    from specdecode.server.worker import GenerationQueue
    from specdecode.toy import tiny_llama_pair

    target, _ = tiny_llama_pair()
    app = create_app(sd.SpeculativeGenerator(target), ServerSettings("tiny", parallel=4))
    assert isinstance(app.state.queue, GenerationQueue)
    assert any("one request at a time" in r.getMessage() for r in caplog.records)


def test_costs_beyond_the_measured_blocks_never_fall():
    # a tiny model's noisy curve may end falling; a batched step's rows go far beyond it
    costs = CostModel({1: 0.030, 2: 0.050, 4: 0.040}, draft_s=0.01)
    assert costs.t(500) == costs.t(4) > 0
    costs.observe_target(500, 0.08)  # observed, not a division by zero
    assert costs.t(4) > 0.040
