"""Deterministic mode: llama.cpp kernels chosen so that a token's logits do not depend on which other rows
share its call (other requests in a batched step, the rest of a draft block, a prompt chunk).

By default llama.cpp picks kernels by a call's shape: K-quant matrix products switch to a tiled kernel at 8
rows, repacked weights run a 4-row kernel, and flash attention splits a lone query's keys across threads.
Each sums in another order, so the same token reads slightly different logits alone and in a batch, and
greedy texts part where the top two logits nearly tie. In deterministic mode every product runs the
one-row dot kernel (no repacking, `GGML_CPU_TILED_MM=0`) and attention runs flash attention over a Q8_0
KV cache, whose per-query kernel sums keys in cache order whatever the call's shape. Then greedy texts are
the same alone, batched, drafted or plain. It costs speed; BENCHMARKS.md has the measured price.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

TILED_ENV = "GGML_CPU_TILED_MM"  # read once per process, at llama.cpp's first K-quant matrix product
GGML_TYPE_Q8_0 = 8
FLASH_ATTN_DISABLED, FLASH_ATTN_ENABLED = 0, 1  # llama.cpp's llama_flash_attn_type (also used by llamacpp.py)
CHECK_TOKENS = 12  # the self-check's block: above the tiled kernel's 8-row threshold


def prepare_process() -> None:
    """Ask llama.cpp for its one-row matrix kernel in this process (effective only before its first K-quant
    matrix product; `check` tells whether it took)."""
    os.environ[TILED_ENV] = "0"


def model_params(params: Any) -> None:
    """Load weights as stored: repacked weights run a kernel whose sums depend on the row count."""
    params.use_extra_bufts = False


def context_params(params: Any) -> None:
    """Flash attention over a Q8_0 KV cache: its per-query kernel does not depend on the call's shape."""
    params.flash_attn_type = FLASH_ATTN_ENABLED
    params.type_k = params.type_v = GGML_TYPE_Q8_0


def check(lib: Any, model: Any, vocab: int, path: str, n_threads: int) -> None:
    """Raise a ValueError unless a block of tokens read in one call gives bit-identical logits to the same
    tokens read one at a time (the property deterministic mode promises)."""
    from .llamacpp import TokenBatch, _recent_log

    params = lib.llama_context_default_params()
    params.n_ctx = 256
    params.n_batch = params.n_ubatch = 64
    params.n_seq_max = 1
    params.n_threads = params.n_threads_batch = n_threads
    params.no_perf = True
    context_params(params)
    ctx = lib.llama_init_from_model(model, params)
    if not ctx:
        raise ValueError(
            f"deterministic mode could not create a context for {path} (flash attention over a Q8_0 KV "
            f"cache, which needs attention heads whose size is a multiple of 32); llama.cpp says: "
            f"{_recent_log() or 'nothing'}. Run without --deterministic")
    batch = TokenBatch(lib, 64, vocab)
    try:
        ids = [(1 + 7919 * i) % vocab for i in range(CHECK_TOKENS)]

        def read(rows: list[int], start: int) -> np.ndarray:
            n = len(rows)
            batch.token[:n] = rows
            batch.pos[:n] = np.arange(start, start + n)
            batch.logits[:n] = True
            if batch.decode(ctx, n) != 0:
                raise ValueError(f"deterministic mode's self-check could not decode on {path}; llama.cpp "
                                 f"says: {_recent_log() or 'nothing'}")
            return batch.outputs(ctx, n).numpy().copy()

        block = read(ids, 0)
        lib.llama_memory_clear(lib.llama_get_memory(ctx), True)
        single = np.concatenate([read([t], i) for i, t in enumerate(ids)])
    finally:
        batch.free()
        lib.llama_free(ctx)
    if not np.array_equal(block, single):
        worst = float(np.abs(block - single).max())
        raise ValueError(
            f"deterministic mode is not available for {path}: a block read in one call differs from the "
            f"same tokens read one at a time (max |logit difference| {worst:.3g}). Either this llama.cpp "
            f"build has no batch-invariant kernel for the model's weight type (K-quants such as Q4_K_M and "
            f"Q6_K, and Q4_1, have one; f32 weights do not), or {TILED_ENV}=0 came after llama.cpp's first "
            f"matrix product in this process: start a new process with {TILED_ENV}=0 in its environment")
