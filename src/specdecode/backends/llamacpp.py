"""Adapter exposing a GGUF model on llama.cpp's own kernels (llama-cpp-python's low-level API) as a
`CausalLM`: batched decode asking for logits only on the rows the engine reads, KV rollback through
llama.cpp's sequence-remove call, and logits handed over as a view of llama.cpp's buffer (no copy)."""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cache import common_prefix
from ..machine import available_cores
from . import llamacpp_invariant as invariant
from .gguf_tokenizer import GGUFTokenizer
from .llamacpp_cache import restore_sequence, reuse_refusal, save_sequence
from .llamacpp_invariant import FLASH_ATTN_DISABLED, FLASH_ATTN_ENABLED

INSTALL_HINT = (
    "pip install 'specdecode[llamacpp]' (compiles llama.cpp from source, a few minutes), "
    "or use backend='transformers' / --backend transformers"
)
CONTEXT_STEP = 512  # contexts grow in steps of this many positions

_state: dict[str, Any] = {}
_init_lock = threading.Lock()
_log: deque[str] = deque(maxlen=64)  # llama.cpp's recent log lines, quoted in errors
log = logging.getLogger("specdecode.cache")


def llama_cpp() -> Any:
    """The `llama_cpp` module, initialised once, with llama.cpp's log captured instead of printed
    (set SPECDECODE_LLAMA_LOG=1 to print it)."""
    with _init_lock:
        if "lib" in _state:
            return _state["lib"]
        try:
            import llama_cpp as lib
        except ImportError:
            raise ValueError(f"the llama.cpp backend needs llama-cpp-python: {INSTALL_HINT}") from None
        echo = os.environ.get("SPECDECODE_LLAMA_LOG", "") not in ("", "0")

        @lib.llama_log_callback
        def _capture(level: int, text: bytes, user_data: Any) -> None:
            line = text.decode("utf-8", errors="replace") if text else ""
            _log.append(line)
            if echo:
                print(line, end="", flush=True)

        _state["callback"] = _capture  # must outlive every llama.cpp call
        lib.llama_log_set(_capture, ctypes.c_void_p(0))
        lib.llama_backend_init()
        _state["lib"] = lib
        return lib


def _recent_log(lines: int = 6) -> str:
    text = "".join(_log).strip().splitlines()
    return " | ".join(line.strip() for line in text[-lines:] if line.strip())


def gguf_architecture(path: str | os.PathLike[str]) -> str | None:
    """`general.architecture` of a GGUF file, read from its header (None when unreadable)."""
    try:
        from gguf import GGUFReader

        field = GGUFReader(os.fspath(path)).get_field("general.architecture")
        return None if field is None else str(field.contents())
    except Exception:  # no gguf package, or a header it cannot parse: the caller reports llama.cpp's log
        return None


def check_gguf_file(path: str | os.PathLike[str]) -> Path:
    """The path, once it is known to exist and to start like a GGUF file (else a ValueError saying so)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"GGUF file not found: {p}")
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ValueError(
            f"{p} is not a GGUF file (it starts with {magic!r}, a GGUF file with b'GGUF'): pass a .gguf "
            "model file, or a transformers directory with --backend transformers"
        )
    return p


def check_token_ids(ids: np.ndarray, vocab: int, path: str) -> None:
    """A ValueError naming the first offending id when `ids` leave the vocabulary [0, vocab) of `path`."""
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab:
        bad = low if low < 0 else high
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab}) of {path}")


_said: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.info(message)


class TokenBatch:
    """A llama.cpp batch of up to `size` rows, one sequence id each, with its columns as numpy arrays."""

    def __init__(self, lib: Any, size: int, vocab: int) -> None:
        self.lib, self.size, self.vocab = lib, size, vocab
        self.batch = lib.llama_batch_init(size, 0, 1)
        as_array = np.ctypeslib.as_array
        self.token = as_array(self.batch.token, shape=(size,))
        self.pos = as_array(self.batch.pos, shape=(size,))
        self.logits = as_array(self.batch.logits, shape=(size,))
        as_array(self.batch.n_seq_id, shape=(size,))[:] = 1
        self.seq = [self.batch.seq_id[i] for i in range(size)]  # row i's sequence id: seq[i][0]
        for row in self.seq:
            row[0] = 0

    def decode(self, ctx: Any, rows: int) -> int:
        """llama_decode of the first `rows` rows; llama.cpp's return code."""
        self.batch.n_tokens = rows
        return int(self.lib.llama_decode(ctx, self.batch))

    def outputs(self, ctx: Any, rows: int) -> torch.Tensor:
        """The logits [rows, V] of the rows the last decode marked, as a view of llama.cpp's buffer (valid
        until the next decode on `ctx`)."""
        ptr = self.lib.llama_get_logits(ctx)
        return torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(rows, self.vocab)))

    def free(self) -> None:
        if self.batch is not None:
            self.lib.llama_batch_free(self.batch)
            self.batch = None


