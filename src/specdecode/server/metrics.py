"""The server's Prometheus metrics (GET /metrics), one registry per app."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, float("inf"))


class Metrics:
    """Requests, tokens, speculation and timing counters, queue gauges and latency histograms."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "specdecode_requests",
            "HTTP requests served, by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.cancelled = Counter(
            "specdecode_generations_cancelled",
            "generations stopped early because the client went away",
            registry=r,
        )
        self._totals: dict[str, int] = {}  # running sums behind the two ratio gauges
        self.prompt_tokens = Counter("specdecode_prompt_tokens", "prompt tokens of finished requests",
                                     registry=r)
        self.prompt_read = Counter("specdecode_prompt_tokens_read", "prompt tokens read by the target",
                                   registry=r)
        self.prompt_cached = Counter("specdecode_prompt_tokens_cached",
                                     "prompt tokens served from the prefix cache instead of being read",
                                     registry=r)
        self.cache_tokens = Gauge("specdecode_prefix_cache_tokens",
                                  "prompt positions the prefix cache holds for later requests, in KV and host"
                                  " memory (target model)",
                                  registry=r)
        self.cache_host_bytes = Gauge("specdecode_prefix_cache_host_bytes",
                                      "bytes of host memory holding evicted prefixes (--cache-ram)",
                                      registry=r)
        self.cache_evictions = Counter("specdecode_prefix_cache_evictions",
                                       "cached prefixes evicted from KV memory (target model)", registry=r)
        self._evicted = 0
        self.generated = Counter("specdecode_generated_tokens", "tokens generated", registry=r)
        self.target_calls = Counter(
            "specdecode_target_calls", "target model calls while decoding", registry=r
        )
        self.drafted = Counter("specdecode_draft_tokens", "draft tokens proposed and verified", registry=r)
        self.accepted = Counter("specdecode_draft_tokens_accepted", "draft tokens accepted", registry=r)
        self.target_s = Counter(
            "specdecode_target_seconds", "seconds in target calls while decoding", registry=r
        )
        self.draft_s = Counter("specdecode_draft_seconds", "seconds in draft calls", registry=r)
        self.prefill_s = Counter("specdecode_prefill_seconds", "seconds feeding prompts", registry=r)
        self.acceptance = Gauge(
            "specdecode_acceptance_rate",
            "accepted / proposed draft tokens since the server started",
            registry=r,
        )
        self.tokens_per_call = Gauge(
            "specdecode_mean_tokens_per_target_call",
            "generated tokens / target calls since the server started",
            registry=r,
        )
        self.queue_length = Gauge("specdecode_queue_length", "requests waiting for the model", registry=r)
        self.running = Gauge("specdecode_requests_running", "generations running", registry=r)
        self.slots_in_use = Gauge("specdecode_slots_in_use", "sequence slots holding a request (batching)",
                                  registry=r)
        self.batch_size = Histogram("specdecode_batch_requests", "requests in one batched target call",
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, float("inf")), registry=r)
        self.batch_rows = Histogram("specdecode_batch_rows", "tokens (rows) in one batched target call",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, float("inf")),
                                    registry=r)
        self.latency = Histogram(
            "specdecode_request_latency_seconds", "arrival to last token", buckets=LATENCY_BUCKETS, registry=r
        )
        self.first_token = Histogram(
            "specdecode_time_to_first_token_seconds",
            "arrival to first token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "specdecode_queue_wait_seconds",
            "arrival to the start of generation",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def record_generation(self, stats: Any) -> None:
        """Add one finished (or cancelled) generation's stats."""
        self.prompt_tokens.inc(stats.prompt_tokens)
        self.prompt_cached.inc(stats.cached_tokens)
        self.prompt_read.inc(max(stats.prompt_tokens - stats.cached_tokens, 0))
        self.generated.inc(stats.new_tokens)
        self.target_calls.inc(stats.target_calls)
        self.drafted.inc(stats.drafted)
        self.accepted.inc(stats.accepted)
        self.target_s.inc(stats.target_s)
        self.draft_s.inc(stats.draft_s)
        self.prefill_s.inc(stats.prefill_s)
        totals = self._totals
        for key, value in (("drafted", stats.drafted), ("accepted", stats.accepted),
                           ("calls", stats.target_calls), ("generated", stats.new_tokens)):
            totals[key] = totals.get(key, 0) + value
        drafted, calls = totals["drafted"], totals["calls"]
        self.acceptance.set(totals["accepted"] / drafted if drafted else 0.0)
        self.tokens_per_call.set(totals["generated"] / calls if calls else 0.0)

    def record_cache(self, cache: Any = None, held: int | None = None) -> None:
        """The prefix cache's state: a `PrefixCache` (batching), or `held`, the positions the single
        sequence of a one-at-a-time server keeps for the next request."""
        if cache is not None:
            self.cache_tokens.set(cache.cached_tokens)
            self.cache_host_bytes.set(cache.host_used)
            self.cache_evictions.inc(cache.stats.evictions - self._evicted)
            self._evicted = cache.stats.evictions
        elif held is not None:
            self.cache_tokens.set(held)

    def render(self) -> bytes:
        return generate_latest(self.registry)
