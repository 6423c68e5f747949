"""llama.cpp's side of the prefix cache: sequences of one context share KV cells (`llama_memory_seq_cp`),
and a sequence's state moves to and from host memory (`llama_state_seq_get_data` / `_set_data`)."""

from __future__ import annotations

import ctypes
import logging
from typing import Any

log = logging.getLogger("specdecode.cache")


def save_sequence(lib: Any, ctx: Any, seq: int) -> bytes:
    """The KV state of sequence `seq` of context `ctx` as bytes (empty when llama.cpp gives none)."""
    size = int(lib.llama_state_seq_get_size(ctx, seq))
    if size <= 0:
        return b""
    buf = (ctypes.c_uint8 * size)()
    written = int(lib.llama_state_seq_get_data(ctx, buf, size, seq))
    return bytes(memoryview(buf)[:written])


def restore_sequence(lib: Any, ctx: Any, data: bytes, seq: int) -> bool:
    """Load state saved by `save_sequence` into sequence `seq` (empty); False when llama.cpp refuses it
    (a state of another model or context layout, or no room left)."""
    if not data:
        return False
    buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
    return int(lib.llama_state_seq_set_data(ctx, buf, len(data), seq)) > 0


def reuse_refusal(lib: Any, model: Any) -> str | None:
    """Why KV prefixes of `model` cannot be reused (None when they can): recurrent memory cannot drop a
    sequence's tail, and a sliding-window cache may have dropped the positions a prefix needs."""
    if lib.llama_model_is_recurrent(model) or getattr(lib, "llama_model_is_hybrid", lambda m: False)(model):
        return "the model has recurrent memory, whose positions cannot be removed or shared"
    return None


class LlamaKVStore:
    """`cache.KVStore` over the sequences of one llama.cpp context with a unified KV buffer."""

    def __init__(self, lib: Any, ctx: Any, mem: Any) -> None:
        self.lib, self.ctx, self.mem = lib, ctx, mem

    def copy(self, src: int, dst: int, start: int, end: int) -> None:
        if end > start:
            self.lib.llama_memory_seq_cp(self.mem, src, dst, start, end)

    def drop(self, seq: int) -> None:
        self.lib.llama_memory_seq_rm(self.mem, seq, -1, -1)

    def save(self, seq: int) -> bytes:
        return save_sequence(self.lib, self.ctx, seq)

    def restore(self, data: bytes, seq: int) -> bool:
        ok = restore_sequence(self.lib, self.ctx, data, seq)
        if not ok:
            self.drop(seq)
        return ok
