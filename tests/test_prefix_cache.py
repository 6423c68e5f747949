"""The prefix cache: the radix tree, the parking/eviction/spill policy, and prefix reuse on the llama.cpp
single-sequence model, the llama.cpp sequence pool (shared cells across slots) and transformers models.
Exactness: a reused prefix gives the logits of a fresh read (up to float noise), and greedy texts with
the cache on equal those with it off."""

from __future__ import annotations

import random

import pytest
import torch

import specdecode as sd
from specdecode import SpeculativeGenerator
from specdecode.cache import PrefixCache, RadixTree, common_prefix
from specdecode.drafters import ModelDrafter, NgramDrafter, NgramThenModel
from specdecode.protocol import start_sequence

from .tiny_models import build


# -- the radix tree -----------------------------------------------------------------------------------
def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2, 3], [1, 2, 3, 4]) == 3
    assert common_prefix([], [1]) == 0
    assert common_prefix([5], [6]) == 0
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.randrange(3) for _ in range(rng.randrange(20))]
        b = a[: rng.randrange(len(a) + 1)] + [rng.randrange(3) for _ in range(rng.randrange(5))]
        expect = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                      min(len(a), len(b)))
        assert common_prefix(a, b) == expect


def test_radix_tree_matches_shares_and_forgets():
    tree = RadixTree()
    tree.insert("a", [1, 2, 3, 4, 5])
    tree.insert("b", [1, 2, 3, 9])  # splits the edge after 1 2 3
    assert tree.size == 6  # 1 2 3 shared, then 4 5 and 9
    assert tree.match([1, 2, 3, 4, 7]) == ("a", 4)
    assert tree.match([1, 2, 3, 9, 9]) == ("b", 4)
    holder, n = tree.match([1, 2, 8])
    assert n == 2 and holder in ("a", "b")
    assert tree.match([7]) == (None, 0)
    tree.insert("c", [1, 2])  # inside the shared edge
    assert tree.size == 6
    tree.remove("a")
    assert tree.size == 4 and tree.match([1, 2, 3, 4]) == ("b", 3)
    tree.remove("b")
    assert tree.size == 2 and tree.match([1, 2, 3]) == ("c", 2)
    tree.remove("c")
    assert tree.size == 0 and len(tree) == 0 and tree.root.children == {}


def test_radix_tree_size_is_the_distinct_prefix_count():
    rng = random.Random(1)
    tree = RadixTree()
    seqs: dict[int, list[int]] = {}
    for step in range(300):
        if seqs and rng.random() < 0.35:
            h = rng.choice(list(seqs))
            tree.remove(h)
            del seqs[h]
        else:
            base = rng.choice(list(seqs.values())) if seqs and rng.random() < 0.7 else []
            tail = [rng.randrange(4) for _ in range(rng.randrange(1, 8))]
            seq = base[: rng.randrange(len(base) + 1)] + tail
            tree.insert(step, seq)
            seqs[step] = seq
        distinct = {tuple(s[:i]) for s in seqs.values() for i in range(1, len(s) + 1)}
        assert tree.size == len(distinct)
        query = [rng.randrange(4) for _ in range(6)]
        best = max((common_prefix(s, query) for s in seqs.values()), default=0)
        holder, n = tree.match(query)
        assert n == best and (n == 0 or common_prefix(seqs[holder], query) >= n)


def test_radix_tree_lru_order():
    tree = RadixTree()
    for h in "abc":
        tree.insert(h, [ord(h)])
    tree.touch("a")
    assert tree.oldest() == "b"
    assert tree.oldest(exclude=["b"]) == "c"


# -- the policy, over a store that records what it is asked ------------------------------------------
class FakeStore:
    """Sequences as token lists (what a KV store would hold), copy/drop/save/restore on them."""

    def __init__(self) -> None:
        self.seqs: dict[int, list[int]] = {}
        self.refuse = False

    def copy(self, src, dst, start, end):
        have = self.seqs.setdefault(dst, [])
        assert len(have) == start, "copies extend a sequence in order"
        have.extend(self.seqs[src][start:end])

    def drop(self, seq):
        self.seqs.pop(seq, None)

    def save(self, seq):
        return bytes(self.seqs[seq])

    def restore(self, data, seq):
        if self.refuse:
            return False
        self.seqs[seq] = list(data)
        return True


