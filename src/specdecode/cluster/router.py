"""Prefix-affinity routing for the engine replicas: a small Ray Serve `RequestRouter`.

A request whose prompt shares at least `min_match_chars` characters of prefix with a prompt sent
earlier goes to the replica(s) that were sent the longest such prefix, as long as that replica's queue
is at most `max_imbalance` requests longer than the shortest; otherwise, or when it is full, the request
goes where Ray Serve's default power of two choices sends it, so load still spreads. The index lives in
the router, in the ingress process: no extra actor and no blocking call per request.
"""

from __future__ import annotations

import random
from typing import Any

from ray.serve._private.request_router import PowerOfTwoChoicesRequestRouter
from ray.serve.request_router import (
    LocalityMixin,
    MultiplexMixin,
    PendingRequest,
    ReplicaID,
    ReplicaResult,
    RequestRouter,
    RunningReplica,
)

from .prefix import PrefixIndex


def _key(pending: PendingRequest | None) -> str:
    for arg in (pending.args if pending is not None and pending.args else ()):
        key = getattr(arg, "key", None)
        if isinstance(key, str):
            return key
    return ""


class PrefixAffinityRouter(LocalityMixin, MultiplexMixin, RequestRouter):
    """Sends requests to the replica holding their prompt's longest prefix while load allows; otherwise
    power of two choices."""

    def initialize_state(self, block_chars: int = 128, min_match_chars: int = 256, max_imbalance: int = 2,
                         max_blocks: int = 200_000, **_: Any) -> None:
        self.index = PrefixIndex(block_chars, max_blocks)
        self.min_match_chars, self.max_imbalance = min_match_chars, max_imbalance

    def _queue(self, replica: RunningReplica) -> int:
        known = self._replica_queue_len_cache.get(replica.replica_id)
        return 0 if known is None else int(known)

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        fallback = await PowerOfTwoChoicesRequestRouter.choose_replicas(
            self, candidate_replicas=candidate_replicas, pending_request=pending_request)
        key = _key(pending_request)
        if not key or not fallback:
            return fallback
        by_id = {r.replica_id.to_full_id_str(): r for r in candidate_replicas}
        holders, matched = self.index.match(key, by_id)
        if matched < self.min_match_chars:
            return fallback
        shortest = min(self._queue(r) for r in candidate_replicas)
        near = [by_id[i] for i in holders if self._queue(by_id[i]) - shortest <= self.max_imbalance]
        if not near:
            return fallback
        others = [r for r in candidate_replicas if r not in near]
        return [near, random.sample(others, min(2, len(others)))] if others else [near]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID,
                          result: ReplicaResult) -> None:
        key = _key(pending_request)
        if key:
            self.index.record(key, replica_id.to_full_id_str())

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        self.index.forget(r.replica_id.to_full_id_str() for r in replicas)
