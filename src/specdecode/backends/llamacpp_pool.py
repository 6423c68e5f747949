"""Several sequences in one llama.cpp context, for a server that batches requests: each slot is a
`CausalLM` of its own (a sequence id in llama.cpp's KV cache, rolled back on its own), and one `decode`
call feeds rows of many slots through the model together."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..cache import PrefixCache
from . import llamacpp_invariant as invariant
from .llamacpp import LlamaCppModel, TokenBatch, _log_once, _recent_log, attention_params, check_token_ids
from .llamacpp_cache import LlamaKVStore

SEQ_CTX_STEP = 256  # llama.cpp pads a sequence's context to a multiple of this
PARKED_SEQUENCES = 32  # sequence ids kept for parked prefixes (beyond one per slot)
MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ


class SequencePool:
    """`n_seq` independent sequences on the weights of `model` (shared, not copied), in `n_ctx` KV positions
    fixed here, up front.

    kv_unified: one KV buffer of `n_ctx` positions shared by all sequences (llama.cpp's --kv-unified), the
    default: each sequence may grow to `n_ctx` (at most the model's trained context) while the others
    leave room (`room`). Otherwise each sequence has its own n_ctx / n_seq positions. With a buffer per
    sequence, llama.cpp splits a batch whose sequences bring different numbers of rows (a draft block
    here, a plain step there) into several passes: measured on 2 cores, 11 plain rows and one 5-token
    block took 360 ms that way against 265 ms unified (16 plain rows: 255 against 267 ms).

    The prefix cache (on when either budget is > 0): a new request copies the longest prefix of its
    prompt that any running sequence holds (shared cells, nothing recomputed), or that a finished one
    left, and reads only the rest. cache_tokens: KV positions kept, beyond the `n_ctx` of the live
    sequences, for finished sequences (parked cells cost every decode step: attention spans them);
    cache_ram: bytes of host memory for finished sequences (saved as they finish when cache_tokens is 0,
    else when evicted from KV memory), restored into the slot of a request that needs them. `room`
    counts a shared cell once per sequence holding it (a bound that errs safe).
    """

    def __init__(self, model: LlamaCppModel, n_seq: int, n_ctx: int = 16384, n_batch: int = 512,
                 kv_unified: bool = True, cache_tokens: int = 0, cache_ram: int = 0) -> None:
        if n_seq < 1:
            raise ValueError(f"the number of parallel sequences must be >= 1, got {n_seq}")
        if model.deterministic and kv_unified:
            # in a shared buffer a sequence's cells can land out of order in holes left by the others, and
            # attention sums them in buffer order: one buffer per sequence keeps each text its own
            _log_once(f"{model.path}: deterministic mode: one KV buffer per request (no prefix cache "
                      "across requests)")
            kv_unified = False
        per_seq = n_ctx if kv_unified else n_ctx // n_seq
        if per_seq < 16:
            raise ValueError(f"the context per sequence must be at least 16 positions, got {per_seq}")
        limit = model.max_length or per_seq
        n_ctx_seq = min(-(-per_seq // SEQ_CTX_STEP) * SEQ_CTX_STEP, limit)
        rounded = -(-n_ctx // SEQ_CTX_STEP) * SEQ_CTX_STEP
        n_ctx = max(n_ctx_seq, rounded) if kv_unified else n_ctx_seq * n_seq
        lib = self._lib = model._lib
        self.model = model
        self._weights = model._weights  # the weights live as long as any pool or model on them
        self.n_seq, self.n_ctx_seq, self.n_batch, self.kv_unified = n_seq, n_ctx_seq, n_batch, kv_unified
        self.n_ctx = n_ctx  # KV positions in all
        self.vocab_size = model.vocab_size
        why = ("the KV memory is not unified (--no-kv-unified): sequences cannot share cells"
               if not kv_unified else model.no_reuse)
        wanted = cache_tokens > 0 or cache_ram > 0
        if wanted and why:
            _log_once(f"{model.path}: prefix cache off: {why}")
        cache_tokens, cache_ram = (max(0, int(cache_tokens)), max(0, int(cache_ram))) if not why else (0, 0)
        n_park = max(0, min(PARKED_SEQUENCES, MAX_SEQUENCES - n_seq)) if cache_tokens else 0
        cache_tokens = cache_tokens if n_park else 0
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx + cache_tokens
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = n_seq + n_park
        params.kv_unified = kv_unified
        params.n_threads = params.n_threads_batch = model.n_threads
        params.no_perf = True
        attention_params(params, model.flash_attn)
        if model.deterministic:
            invariant.context_params(params)
        self._ctx = lib.llama_init_from_model(model._model, params)
        if not self._ctx:
            raise ValueError(
                f"llama.cpp could not create a context of {n_ctx} positions for {n_seq} sequences of up to "
                f"{n_ctx_seq} for {model.path}: lower --parallel or --ctx-size; "
                f"llama.cpp says: {_recent_log() or 'nothing'}")
        self._mem = lib.llama_get_memory(self._ctx)
        self._batch: TokenBatch | None = TokenBatch(lib, n_batch, self.vocab_size)
        self.slots = [SequenceSlot(self, i) for i in range(n_seq)]
        self._free = list(range(n_seq))
        self._lock = threading.Lock()
        self.cache: PrefixCache | None = None
        if cache_tokens or cache_ram:
            self.cache = PrefixCache(LlamaKVStore(lib, self._ctx, self._mem), range(n_seq, n_seq + n_park),
                                     cache_tokens, cache_ram, name=model.path)

    # -- slots ----------------------------------------------------------------------------------------
    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def room(self) -> int:
        """KV positions not in use: what the sequences together may still add."""
        if not self.kv_unified:
            return sum(self.n_ctx_seq - s.length for s in self.slots)
        return self.n_ctx - sum(s.length for s in self.slots)

    def acquire(self) -> SequenceSlot:
        """A free slot, emptied (a RuntimeError when all are taken: check `free` first)."""
        with self._lock:
            if not self._free:
                raise RuntimeError(f"all {self.n_seq} sequences are in use")
            slot = self.slots[self._free.pop(0)]
        slot.reset()
        return slot

    def retire(self, slot: SequenceSlot) -> None:
        """Empty a slot whose request ended, parking what it holds in the prefix cache (when on)."""
        if self.cache is not None and slot._tokens:
            self.cache.park(slot.seq_id, slot._tokens)
        slot.reset()

    def release(self, slot: SequenceSlot) -> None:
        """Give a slot back (what it holds is parked in the prefix cache, when on, and the slot emptied)."""
        self.retire(slot)
        with self._lock:
            if slot.seq_id not in self._free:
                self._free.append(slot.seq_id)
                self._free.sort()

    def share(self, src: SequenceSlot, dst: SequenceSlot, end: int) -> None:
        """Extend `dst` to `end` positions with `src`'s cells (the same tokens there: the caller checks)."""
        start = dst.length
        if end <= start:
            return
        if end > src.length:
            raise ValueError(f"sequence {src.seq_id} holds {src.length} positions, not {end}")
        self._lib.llama_memory_seq_cp(self._mem, src.seq_id, dst.seq_id, start, end)
        dst._tokens.extend(src._tokens[start:end])
        if self.cache is not None:
            self.cache.stats.tokens_served += end - start
            self.cache.stats.by_source["live"] = self.cache.stats.by_source.get("live", 0) + end - start

    # -- batched decode -------------------------------------------------------------------------------
    def decode(self, items: Sequence[tuple[SequenceSlot, Sequence[int], int]],
               calls: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Feed each slot its tokens in one batched pass and return, per item, the logits [keep, V] of its
        last `keep` tokens (0: none). `calls`: row counts of the llama.cpp calls to make, in order (a
        call may end inside a sequence's rows; default: chunks of `n_batch`). The tensors are views of
        llama.cpp's buffer, valid until the next decode on this pool."""
        rows: list[tuple[int, int, int, bool]] = []  # token, position, sequence id, logits wanted
        for slot, ids, keep in items:
            ids = [int(t) for t in ids]
            if not ids:
                raise ValueError("decode needs at least one token per item")
            check_token_ids(np.asarray(ids), self.vocab_size, self.model.path)
            if slot.length + len(ids) > self.n_ctx_seq:
                raise ValueError(f"{slot.length + len(ids)} positions do not fit a sequence's context of "
                                 f"{self.n_ctx_seq} (--ctx-size): shorten the prompt or max_tokens")
            first = len(ids) - min(keep, len(ids))
            rows += [(t, slot.length + i, slot.seq_id, keep > 0 and i >= first) for i, t in enumerate(ids)]
        if self.kv_unified and len(rows) > self.room:
            raise ValueError(f"{len(rows)} new positions do not fit the {self.room} left in the shared KV "
                             f"memory of {self.n_ctx} positions (--ctx-size)")
        if calls is None or sum(calls) != len(rows) or max(calls) > self.n_batch:
            calls = [min(self.n_batch, len(rows) - at) for at in range(0, len(rows), self.n_batch)]
        with self._lock:
            try:
                outputs = self._run(rows, items, calls)
            except _NoRoom:
                if self.cache is None or not self.cache.evict_all():
                    raise RuntimeError(f"llama_decode found no room in the KV memory for {len(rows)} rows; "
                                       f"llama.cpp says: {_recent_log() or 'nothing'}") from None
                outputs = self._run(rows, items, calls)  # parked prefixes made room
        for slot, ids, _ in items:
            slot._tokens.extend(int(t) for t in ids)
        out = torch.cat(outputs) if len(outputs) > 1 else (outputs[0] if outputs else None)
        result, at = [], 0
        for _, ids, keep in items:
            k = min(keep, len(ids))
            result.append(out[at : at + k] if k else torch.empty(0, self.vocab_size))
            at += k
        return result

    def _run(self, rows: list[tuple[int, int, int, bool]], items: Sequence[tuple[Any, Any, int]],
             calls: Sequence[int]) -> list[torch.Tensor]:
        lib, batch, outputs, start = self._lib, self._batch, [], 0
        assert batch is not None, "the pool is closed"
        for n in calls:
            chunk = rows[start : start + n]
            for i, (token, pos, seq, want) in enumerate(chunk):
                batch.token[i], batch.pos[i], batch.logits[i] = token, pos, want
                batch.seq[i][0] = seq
            rc = batch.decode(self._ctx, n)
            if rc != 0:
                for slot, _, _ in items:  # undo whatever part of this call reached the cache
                    lib.llama_memory_seq_rm(self._mem, slot.seq_id, slot.length, -1)
                if rc == 1:  # no KV slot for the batch
                    raise _NoRoom()
                said = _recent_log() or "nothing"
                raise RuntimeError(f"llama_decode failed with code {rc} on a batch of {len(rows)} rows "
                                   f"over {len(items)} sequences; llama.cpp says: {said}")
            wanted = sum(1 for r in chunk if r[3])
            if wanted:
                view = batch.outputs(self._ctx, wanted)
                more = start + n < len(rows)
                outputs.append(view.clone() if more else view)  # the next call overwrites the buffer
            start += n
        return outputs

    def close(self) -> None:
        """Free the context and batch now (otherwise when garbage-collected)."""
        lib = getattr(self, "_lib", None)
        if lib is None:
            return
        if getattr(self, "_ctx", None):
            lib.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_batch", None) is not None:
            self._batch.free()
            self._batch = None
        self._weights = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: llama.cpp may already be gone
            pass


class _NoRoom(Exception):
    """llama_decode found no free KV cells for a batch."""


class SequenceSlot:
    """One sequence of a `SequencePool`, as a `CausalLM` with its own rollback."""

    backend = "llama.cpp"

    def __init__(self, pool: SequencePool, seq_id: int) -> None:
        self.pool, self.seq_id = pool, seq_id
        model = pool.model
        self.vocab_size = model.vocab_size
        self.max_length = pool.n_ctx_seq
        self.device = torch.device("cpu")
        self.tokenizer = model.tokenizer
        self.eos_token_ids = model.eos_token_ids
        self.n_threads = model.n_threads
        self.name, self.dtype, self.path = model.name, model.dtype, model.path
        self._tokens: list[int] = []

    @property
    def length(self) -> int:
        return len(self._tokens)

    def forward(self, input_ids: torch.Tensor, logits_to_keep: int = 0) -> torch.Tensor:
        """Append `input_ids` [1, T] to this sequence alone; logits [1, k, V] of the last k (all when 0)."""
        ids = input_ids.detach().cpu().view(-1).tolist()
        keep = len(ids) if not logits_to_keep else min(int(logits_to_keep), len(ids))
        return self.pool.decode([(self, ids, keep)])[0].unsqueeze(0)

    def truncate(self, length: int) -> None:
        if length > self.length or length < 0:
            raise ValueError(f"cannot truncate a cache of {self.length} positions to {length}")
        if length == self.length:
            return
        if not self.pool._lib.llama_memory_seq_rm(self.pool._mem, self.seq_id, length, -1):
            raise RuntimeError(f"llama.cpp could not remove positions >= {length} of sequence {self.seq_id}")
        del self._tokens[length:]

    def reset(self) -> None:
        self.pool._lib.llama_memory_seq_rm(self.pool._mem, self.seq_id, -1, -1)
        self._tokens.clear()

    @property
    def tokens(self) -> list[int]:
        """The token ids whose KV this sequence holds, in order."""
        return list(self._tokens)

    def prefix(self, prompt_ids: list[int]) -> int | None:
        """Start a sequence over `prompt_ids` from the longest prefix of it that this or any other
        sequence of the pool holds (running or parked); returns how many positions it starts with, or
        None when the pool cannot reuse prefixes."""
        pool = self.pool
        if pool.cache is None:
            return None
        self.reset()
        live = [(s.seq_id, s._tokens) for s in pool.slots if s is not self and s._tokens]
        kept, held = pool.cache.attach(self.seq_id, prompt_ids, live)
        self._tokens = held
        if len(held) > kept:  # restored from host memory: more than the prompt shares
            self.truncate(kept)
        return kept

    def reserve(self, positions: int) -> None:
        """Check that `positions` fit this sequence's fixed context (a ValueError when not)."""
        if positions > self.max_length:
            raise ValueError(f"{positions} positions do not fit a sequence's context of {self.max_length} "
                             "(--ctx-size): shorten the prompt or max_tokens")

    def __repr__(self) -> str:
        return f"SequenceSlot({self.seq_id} of {self.pool.n_seq}, {self.path!r})"
