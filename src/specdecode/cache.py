"""The prefix cache: which token prefixes a backend already holds as KV, and the policy that keeps them.

A `RadixTree` (a token-id prefix tree with compressed edges, as SGLang's RadixAttention) maps the token
sequences of named holders to their shared prefixes. `PrefixCache` uses two of them: one over sequences
parked in the backend's KV memory (cells shared with live requests, nothing copied), one over sequences
spilled to host RAM. A new request gets the longest prefix any live, parked or spilled sequence holds;
finished requests are parked; parked sequences beyond a token budget are evicted least recently used
first, to host RAM when a host budget is set. The backend operations (copy a prefix from one sequence to
another, drop, save, restore) come from a `KVStore`; the llama.cpp one is `backends/llamacpp_cache.py`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger("specdecode.cache")


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    if n and a[0] != b[0]:
        return 0
    lo, hi = 0, n  # slices compare in C: bisect on the first mismatch
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class _Node:
    __slots__ = ("edge", "children", "holders")

    def __init__(self, edge: list[int]) -> None:
        self.edge = edge  # the tokens from the parent to this node
        self.children: dict[int, _Node] = {}  # by the first token of the child's edge
        self.holders: set[Hashable] = set()  # holders whose sequence passes through this node


class RadixTree:
    """Token sequences of named holders, sharing their common prefixes.

    `size` is the number of distinct (prefix-position) tokens held: what the holders occupy once shared
    prefixes are stored once. `match` finds the longest prefix of a query any holder has.
    """

    def __init__(self) -> None:
        self.root = _Node([])
        self.size = 0
        self._paths: dict[Hashable, list[int]] = {}
        self._used: dict[Hashable, int] = {}
        self._clock = itertools.count()

    def __len__(self) -> int:
        return len(self._paths)

    def __contains__(self, holder: Hashable) -> bool:
        return holder in self._paths

    def holders(self) -> list[Hashable]:
        return list(self._paths)

    def tokens(self, holder: Hashable) -> list[int]:
        return self._paths[holder]

    def insert(self, holder: Hashable, tokens: Sequence[int]) -> None:
        """Add (or replace) `holder`'s sequence."""
        if holder in self._paths:
            self.remove(holder)
        tokens = list(tokens)
        self._paths[holder] = tokens
        self.touch(holder)
        node, i = self.root, 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                child = _Node(tokens[i:])
                node.children[tokens[i]] = child
                self.size += len(child.edge)
                child.holders.add(holder)
                return
            c = common_prefix(child.edge, tokens[i : i + len(child.edge)])
            if c < len(child.edge):  # split the edge: a middle node for the shared part
                mid = _Node(child.edge[:c])
                mid.holders = set(child.holders)
                child.edge = child.edge[c:]
                mid.children[child.edge[0]] = child
                node.children[tokens[i]] = mid
                child = mid
            child.holders.add(holder)
            node, i = child, i + c

    def remove(self, holder: Hashable) -> list[int]:
        """Forget `holder`; returns its tokens."""
        tokens = self._paths.pop(holder)
        self._used.pop(holder, None)
        node, i = self.root, 0
        while i < len(tokens):
            child = node.children[tokens[i]]
            child.holders.discard(holder)
            if not child.holders:  # nobody passes here, nor below
                del node.children[tokens[i]]
                self.size -= _subtree_size(child)
                break
            node, i = child, i + len(child.edge)
        return tokens

    def match(self, tokens: Sequence[int]) -> tuple[Hashable | None, int]:
        """(a holder, n): the longest prefix of `tokens` held, n tokens long, by that holder (the most
        recently used of those holding it); (None, 0) when nothing matches."""
        node, i, best = self.root, 0, (None, 0)
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                break
            c = common_prefix(child.edge, tokens[i : i + len(child.edge)])
            holder = max(child.holders, key=lambda h: self._used.get(h, -1))
            best = (holder, i + c)
            if c < len(child.edge):
                break
            node, i = child, i + c
        return best

    def touch(self, holder: Hashable) -> None:
        """Mark `holder` as just used (least recently used holders are evicted first)."""
        self._used[holder] = next(self._clock)

    def oldest(self, exclude: Iterable[Hashable] = ()) -> Hashable | None:
        """The least recently used holder (None when there is none)."""
        skip = set(exclude)
        candidates = [h for h in self._paths if h not in skip]
        return min(candidates, key=lambda h: self._used.get(h, -1)) if candidates else None


