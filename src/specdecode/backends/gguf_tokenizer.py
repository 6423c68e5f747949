"""A GGUF file's own vocabulary and chat template, through llama.cpp, behind the part of the transformers
tokenizer API that specdecode uses (`__call__`, `encode`, `decode`, `apply_chat_template`, `get_vocab`)."""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np


class GGUFTokenizer:
    """Tokenises like the model's own tokenizer: llama.cpp's implementation of the GGUF vocabulary,
    special tokens parsed in text (as transformers does), and the chat template from the GGUF metadata
    rendered with jinja2 as transformers renders it."""

    def __init__(self, lib: Any, model: Any, vocab: Any, owner: Any = None) -> None:
        self._lib, self._model, self._vocab = lib, model, vocab
        self._owner = owner  # keeps the llama.cpp model (and so `vocab`) alive as long as this tokenizer
        self.vocab_size = int(lib.llama_vocab_n_tokens(vocab))
        template = lib.llama_model_chat_template(model, None)
        self.chat_template: str | None = template.decode("utf-8") if template else None
        self.add_bos = bool(lib.llama_vocab_get_add_bos(vocab))
        bos, eos = int(lib.llama_vocab_bos(vocab)), int(lib.llama_vocab_eos(vocab))
        self.bos_token_id = bos if bos >= 0 else None
        self.eos_token_id = eos if eos >= 0 else None
        self.bos_token = self._text(bos) if bos >= 0 else ""
        self.eos_token = self._text(eos) if eos >= 0 else ""
        self._vocab_map: dict[str, int] | None = None
        self._formatter: Any = None

    @property
    def eog_token_ids(self) -> set[int]:
        """Every token llama.cpp treats as an end of generation (EOS, end of turn, ...)."""
        is_eog = self._lib.llama_vocab_is_eog
        return {t for t in range(self.vocab_size) if is_eog(self._vocab, t)}

    def _text(self, token: int) -> str:
        raw = self._lib.llama_vocab_get_text(self._vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text` (a BOS token first when the model asks for one and add_special_tokens)."""
        data = text.encode("utf-8")
        size = len(data) + 8
        for _ in range(2):
            buf = (ctypes.c_int32 * size)()
            n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, size, add_special_tokens, True)
            if n >= 0:
                return list(np.ctypeslib.as_array(buf, shape=(size,))[:n].tolist())
            size = -n
        raise RuntimeError("llama.cpp could not tokenise the text")

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text, add_special_tokens)}

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        """The text of `ids`; an incomplete UTF-8 sequence at the end comes out as U+FFFD."""
        ids = [int(t) for t in ids]
        if not ids:
            return ""
        tokens = (ctypes.c_int32 * len(ids))(*ids)
        size = 8 * len(ids) + 16
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = self._lib.llama_detokenize(self._vocab, tokens, len(ids), buf, size, False,
                                           not skip_special_tokens)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = -n + 1
        raise RuntimeError("llama.cpp could not detokenise the ids")

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            tokenize: bool = False, **kwargs: Any) -> str | list[int]:
        """Render `messages` with the GGUF's chat template (jinja2, as transformers renders it)."""
        if not self.chat_template:
            raise ValueError("this GGUF file has no chat template (tokenizer.chat_template) in its metadata")
        if self._formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            self._formatter = Jinja2ChatFormatter(self.chat_template, self.eos_token, self.bos_token,
                                                  add_generation_prompt=add_generation_prompt)
        self._formatter.add_generation_prompt = add_generation_prompt
        text = self._formatter(messages=list(messages), **kwargs).prompt
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def get_vocab(self) -> dict[str, int]:
        """Token text -> id, as the GGUF stores it (used to check that two models share a vocabulary)."""
        if self._vocab_map is None:
            self._vocab_map = {self._text(t): t for t in range(self.vocab_size)}
        return dict(self._vocab_map)

    def __len__(self) -> int:
        return self.vocab_size
