"""The small model protocol the engine talks to; adapters for real frameworks implement it."""

from __future__ import annotations

import inspect
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class CausalLM(Protocol):
    """A causal language model with an append-only KV cache that can be rolled back.

    `forward` appends `input_ids` [1, T] after the `length` cached positions and returns float logits
    [1, T, V] (V = `vocab_size`). `truncate(n)` drops cached positions >= n; `reset()` empties the cache.

    Optional extras the engine uses when present:
    - `tokenizer`: a transformers tokenizer (needed for string prompts, `text`, `stop` and `chat`).
    - `eos_token_ids`: a set of ids that end generation.
    - `begin(prompt_ids) -> list[int]`: start a new sequence from a prompt and return the tokens the
      cache must be fed (encoder-decoder models encode the prompt and return the decoder start).
    - `forward(input_ids, logits_to_keep=k)`: return only the last k positions' logits.
    - `prefix(prompt_ids) -> int | None`: start a sequence keeping the longest prefix of `prompt_ids`
      the cache already holds (at most all but the last token) and return its length; None when the
      model cannot reuse its cache (the prefix cache, `specdecode.cache`).
    """

    vocab_size: int
    length: int

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor: ...

    def truncate(self, length: int) -> None: ...

    def reset(self) -> None: ...


def accepts_logits_to_keep(model: Any) -> bool:
    """Whether `model.forward` takes `logits_to_keep` (cached on the model object)."""
    known = getattr(model, "_specdecode_trims", None)
    if known is None:
        try:
            known = "logits_to_keep" in inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            known = False
        try:
            model._specdecode_trims = known
        except AttributeError:
            pass
    return known


def last_logits(model: Any, ids: torch.Tensor, keep: int, trim: bool) -> torch.Tensor:
    """Last `keep` rows of the model's logits for `ids` [1, T], as [keep, V]."""
    out = model.forward(ids, logits_to_keep=keep) if trim else model.forward(ids)
    return out[0, -keep:]


def start_sequence(model: Any, prompt_ids: list[int], reuse: bool = False) -> list[int]:
    """Start `model` on a new sequence and return the tokens its cache must hold (the prompt, or for an
    encoder-decoder model, which encodes the prompt in `begin`, the decoder's start token). `reuse`:
    keep the longest prefix of the prompt the cache already holds, where the model can (`model.length`
    then says how many positions are kept); otherwise the cache is emptied."""
    if reuse and hasattr(model, "prefix") and model.prefix(list(prompt_ids)) is not None:
        return list(prompt_ids)
    if hasattr(model, "begin"):
        return list(model.begin(prompt_ids))
    model.reset()
    return list(prompt_ids)
