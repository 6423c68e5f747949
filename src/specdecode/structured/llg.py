"""The grammar engine: llguidance (https://github.com/guidance-ai/llguidance).

Why llguidance: it is on the package index as a CPU wheel with no build step, it is the engine behind
llama.cpp's and vLLM's structured output, it compiles JSON schemas, Lark grammars (and llama.cpp's GBNF
through its converter) and regexes itself, and its `LLMatcher` follows a generation token by token with
`rollback`, validates a list of draft tokens at once and reports the tokens a grammar forces
(`compute_ff_tokens`): the three things exact speculative decoding needs. (xgrammar has rollback too but
no forced-token API and no GBNF reader.)

`GrammarMatcher` holds one generation's grammar state, always at the end of the accepted sequence;
`block_masks` gives the allowed tokens at every position of a draft block without moving it.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from .constraint import Constraint

# one JSON layout: a grammar that admits any whitespace makes the model's choice of layout part of every
# output and leaves nothing forced after a comma; ", " and ": " on one line is what models (and OpenAI)
# write by default
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("structured output needs llguidance: pip install 'specdecode[structured]'"
                          ) from None
    return llguidance


def compile_grammar(constraint: Constraint) -> str:
    """The llguidance grammar (its JSON form) of `constraint`; ValueError for a grammar that does not parse
    (validity against a tokenizer is checked when a matcher is made)."""
    llg = _llguidance()
    matcher_cls = llg.LLMatcher
    if constraint.kind in ("json_object", "json_schema"):
        schema = {"type": "object"} if constraint.kind == "json_object" else constraint.value
        options = {**JSON_OPTIONS, "lenient": not constraint.strict}
        try:
            grammar = matcher_cls.grammar_from_json_schema(json.dumps(schema), overrides=options)
        except ValueError as e:
            raise ValueError(f"invalid JSON schema: {e}") from None
    elif constraint.kind == "grammar":
        from llguidance.gbnf_to_lark import any_to_lark

        try:
            lark = any_to_lark(constraint.value)
        except Exception as e:  # the converter raises its own error types for GBNF syntax errors
            raise ValueError(f"invalid grammar: {e}") from None
        grammar = matcher_cls.grammar_from_lark(lark)
    else:
        grammar = matcher_cls.grammar_from_regex(constraint.value)
    is_error, messages = matcher_cls.validate_grammar_with_warnings(grammar)
    if is_error:
        raise ValueError(f"invalid {constraint.kind.replace('_', ' ')}: {messages[0] if messages else ''}")
    return grammar


def lltokenizer(tokenizer: Any, vocab: int, eos_ids: set[int]) -> Any:
    """llguidance's view of `tokenizer` (the bytes of every token id), for logits `vocab` wide; cached on the
    tokenizer (building it reads the whole vocabulary, about a second for 150k tokens)."""
    llg = _llguidance()
    eos = sorted(eos_ids) or None
    key = (vocab, tuple(eos or ()))
    cache = getattr(tokenizer, "_specdecode_lltok", None)
    if cache is None:
        cache = {}
        try:
            tokenizer._specdecode_lltok = cache
        except AttributeError:
            pass
    if key in cache:
        return cache[key]
    from ..backends.gguf_tokenizer import GGUFTokenizer

    if isinstance(tokenizer, GGUFTokenizer):
        made = _gguf_lltokenizer(tokenizer, vocab, eos)
    else:
        from transformers import PreTrainedTokenizerFast

        if not isinstance(tokenizer, PreTrainedTokenizerFast):
            raise ValueError("structured output needs the model's fast (Rust) tokenizer or a GGUF "
                             f"vocabulary; got {type(tokenizer).__name__}")
        from llguidance.hf import from_tokenizer

        try:
            made = from_tokenizer(tokenizer, n_vocab=max(vocab, len(tokenizer)), eos_token=eos)
        except ValueError:  # a decoder llguidance cannot read: build the byte table from decode()
            made = llg.LLTokenizer(llg.TokenizerWrapper(_DecodedVocabulary(tokenizer, vocab, eos)))
    cache[key] = made
    return made


def _gguf_lltokenizer(tokenizer: Any, vocab: int, eos: list[int] | None) -> Any:
    """llguidance's tokenizer over a GGUF vocabulary: each token's bytes from llama.cpp (control tokens, and
    user-defined ones that look like them, marked with 0xff), tokenising through llama.cpp itself. As
    `llguidance.llamacpp.lltokenizer_from_vocab`, with llama.cpp's current attribute call."""
    import ctypes

    llg = _llguidance()
    lib, handle = tokenizer._lib, tokenizer._vocab
    size = 1024
    buffer = ctypes.create_string_buffer(size + 1)
    tokens: list[bytes] = []
    for token in range(tokenizer.vocab_size):
        n = lib.llama_token_to_piece(handle, token, buffer, size, 0, True)
        if n < 0:
            raise ValueError(f"token {token} of the GGUF vocabulary is longer than {size} bytes")
        piece = bytes(buffer[:n])
        attr = lib.llama_vocab_get_attr(handle, token)
        if attr & lib.LLAMA_TOKEN_ATTR_CONTROL or (attr & lib.LLAMA_TOKEN_ATTR_USER_DEFINED
                                                   and piece.startswith(b"<") and piece.endswith(b">")):
            piece = b"\xff" + piece
        tokens.append(piece)
    tokens += [b""] * (vocab - len(tokens))  # logits wider than the vocabulary (padding rows)
    tokenize = ctypes.cast(lib.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
    eos_token = eos if eos else int(lib.llama_vocab_eos(handle))
    return llg.LLTokenizer.from_llamacpp(tokens=tokens, vocab_ptr=handle, tokenize_fptr=tokenize,
                                         eos_token=eos_token, slices=None)


class _DecodedVocabulary:
    """A token-bytes table made by decoding each id alone (for tokenizers whose decoder llguidance does not
    read, e.g. character-level ones); special tokens are marked with a 0xff byte, as llguidance expects."""

    def __init__(self, tokenizer: Any, vocab: int, eos: list[int] | None) -> None:
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        size = max(vocab, len(tokenizer))
        self.tokens = [b"" for _ in range(size)]
        for i in range(len(tokenizer)):
            text = tokenizer.decode([i]).encode("utf-8")
            self.tokens[i] = b"\xff" + text if i in special else text
        self.eos_token_id = eos[0] if eos else tokenizer.eos_token_id
        self.bos_token_id = getattr(tokenizer, "bos_token_id", None)
        self.special_token_ids = sorted(special)
        self._tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))