class _Weights:
    """Owns a loaded llama.cpp model (weights and vocabulary): freed when the last holder lets go, so a
    tokenizer kept after its `LlamaCppModel` is gone still works."""

    def __init__(self, lib: Any, ptr: Any) -> None:
        self.lib, self.ptr = lib, ptr

    def __del__(self) -> None:
        try:
            if self.ptr:
                self.lib.llama_model_free(self.ptr)
                self.ptr = None
        except Exception:  # interpreter shutdown: llama.cpp may already be gone
            pass


def attention_params(params: Any, flash_attn: bool) -> None:
    """Attention kernel of a context: llama.cpp's flash attention, or its matrix-product attention. On a
    CPU the latter verifies draft blocks far faster once the cache is long (measured on 2 cores, 1.5B
    Q4_K_M, 3,000 cached tokens: a 32-token call 575-600 ms against 970-990 ms with flash attention, one
    token 86-88 against 91 ms) and costs a little at short contexts (one token after 32 cached: 73-75
    against 70-72 ms) and in long prompts (2,000 tokens: 22.5-23.8 s against 21.1-21.4 s)."""
    params.flash_attn_type = FLASH_ATTN_ENABLED if flash_attn else FLASH_ATTN_DISABLED


class LlamaCppModel:
    """A GGUF model on llama.cpp with one KV-cache sequence that can be rolled back.

    n_threads: threads for decoding and prefill (default: the cores available to this process).
    n_ctx: initial context size; it grows as needed (`reserve`, or a forward past the end) up to the
    model's trained context. The weights are memory-mapped.
    `forward` returns a view of llama.cpp's logits buffer, valid until the next call on this model.
    """

    backend = "llama.cpp"

    def __init__(self, path: str | os.PathLike[str], n_threads: int | None = None, n_ctx: int | None = None,
                 n_batch: int = 512, deterministic: bool = False, flash_attn: bool = False) -> None:
        if deterministic:
            invariant.prepare_process()
        lib = self._lib = llama_cpp()
        self.path = str(Path(check_gguf_file(path)).resolve())
        if n_threads is not None and n_threads < 1:
            raise ValueError(f"n_threads must be >= 1, got {n_threads}")
        params = lib.llama_model_default_params()
        params.n_gpu_layers = 0
        params.load_mode = lib.LLAMA_LOAD_MODE_MMAP
        self.deterministic = bool(deterministic)
        self.flash_attn = bool(flash_attn) or self.deterministic  # deterministic mode needs its kernel
        if deterministic:
            invariant.model_params(params)
        _log.clear()
        self._weights = _Weights(lib, lib.llama_model_load_from_file(self.path.encode(), params))
        self._model = self._weights.ptr
        if not self._model:
            arch = gguf_architecture(self.path)
            log = _recent_log()
            if arch is not None and "unknown model architecture" in log:
                raise ValueError(
                    f"llama.cpp cannot run {self.path}: its architecture {arch!r} is not supported by this "
                    f"llama.cpp build (llama-cpp-python {lib.__version__}); llama.cpp says: {log}"
                )
            raise ValueError(
                f"llama.cpp could not load {self.path} (a truncated or corrupt GGUF file, or an unsupported "
                f"model); llama.cpp says: {log or 'nothing'}. Re-download the file, or check it with "
                "`python -m gguf.scripts.gguf_dump`"
            )
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.vocab_size = int(lib.llama_vocab_n_tokens(self._vocab))
        self.max_length = int(lib.llama_model_n_ctx_train(self._model)) or None
        self.n_threads = n_threads or available_cores()
        self.n_batch = int(n_batch)
        self.device = torch.device("cpu")
        self.tokenizer = GGUFTokenizer(lib, self._model, self._vocab, owner=self._weights)
        self.eos_token_ids = self.tokenizer.eog_token_ids
        buf = ctypes.create_string_buffer(256)
        lib.llama_model_desc(self._model, buf, 256)
        self.description = buf.value.decode(errors="replace")
        self._ctx: Any = None
        self._mem: Any = None
        self._n_ctx = 0
        self._tokens: list[int] = []
        self._batch: TokenBatch | None = TokenBatch(lib, self.n_batch, self.vocab_size)
        self.no_reuse = reuse_refusal(lib, self._model)  # why cached prefixes cannot be reused, if so
        if deterministic:
            invariant.check(lib, self._model, self.vocab_size, self.path, self.n_threads)
        self._new_context(n_ctx or 4096)

    # -- the CausalLM protocol -------------------------------------------------------------------------
    @property
    def length(self) -> int:
        """Positions in the KV cache."""
        return len(self._tokens)

    @property
    def name(self) -> str:
        return self.path

    @property
    def dtype(self) -> str:
        """What the weights are computed in: the GGUF's quantisation, as llama.cpp describes the model."""
        mode = (", deterministic kernels" if self.deterministic
                else ", flash attention" if self.flash_attn else "")
        return f"gguf ({self.description}{mode})"

    def forward(self, input_ids: torch.Tensor, logits_to_keep: int = 0) -> torch.Tensor:
        """Append `input_ids` [1, T]; return float32 logits [1, k, V] of the last k = `logits_to_keep`
        positions (all T when 0). Only those rows are computed by llama.cpp's output layer."""
        ids = np.asarray(input_ids.detach().cpu().view(-1).numpy(), dtype=np.int32)
        steps = int(ids.shape[0])
        if steps == 0:
            raise ValueError("forward needs at least one token")
        check_token_ids(ids, self.vocab_size, self.path)
        needed = self.length + steps
        if needed > self._n_ctx:
            self.reserve(needed)
        keep = steps if not logits_to_keep else min(int(logits_to_keep), steps)
        first_out = steps - keep
        earlier: list[torch.Tensor] = []
        out = None
        batch = self._batch
        assert batch is not None, "the model is closed"
        for start in range(0, steps, self.n_batch):
            n = min(self.n_batch, steps - start)
            batch.token[:n] = ids[start : start + n]
            batch.pos[:n] = np.arange(self.length + start, self.length + start + n, dtype=np.int32)
            batch.logits[:n] = np.arange(start, start + n) >= first_out
            rc = batch.decode(self._ctx, n)
            if rc != 0:
                self._lib.llama_memory_seq_rm(self._mem, 0, self.length, -1)
                raise RuntimeError(f"llama_decode failed with code {rc} at position {self.length + start} "
                                   f"(context {self._n_ctx}); llama.cpp says: {_recent_log() or 'nothing'}")
            rows = max(0, start + n - max(first_out, start))
            if rows:
                out = batch.outputs(self._ctx, rows)
                if start + n < steps:  # more chunks follow and will overwrite the buffer
                    earlier.append(out.clone())
                    out = None
        self._tokens.extend(int(t) for t in ids)
        assert out is not None
        if earlier:
            out = torch.cat([*earlier, out])
        return out.unsqueeze(0)

    def truncate(self, length: int) -> None:
        """Drop cached positions >= `length`."""
        if length > self.length or length < 0:
            raise ValueError(f"cannot truncate a cache of {self.length} positions to {length}")
        if length == self.length:
            return
        if not self._lib.llama_memory_seq_rm(self._mem, 0, length, -1):
            raise RuntimeError(f"llama.cpp could not remove positions >= {length} from the KV cache")
        del self._tokens[length:]

    def reset(self) -> None:
        self._lib.llama_memory_clear(self._mem, True)
        self._tokens.clear()

    # -- prefix reuse -----------------------------------------------------------------------------------
    @property
    def tokens(self) -> list[int]:
        """The token ids whose KV the cache holds, in order."""
        return list(self._tokens)

    def prefix(self, prompt_ids: list[int]) -> int | None:
        """Start a sequence over `prompt_ids` keeping the longest common prefix of what the cache holds
        (at most all but the last prompt token); returns how many positions were kept, or None when this
        model cannot reuse its cache (the caller starts afresh)."""
        if self.no_reuse:
            _log_once(f"{self.path}: no prefix reuse: {self.no_reuse}")
            return None
        keep = min(common_prefix(self._tokens, prompt_ids), len(prompt_ids) - 1)
        if keep <= 0:
            self.reset()
            return 0
        lib = self._lib
        # positions a sliding-window cache dropped cannot be attended to again: start afresh then
        if int(lib.llama_memory_seq_pos_min(self._mem, 0)) > 0 or not lib.llama_memory_seq_rm(
                self._mem, 0, keep, -1):
            _log_once(f"{self.path}: no prefix reuse: llama.cpp cannot remove part of a sequence here")
            self.reset()
            return 0
        del self._tokens[keep:]
        return keep

    def save_state(self) -> bytes:
        """The KV state of what the cache holds (`tokens`), for `load_state`."""
        return save_sequence(self._lib, self._ctx, 0)

    def load_state(self, data: bytes, tokens: list[int]) -> bool:
        """Replace the cache by a state saved with `save_state` over `tokens`; False (and an empty cache)
        when llama.cpp refuses it."""
        self.reset()
        if len(tokens) > self._n_ctx:
            self.reserve(len(tokens))
        if restore_sequence(self._lib, self._ctx, data, 0) and int(
                self._lib.llama_memory_seq_pos_max(self._mem, 0)) == len(tokens) - 1:
            self._tokens = list(tokens)
            return True
        self.reset()
        return False

    # -- extras ---------------------------------------------------------------------------------------
    def reserve(self, positions: int) -> None:
        """Make room for `positions` cached tokens (grows the context, re-feeding what is cached)."""
        if positions <= self._n_ctx:
            return
        if self.max_length is not None and positions > self.max_length:
            raise ValueError(
                f"{positions} positions do not fit the context window of {self.path} "
                f"({self.max_length} tokens): shorten the prompt or max_new_tokens"
            )
        cached = list(self._tokens)
        state = self.save_state() if cached else b""  # moved, not read again
        self._new_context(positions)
        if cached and not (restore_sequence(self._lib, self._ctx, state, 0) and int(
                self._lib.llama_memory_seq_pos_max(self._mem, 0)) == len(cached) - 1):
            self.reset()
            self.forward(torch.tensor([cached]), logits_to_keep=1)
        else:
            self._tokens = cached

    def _new_context(self, positions: int) -> None:
        lib = self._lib
        size = -(-max(positions, CONTEXT_STEP) // CONTEXT_STEP) * CONTEXT_STEP
        if self.max_length is not None:
            size = min(size, self.max_length)
        params = lib.llama_context_default_params()
        params.n_ctx = size
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = self.n_threads
        params.no_perf = True
        attention_params(params, self.flash_attn)
        if self.deterministic:
            invariant.context_params(params)
        self._free_context()
        self._ctx = lib.llama_init_from_model(self._model, params)
        if not self._ctx:
            raise ValueError(f"llama.cpp could not create a context of {size} positions for {self.path}; "
                             f"llama.cpp says: {_recent_log() or 'nothing'}")
        self._mem = lib.llama_get_memory(self._ctx)
        self._n_ctx = size
        self._tokens = []

    def set_threads(self, n_threads: int) -> None:
        """Change the number of threads used for decoding and prefill."""
        if n_threads < 1:
            raise ValueError(f"n_threads must be >= 1, got {n_threads}")
        self.n_threads = n_threads
        self._lib.llama_set_n_threads(self._ctx, n_threads, n_threads)

    def _free_context(self) -> None:
        if self._ctx:
            self._lib.llama_free(self._ctx)
        self._ctx = self._mem = None

    def close(self) -> None:
        """Free llama.cpp's context and batch now (otherwise when garbage-collected); the weights go with the
        last reference to them (this model, or its tokenizer)."""
        lib = getattr(self, "_lib", None)
        if lib is None:
            return
        self._free_context()
        if getattr(self, "_batch", None) is not None:
            self._batch.free()
            self._batch = None
        self._model = None  # the weights are freed with the last reference (this model or its tokenizer)
        self._weights = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: llama.cpp may already be gone
            pass

    def __repr__(self) -> str:
        mode = ", deterministic" if self.deterministic else ""
        return f"LlamaCppModel({self.path!r}, {self.description}, threads={self.n_threads}{mode})"