def _subtree_size(node: _Node) -> int:
    return len(node.edge) + sum(_subtree_size(c) for c in node.children.values())


class KVStore(Protocol):
    """What a backend does for the cache: sequences are ids in one KV memory whose cells can be shared."""

    def copy(self, src: int, dst: int, start: int, end: int) -> None:
        """Make sequence `dst` also hold `src`'s positions [start, end) (cells shared, not recomputed)."""

    def drop(self, seq: int) -> None:
        """Remove every position of sequence `seq`."""

    def save(self, seq: int) -> bytes:
        """The KV state of sequence `seq`, to restore later (spill to host RAM)."""

    def restore(self, data: bytes, seq: int) -> bool:
        """Load saved state into sequence `seq` (empty); False when it could not be loaded."""


@dataclass
class CacheStats:
    """Running counts of the prefix cache (what the server exports as metrics)."""

    lookups: int = 0
    hits: int = 0
    tokens_served: int = 0  # prompt tokens taken from the cache instead of being read
    evictions: int = 0  # parked sequences dropped from KV memory (spilled or not)
    spills: int = 0  # evictions saved to host RAM
    restores: int = 0  # prompts served from host RAM
    by_source: dict[str, int] = field(default_factory=dict)  # tokens served from "live", "kv", "host"


@dataclass
class _Spilled:
    data: bytes