def _bits(words: torch.Tensor, vocab: int) -> torch.Tensor:
    """Bool [rows, vocab] from llguidance's bitmask words int32 [rows, W] (bit j of word w: token 32w+j)."""
    shifts = torch.arange(32, dtype=torch.int32)
    bits = (words.unsqueeze(-1) >> shifts) & 1
    return bits.view(words.shape[0], -1)[:, :vocab].bool()


class GrammarMatcher:
    """One generation's grammar state, kept at the end of the accepted tokens (`consume`)."""

    def __init__(self, constraint: Constraint, tokenizer: Any, vocab: int, eos_ids: set[int]) -> None:
        if tokenizer is None:
            raise ValueError("structured output needs the target's tokenizer: load the model with one")
        llg = _llguidance()
        self.constraint, self.vocab = constraint, vocab
        self.tokenizer = lltokenizer(tokenizer, vocab, eos_ids)
        self._matcher = llg.LLMatcher(self.tokenizer, compile_grammar(constraint), log_level=0)
        if self._matcher.is_error():
            raise ValueError(f"invalid {constraint.kind.replace('_', ' ')}: {self._matcher.get_error()}")
        self._words = (self.tokenizer.vocab_size + 31) // 32

    @property
    def stopped(self) -> bool:
        """The grammar is complete and allows nothing more (the end of sequence at most)."""
        return bool(self._matcher.is_stopped())

    @property
    def accepting(self) -> bool:
        """The tokens so far form a complete match."""
        return bool(self._matcher.is_accepting())

    def _fill(self, words: torch.Tensor, row: int) -> None:
        view = words[row]
        self._matcher.unsafe_compute_mask_ptr(view.data_ptr(), view.numel() * 4)

    def allowed(self) -> torch.Tensor:
        """Bool [vocab]: the tokens the grammar allows next."""
        words = torch.zeros(1, self._words, dtype=torch.int32)
        self._fill(words, 0)
        return _bits(words, self.vocab)[0]

    def block_masks(self, draft: list[int]) -> tuple[torch.Tensor, int]:
        """The allowed tokens [len(draft)+1, vocab] at each position of a block that feeds `draft` after the
        accepted tokens, and how many leading draft tokens the grammar allows. Rows after the first
        disallowed draft token allow everything (they are never used: that token is always rejected).
        The state is left where it was."""
        n_valid = self.valid_prefix(draft)
        words = torch.full((len(draft) + 1, self._words), -1, dtype=torch.int32)
        consumed = 0
        try:
            for i in range(n_valid + 1):
                self._fill(words, i)
                if i < n_valid:
                    if not self._matcher.consume_token(draft[i]):
                        raise RuntimeError("llguidance refused a token it validated: "
                                           f"{self._matcher.get_error()}")
                    consumed += 1
        finally:
            if consumed:
                self._matcher.rollback(consumed)
        return _bits(words, self.vocab), n_valid

    def valid_prefix(self, tokens: list[int]) -> int:
        """How many leading `tokens` the grammar allows from the current state."""
        return int(self._matcher.validate_tokens(list(tokens))) if tokens else 0

    def consume(self, tokens: list[int]) -> int:
        """Advance over accepted `tokens` (the engine only accepts tokens the grammar allowed); returns how
        many belong to the output: all of them, or those up to the one that completed the grammar."""
        for i, token in enumerate(tokens):
            if self.stopped:
                return i
            if not self._matcher.consume_token(int(token)):
                raise RuntimeError(f"the grammar refused accepted token {token}: {self._matcher.get_error()}")
        return len(tokens)

    def rollback(self, n: int) -> None:
        if n:
            self._matcher.rollback(n)

    def forced(self) -> list[int]:
        """The tokens the grammar forces next (empty when there is a choice)."""
        if self.stopped:
            return []
        return list(self._matcher.compute_ff_tokens())

    def forced_draft(self) -> list[int]:
        """A draft of the text the grammar forces: its forced tokens, then the tokenisation of the forced
        bytes they leave over (e.g. the ` "` opening a string value, which a longer token such as ` "Dr`
        could also start: allowed, likely, not certain)."""
        tokens = self.forced()
        if self.stopped:
            return tokens
        data = bytes(self._matcher.compute_ff_bytes())
        done = bytes(self.tokenizer.decode_bytes(tokens))
        if len(data) > len(done) and data.startswith(done):
            full = tokens + list(self.tokenizer.tokenize_bytes(data[len(done) :]))
            tokens = full[: self.valid_prefix(full)]
        return tokens