def test_policy_parks_attaches_evicts_and_spills():
    store = FakeStore()
    cache = PrefixCache(store, park_ids=[10, 11, 12], budget_tokens=12, host_bytes=100)
    store.seqs[0] = [1, 2, 3, 4, 5, 6]
    cache.park(0, store.seqs[0])
    assert cache.parked_tokens == 6
    # a prompt sharing 4 tokens: copied into the (empty) slot 1
    n, held = cache.attach(1, [1, 2, 3, 4, 9, 9])
    assert n == 4 and held == [1, 2, 3, 4] and store.seqs[1] == [1, 2, 3, 4]
    # the whole prompt cached: the last token is still left to read
    n, _ = cache.attach(2, [1, 2, 3, 4, 5, 6])
    assert n == 5
    # a longer sequence extending a parked one replaces it (shared cells, one entry)
    store.seqs[3] = [1, 2, 3, 4, 5, 6, 7, 8]
    cache.park(3, store.seqs[3])
    assert len(cache.parked) == 1 and cache.parked_tokens == 8
    # another branch: 1 2 3 shared, 6 new tokens: 14 > 12, the least recently used goes (to host RAM)
    store.seqs[4] = [1, 2, 3, 20, 21, 22, 23, 24, 25]
    cache.park(4, store.seqs[4])
    assert cache.stats.evictions == 1 and cache.stats.spills == 1 and cache.parked_tokens == 9
    # a prompt only host RAM holds: restored into the slot, longer than the shared part
    n, held = cache.attach(5, [1, 2, 3, 4, 5, 6, 7, 0])
    assert n == 7 and held == [1, 2, 3, 4, 5, 6, 7, 8] and cache.stats.restores == 1
    # live sequences count too
    store.seqs[7] = [40, 41, 42, 50]
    n, _ = cache.attach(6, [40, 41, 42, 43], live=[(7, [40, 41, 42, 50])])
    assert n == 3 and store.seqs[6] == [40, 41, 42]
    # a refused restore falls back to reading the prompt
    store.refuse = True
    cache.clear()
    store.seqs[8] = [60, 61, 62, 63]
    cache.park(8, store.seqs[8])
    cache._evict_one()
    n, held = cache.attach(9, [60, 61, 62, 63, 64])
    assert (n, held) == (0, []) and 9 not in store.seqs


def test_policy_without_budget_keeps_nothing():
    store = FakeStore()
    cache = PrefixCache(store, park_ids=[10], budget_tokens=0)
    store.seqs[0] = [1, 2, 3]
    cache.park(0, [1, 2, 3])
    assert cache.parked_tokens == 0 and cache.attach(1, [1, 2, 3, 4]) == (0, [])


def test_policy_out_of_park_ids_evicts_the_oldest():
    store = FakeStore()
    cache = PrefixCache(store, park_ids=[10, 11], budget_tokens=100)
    for i in range(4):
        store.seqs[i] = [100 + i, 1, 2]
        cache.park(i, store.seqs[i])
    assert len(cache.parked) == 2 and cache.stats.evictions == 2
    assert cache.attach(20, [103, 1, 2, 3])[0] == 3 and cache.attach(21, [100, 1, 2, 3])[0] == 0


# -- transformers models ------------------------------------------------------------------------------
def test_hf_reuse_gives_fresh_logits_and_reads_only_new_tokens():
    model = sd.wrap(build("llama"))
    fresh = sd.wrap(build("llama"))
    prompt = list(range(5, 45))
    assert start_sequence(model, prompt, reuse=True) == prompt and model.length == 0
    model.forward(torch.tensor([prompt]))
    longer = prompt + [7, 8, 9, 10]
    start_sequence(model, longer, reuse=True)
    assert model.length == len(prompt)
    got = model.forward(torch.tensor([longer[len(prompt):]]))[0]
    start_sequence(fresh, longer)
    want = fresh.forward(torch.tensor([longer]))[0, len(prompt):]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # diverging mid-way keeps the common part; reuse=False empties the cache
    start_sequence(model, prompt[:20] + [1, 2, 3], reuse=True)
    assert model.length == 20
    start_sequence(model, prompt, reuse=False)
    assert model.length == 0


def test_hf_encoder_decoder_never_reuses():
    model = sd.wrap(build("t5"))
    start_sequence(model, [5, 6, 7, 8], reuse=True)
    model.forward(torch.tensor([[0, 9]]))
    assert start_sequence(model, [5, 6, 7, 8, 9], reuse=True) == [0] and model.length == 0


@pytest.mark.parametrize("drafter", ["model", "ngram+model"])
def test_hf_chat_loop_greedy_equals_cache_off(drafter):
    target, draft = build("llama"), build("llama", seed=1)

    def make(d):
        m = ModelDrafter(sd.wrap(d))
        return m if drafter == "model" else NgramThenModel(NgramDrafter(), m)

    on = SpeculativeGenerator(sd.wrap(target), make(draft))
    off = SpeculativeGenerator(sd.wrap(target), make(draft))
    history: list[int] = list(range(10, 30))
    for turn in range(4):
        a = on.generate(history, max_new_tokens=12, gamma=3)
        b = off.generate(history, max_new_tokens=12, gamma=3, cache_prompt=False)
        assert a.token_ids == b.token_ids
        if turn:
            assert a.stats.cached_tokens >= len(history) - 5  # the previous turn's prompt and answer
            assert a.stats.target_tokens < b.stats.target_tokens
        assert b.stats.cached_tokens == 0
        history = history + a.token_ids + [40 + turn, 41, 42]