class PrefixCache:
    """Keeps finished sequences' KV for later requests, within `budget_tokens` parked positions (and
    `host_bytes` of host RAM for evicted ones; 0: evicted sequences are dropped).

    `park_ids`: the backend sequence ids reserved for parked sequences (beyond the live slots').
    `min_reuse`: a prefix shorter than this many tokens is read again rather than copied.
    """

    def __init__(self, store: KVStore, park_ids: Sequence[int], budget_tokens: int, host_bytes: int = 0,
                 min_reuse: int = 1, name: str = "") -> None:
        if budget_tokens < 0 or host_bytes < 0:
            raise ValueError("prefix cache budgets must be >= 0")
        self.store, self.budget_tokens, self.host_bytes = store, budget_tokens, host_bytes
        self.min_reuse, self.name = max(1, min_reuse), name
        self.parked = RadixTree()  # holders: park sequence ids
        self.host = RadixTree()  # holders: keys of self._spilled
        self._free_ids = list(park_ids)
        self._spilled: dict[int, _Spilled] = {}
        self._keys = itertools.count()
        self.host_used = 0
        self.stats = CacheStats()

    @property
    def cached_tokens(self) -> int:
        """Distinct prefix positions held for later requests, in KV memory and in host memory."""
        return self.parked.size + self.host.size

    @property
    def parked_tokens(self) -> int:
        """Distinct positions held by parked sequences (shared prefixes counted once)."""
        return self.parked.size

    # -- a request starts --------------------------------------------------------------------------
    def attach(self, seq: int, prompt: Sequence[int], live: Iterable[tuple[int, Sequence[int]]] = ()
               ) -> tuple[int, list[int]]:
        """Give the empty sequence `seq` the longest cached prefix of `prompt`, leaving at least the last
        prompt token to be read. `live`: (id, tokens in KV) of the sequences running now. Returns (n, the
        tokens `seq` now holds, n long, or longer after a restore from host RAM: the caller truncates)."""
        self.stats.lookups += 1
        usable = len(prompt) - 1
        if usable < self.min_reuse:
            return 0, []
        best: tuple[str, int | None, int] = ("", None, 0)
        for sid, tokens in live:
            n = min(common_prefix(tokens, prompt), usable)
            if n > best[2]:
                best = ("live", sid, n)
        holder, n = self.parked.match(prompt)
        n = min(n, usable)
        if n > best[2]:
            best = ("kv", holder, n)  # type: ignore[assignment]
        key, n = self.host.match(prompt)
        n = min(n, usable)
        if n > best[2] and n - best[2] >= self.min_reuse:
            best = ("host", key, n)  # type: ignore[assignment]
        source, holder, n = best
        if holder is None or n < self.min_reuse:
            return 0, []
        held = list(prompt[:n])
        if source == "host":
            assert isinstance(holder, int)
            tokens = self.host.tokens(holder)
            if not self.store.restore(self._spilled[holder].data, seq):
                log.warning("prefix cache%s: a spilled sequence could not be restored; reading the prompt",
                            f" ({self.name})" if self.name else "")
                self._forget_host(holder)
                self.store.drop(seq)
                return 0, []
            self.host.touch(holder)
            self.stats.restores += 1
            held = list(tokens)
        else:
            assert isinstance(holder, int)
            self.store.copy(holder, seq, 0, n)
            if source == "kv":
                self.parked.touch(holder)
        self.stats.hits += 1
        self.stats.tokens_served += n
        self.stats.by_source[source] = self.stats.by_source.get(source, 0) + n
        return n, held

    # -- a request ends ----------------------------------------------------------------------------
    def park(self, seq: int, tokens: Sequence[int]) -> None:
        """Keep what sequence `seq` holds (`tokens`, its KV positions) for later requests; the caller then
        empties `seq`. Parked sequences that are a prefix of it are merged into it."""
        tokens = list(tokens)
        if len(tokens) < self.min_reuse:
            return
        if self.budget_tokens == 0:  # nothing parked in KV memory: straight to host memory, if any
            if self.host_bytes > 0:
                self._spill(seq, tokens)
            return
        if len(tokens) > self.budget_tokens:
            tokens = tokens[: self.budget_tokens]
        if not self._free_ids:
            self._evict_one()
        if not self._free_ids:
            return
        pid = self._free_ids.pop()
        holder, n = self.parked.match(tokens)
        if holder is not None and n > 0:
            # share the prefix's cells with the parked sequence that holds it, so the tree's count of
            # distinct tokens is what the parked sequences occupy (two requests that read the same
            # system prompt at once hold it twice until here)
            assert isinstance(holder, int)
            self.store.copy(holder, pid, 0, n)
            if n < len(tokens):
                self.store.copy(seq, pid, n, len(tokens))
            if n == len(self.parked.tokens(holder)):  # the older one is a prefix of this: redundant
                self._drop_parked(holder)
        else:
            self.store.copy(seq, pid, 0, len(tokens))
        self.parked.insert(pid, tokens)
        self._enforce()

    def _drop_parked(self, pid: int) -> None:
        self.parked.remove(pid)
        self.store.drop(pid)
        self._free_ids.append(pid)

    def _evict_one(self) -> bool:
        pid = self.parked.oldest()
        if pid is None:
            return False
        assert isinstance(pid, int)
        if self.host_bytes > 0:
            self._spill(pid, self.parked.tokens(pid))
        self._drop_parked(pid)
        self.stats.evictions += 1
        return True

    def _enforce(self) -> None:
        while self.parked.size > self.budget_tokens and self._evict_one():
            pass

    def evict_all(self) -> int:
        """Drop every parked sequence (spilling them when a host budget is set); how many were dropped."""
        n = 0
        while self._evict_one():
            n += 1
        return n

    # -- host RAM ------------------------------------------------------------------------------------
    def _spill(self, seq: int, tokens: list[int]) -> None:
        """Save sequence `seq` (holding `tokens`) to host memory."""
        data = self.store.save(seq)
        if not data or len(data) > self.host_bytes:
            return
        key = next(self._keys)
        self._spilled[key] = _Spilled(data)
        self.host_used += len(data)
        self.host.insert(key, tokens)
        for older in [h for h in self.host.holders() if h != key]:
            older_tokens = self.host.tokens(older)
            if common_prefix(older_tokens, tokens) == len(older_tokens):
                self._forget_host(older)  # a prefix of the new one: redundant
        while self.host_used > self.host_bytes:
            oldest = self.host.oldest(exclude=[key])
            if oldest is None:
                break
            self._forget_host(oldest)  # type: ignore[arg-type]
        self.stats.spills += 1

    def _forget_host(self, key: int) -> None:
        self.host.remove(key)
        self.host_used -= len(self._spilled.pop(key).data)

    def clear(self) -> None:
        """Forget everything (parked sequences are dropped from KV memory)."""
        for pid in self.parked.holders():
            self._drop_parked(pid)  # type: ignore[arg-type]
        for key in self.host.holders():
            self._forget_host(key)  # type: ignore[arg-type]
