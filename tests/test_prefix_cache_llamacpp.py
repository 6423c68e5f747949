"""The prefix cache on llama.cpp (tiny random GGUF models): the single-sequence model keeps the longest
common prefix, a growing context moves its KV instead of reading it again, and the sequence pool gives a
new request any prefix another running or parked sequence holds, evicts under a budget and spills to
host memory. A reused prefix gives the logits of a fresh read (up to float noise)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("llama_cpp")

from specdecode import SpeculativeGenerator  # noqa: E402
from specdecode.backends.llamacpp import LlamaCppModel  # noqa: E402
from specdecode.backends.llamacpp_pool import SequencePool  # noqa: E402
from specdecode.compare import first_divergence, near_tie_margin  # noqa: E402
from specdecode.drafters import ModelDrafter, NgramDrafter, NgramThenModel  # noqa: E402
from specdecode.protocol import start_sequence  # noqa: E402

from .tiny_gguf import write_tiny_llama  # noqa: E402

TOL = 1e-2  # a prefix read in another batch shape (and, in a pool, one shared KV buffer): ~1e-3 apart


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("prefix-cache")
    return {"target": write_tiny_llama(d / "target.gguf", seed=0),
            "draft": write_tiny_llama(d / "draft.gguf", seed=0, scale=0.7)}


@pytest.fixture(scope="module")
def target(files):
    return LlamaCppModel(files["target"])


def fresh_logits(model: LlamaCppModel, ids: list[int], keep: int) -> torch.Tensor:
    model.reset()
    return model.forward(torch.tensor([ids]), logits_to_keep=keep)[0].clone()


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, atol=TOL, rtol=0)


# -- one sequence --------------------------------------------------------------------------------------
def test_single_model_keeps_the_common_prefix(target):
    prompt = list(range(100, 400))
    start_sequence(target, prompt, reuse=True)
    target.forward(torch.tensor([prompt]), logits_to_keep=1)
    longer = prompt + list(range(900, 940))
    assert start_sequence(target, longer, reuse=True) == longer and target.length == len(prompt)
    got = target.forward(torch.tensor([longer[len(prompt):]]), logits_to_keep=3)[0].clone()
    assert close(got, fresh_logits(target, longer, 3))
    # a prompt diverging mid-way, a strict prefix (the last token is left to read), nothing shared
    target.reset()
    target.forward(torch.tensor([longer]))
    start_sequence(target, prompt[:150] + [5, 6, 7], reuse=True)
    assert target.length == 150
    target.forward(torch.tensor([[5, 6]]))
    start_sequence(target, prompt[:150] + [5, 6], reuse=True)
    assert target.length == 151
    start_sequence(target, [7, 8, 9], reuse=True)
    assert target.length == 0
    start_sequence(target, prompt, reuse=False)
    assert target.length == 0


def test_a_growing_context_moves_its_kv(files):
    model = LlamaCppModel(files["target"], n_ctx=512)
    ids = list(range(200, 600))
    model.forward(torch.tensor([ids]))
    before = model._n_ctx
    model.reserve(1500)
    assert model._n_ctx > before and model.tokens == ids
    got = model.forward(torch.tensor([[7, 8]]), logits_to_keep=2)[0].clone()
    assert close(got, fresh_logits(model, ids + [7, 8], 2))


def test_state_save_and_load_round_trip(files, target):
    ids = list(range(1000, 1200))
    fresh_logits(target, ids, 1)
    state = target.save_state()
    other = LlamaCppModel(files["target"], n_ctx=512)
    assert other.load_state(state, ids) and other.tokens == ids
    got = other.forward(torch.tensor([[3, 4]]), logits_to_keep=2)[0].clone()
    assert close(got, fresh_logits(target, ids + [3, 4], 2))
    assert not other.load_state(b"not a state", ids) and other.length == 0
    assert not other.load_state(state[: len(state) // 2], ids) and other.length == 0


@pytest.mark.parametrize("drafter", ["ngram", "model", "ngram+model"])
def test_chat_loop_greedy_equals_cache_off(files, drafter):
    def make():
        t = LlamaCppModel(files["target"])
        d = None if drafter == "ngram" else ModelDrafter(LlamaCppModel(files["draft"]))
        return SpeculativeGenerator(t, NgramDrafter() if d is None else d if drafter == "model"
                                    else NgramThenModel(NgramDrafter(), d))

    on, off = make(), make()
    history = list(range(300, 420))
    for turn in range(4):
        a = on.generate(history, max_new_tokens=24, gamma=4)
        b = off.generate(history, max_new_tokens=24, gamma=4, cache_prompt=False)
        if a.token_ids != b.token_ids:
            div = first_divergence(off.target, history, a.token_ids, b.token_ids)
            assert div is not None and div.top2_margin <= near_tie_margin(off.target)
        if turn:
            assert a.stats.cached_tokens >= len(history) - 8
            assert a.stats.target_tokens < b.stats.target_tokens - 100  # the history was not read again
        history = history + a.token_ids + [500 + turn, 501, 502]


# -- a pool of sequences -------------------------------------------------------------------------------
def test_pool_shares_a_prefix_across_slots(target):
    pool = SequencePool(target, 2, 512, cache_tokens=1024)
    system = list(range(100, 300))
    a = pool.acquire()
    assert a.prefix(system + [1, 2, 3]) == 0
    pool.decode([(a, system + [1, 2, 3], 1)])
    # a running sequence's prefix: another slot copies it (shared cells) and reads only its own question
    b = pool.acquire()
    assert b.prefix(system + [7, 8, 9]) == len(system) and b.tokens == system
    got = pool.decode([(b, [7, 8, 9], 3)])[0].clone()
    assert close(got, fresh_logits(target, system + [7, 8, 9], 3))
    # a finished one is parked: a later request in the first slot starts from it
    pool.release(b)
    assert pool.cache.parked_tokens == len(system) + 3
    pool.release(a)
    c = pool.acquire()
    assert c.prefix(system + [7, 8, 9, 10]) == len(system) + 3
    got = pool.decode([(c, [10], 1)])[0].clone()
    assert close(got, fresh_logits(target, system + [7, 8, 9, 10], 1))
    # a strict prefix of a cached sequence leaves its last token to read; a mid-run divergence keeps
    # the common part
    d = pool.acquire()
    assert d.prefix(system[:50]) == 49
    pool.release(d)
    d = pool.acquire()
    assert d.prefix(system[:120] + [5, 5]) == 120
    got = pool.decode([(d, [5, 5], 2)])[0].clone()
    assert close(got, fresh_logits(target, system[:120] + [5, 5], 2))
    pool.release(c)
    pool.release(d)
    pool.close()


def test_pool_evicts_under_a_tiny_budget_and_stays_exact(target):
    pool = SequencePool(target, 1, 512, cache_tokens=300)
    convs = [[i] + list(range(1000 + 10 * i, 1200 + 10 * i)) for i in range(3)]  # 201 tokens, no sharing
    for ids in convs:
        s = pool.acquire()
        s.prefix(ids)
        pool.decode([(s, ids, 1)])
        pool.release(s)
        assert pool.cache.parked_tokens <= 300
    assert pool.cache.stats.evictions == 2
    s = pool.acquire()
    assert s.prefix(convs[0] + [9]) == 0  # evicted long ago
    pool.release(s)
    s = pool.acquire()
    assert s.prefix(convs[2] + [9]) == len(convs[2])
    got = pool.decode([(s, [9], 1)])[0].clone()
    assert close(got, fresh_logits(target, convs[2] + [9], 1))
    pool.release(s)
    pool.close()


def test_pool_spills_to_host_memory_and_restores(target):
    pool = SequencePool(target, 1, 512, cache_tokens=250, cache_ram=64 << 20)
    first, second = list(range(2000, 2200)), list(range(3000, 3200))
    for ids in (first, second):  # the second evicts the first, to host memory
        s = pool.acquire()
        s.prefix(ids)
        pool.decode([(s, ids, 1)])
        pool.release(s)
    assert pool.cache.stats.spills == 1 and pool.cache.host_used > 0
    s = pool.acquire()
    assert s.prefix(first[:150] + [4, 5]) == 150 and s.tokens == first[:150]
    assert pool.cache.stats.restores == 1
    got = pool.decode([(s, [4, 5], 2)])[0].clone()
    assert close(got, fresh_logits(target, first[:150] + [4, 5], 2))
    pool.release(s)
    pool.close()


def test_pool_without_cache_reads_everything(target):
    for pool in (SequencePool(target, 2, 512, cache_tokens=0),
                 SequencePool(target, 2, 512, kv_unified=False, cache_tokens=1024)):
        assert pool.cache is None
        a = pool.acquire()
        pool.decode([(a, list(range(50, 90)), 1)])
        b = pool.acquire()
        assert b.prefix(list(range(50, 95))) is None
        assert start_sequence(b, list(range(50, 95)), reuse=True) and b.length == 0
        pool.close()


# -- the server ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("parallel", [1, 2])
def test_server_reports_cached_tokens_and_honours_the_switches(files, parallel):
    import json

    import httpx

    from specdecode.server import ServerSettings, create_app

    from .test_batching import _Server

    gen = SpeculativeGenerator(LlamaCppModel(files["target"]), NgramDrafter())
    servers = {"on": _Server(create_app(gen, ServerSettings("tiny", parallel=parallel, ctx_size=1024))),
               "off": _Server(create_app(SpeculativeGenerator(LlamaCppModel(files["target"]), NgramDrafter()),
                                         ServerSettings("tiny", parallel=parallel, ctx_size=1024,
                                                        prefix_cache=False)))}
    try:
        def chat(url: str, messages: list, **extra) -> dict:
            r = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                           json={"messages": messages, "max_tokens": 8, "temperature": 0, **extra})
            assert r.status_code == 200, r.text
            return r.json()

        doc = "def f(x):\n    return x + 1\n" * 40
        messages = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": doc}]
        for url in (servers["on"].url, servers["off"].url):
            first = chat(url, messages)
            assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        turn2 = messages + [first["choices"][0]["message"], {"role": "user", "content": "And g?"}]
        on = chat(servers["on"].url, turn2)
        off = chat(servers["off"].url, turn2)
        prompt = on["usage"]["prompt_tokens"]
        assert on["usage"]["prompt_tokens_details"]["cached_tokens"] > prompt - 30
        assert off["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        assert on["choices"][0]["message"]["content"] == off["choices"][0]["message"]["content"]
        # llama-server's per-request switch, and the streamed usage chunk
        assert chat(servers["on"].url, turn2, cache_prompt=False)["usage"]["prompt_tokens_details"] == {
            "cached_tokens": 0}
        httpx.post(f"{servers['on'].url}/v1/completions", json={"prompt": doc, "max_tokens": 2}, timeout=60)
        with httpx.stream("POST", f"{servers['on'].url}/v1/completions", timeout=60,
                          json={"prompt": doc + "# end", "max_tokens": 4, "stream": True,
                                "stream_options": {"include_usage": True}}) as r:
            events = [json.loads(line[6:]) for line in r.iter_lines()
                      if line.startswith("data: {")]
        assert events[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
        metrics = httpx.get(f"{servers['on'].url}/metrics").text
        values = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
                  if line and not line.startswith("#")}
        assert values["specdecode_prompt_tokens_cached_total"] > prompt - 30
        assert values["specdecode_prompt_tokens_read_total"] > 0
        assert values["specdecode_prefix_cache_tokens"] > 0
    finally:
        for s in servers.values():
            s.close()


def test_concurrent_requests_read_a_shared_prefix_once(files):
    import concurrent.futures as cf

    import httpx

    from specdecode.server import ServerSettings, create_app

    from .test_batching import _Server

    shared = "".join(f"def helper_{i}(x):\n    return x * {i}\n\n" for i in range(60))
    prompts = [shared + f"# question {i}: what does helper_{i} return?\n" for i in range(3)]
    results = {}
    for cache in (True, False):
        gen = SpeculativeGenerator(LlamaCppModel(files["target"]), NgramDrafter())
        srv = _Server(create_app(gen, ServerSettings("tiny", parallel=3, ctx_size=2048, prefix_cache=cache,
                                                     prefill_chunk=64)))
        try:
            def post(prompt: str, url: str = srv.url) -> dict:
                r = httpx.post(f"{url}/v1/completions", timeout=120,
                               json={"prompt": prompt, "max_tokens": 12, "temperature": 0})
                assert r.status_code == 200, r.text
                return r.json()

            with cf.ThreadPoolExecutor(3) as ex:
                results[cache] = list(ex.map(post, prompts))
            metrics = httpx.get(f"{srv.url}/metrics").text
            results[cache, "read"] = next(float(line.split()[1]) for line in metrics.splitlines()
                                          if line.startswith("specdecode_prompt_tokens_read_total"))
        finally:
            srv.close()
    total = sum(r["usage"]["prompt_tokens"] for r in results[True])
    prefix_tokens = results[True][0]["usage"]["prompt_tokens"] - 20
    assert results[False, "read"] == total
    assert results[True, "read"] < total - 1.5 * prefix_tokens  # the shared part was read about once
    cached = sum(r["usage"]["prompt_tokens_details"]["cached_tokens"] for r in results[True])
    assert cached > 1.5 * prefix_tokens
    reference = LlamaCppModel(files["target"])
    for on, off, prompt in zip(results[True], results[False], prompts, strict=True):
        a, b = on["choices"][0]["text"], off["choices"][0]["text"]
        if a != b:
            tok = reference.tokenizer
            div = first_divergence(reference, tok.encode(prompt), tok.encode(a, add_special_tokens=False),
                                   tok.encode(b, add_special_tokens=False))
            assert div is not None and div.top2_margin <= near_tie_margin(reference)
