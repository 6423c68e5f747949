"""What `specdecode serve` (one process, or each replica of a cluster) was started with."""

from __future__ import annotations

from .limits import DEFAULT_MAX_BODY_MB

# the prefix cache's defaults (BENCHMARKS.md, prefix cache): finished sequences go to host memory, not to
# the KV buffer, where every parked position slows every decode step (2048 parked: 1.09x a step's time)
DEFAULT_CACHE_TOKENS = 0
DEFAULT_CACHE_RAM_MIB = 4096


class ServerSettings:
    """What `specdecode serve` was started with."""

    def __init__(
        self,
        model_name: str,
        gamma: int | str = "auto",
        gamma_max: int = 8,
        api_key: str | None = None,
        max_waiting: int = 64,
        default_max_tokens: int | None = None,
        lookup_gamma_max: int = 32,
        parallel: int = 1,
        ctx_size: int | None = None,
        prefill_chunk: int = 256,
        kv_unified: bool = True,
        cors_origins: list[str] | None = None,
        prefix_cache: bool = True,
        cache_tokens: int = DEFAULT_CACHE_TOKENS,
        cache_ram_mib: int = DEFAULT_CACHE_RAM_MIB,
        max_body_mb: float = DEFAULT_MAX_BODY_MB,
    ) -> None:
        self.model_name, self.gamma, self.gamma_max = model_name, gamma, gamma_max
        # batching (llama.cpp): requests at once, KV positions they share (None: the model's trained
        # context), prompt tokens fed per step
        self.parallel, self.ctx_size, self.prefill_chunk = parallel, ctx_size, prefill_chunk
        self.kv_unified = kv_unified
        # the prefix cache: on or off, KV positions kept for finished requests, host RAM for evicted ones
        self.prefix_cache, self.cache_tokens, self.cache_ram_mib = prefix_cache, cache_tokens, cache_ram_mib
        self.lookup_gamma_max = lookup_gamma_max
        # default_max_tokens: a chat completion's limit when the request sets none (None: the context's end)
        self.api_key, self.max_waiting, self.default_max_tokens = api_key, max_waiting, default_max_tokens
        self.cors_origins = list(cors_origins or [])  # browser origins allowed besides loopback and our own
        self.max_body_mb = max_body_mb  # larger request bodies get a 413 before they are read
