"""Adapter exposing a transformers model (decoder-only or encoder-decoder) as a `CausalLM`."""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch

from ..cache import common_prefix

log = logging.getLogger("specdecode.cache")


class HFModel:
    """A transformers causal or seq2seq LM with a rollback-able KV cache.

    `model` is the wrapped `PreTrainedModel`, `tokenizer` its tokenizer (or None when prompts are ids).
    For encoder-decoder models `begin(prompt_ids)` encodes the prompt once and the engine then extends
    the decoder sequence, which starts at the model's decoder start token.
    """

    backend = "transformers"

    def __init__(self, model: Any, tokenizer: Any = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        config = model.config
        self.is_encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        self.device = next(model.parameters()).device
        head = model.get_output_embeddings()
        self.vocab_size = int(head.weight.shape[0]) if head is not None else int(config.vocab_size)
        self.eos_token_ids = _eos_token_ids(model, tokenizer)
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._has_logits_to_keep = "logits_to_keep" in params
        self._cache: Any = None
        self._encoder_out: Any = None
        self._encoder_mask: torch.Tensor | None = None
        self._tokens: list[int] = []
        self._said_no_reuse = False

    @property
    def length(self) -> int:
        """Positions in the KV cache."""
        return len(self._tokens)

    @property
    def tokens(self) -> list[int]:
        """The token ids whose KV the cache holds (decoder tokens for an encoder-decoder model)."""
        return list(self._tokens)

    def prefix(self, prompt_ids: list[int]) -> int | None:
        """Start a sequence keeping the longest common prefix of the cache and `prompt_ids` (at most all
        but its last token); how many positions were kept, or None for an encoder-decoder model (its
        decoder cache depends on the whole prompt: the caller starts afresh)."""
        if self.is_encoder_decoder:
            if not self._said_no_reuse:
                log.info("%s: no prefix reuse: an encoder-decoder model reads the whole prompt", self.name)
                self._said_no_reuse = True
            return None
        keep = min(common_prefix(self._tokens, prompt_ids), len(prompt_ids) - 1)
        if keep <= 0:
            self.reset()
            return 0
        self.truncate(keep)
        return keep

    @property
    def name(self) -> str:
        return str(getattr(self.model.config, "_name_or_path", "") or type(self.model).__name__)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def max_length(self) -> int | None:
        """Longest sequence the model's positions support, where the config says."""
        for key in ("max_position_embeddings", "n_positions"):
            value = getattr(self.model.config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def reset(self) -> None:
        self._cache = None
        self._encoder_out = None
        self._encoder_mask = None
        self._tokens = []

    @torch.inference_mode()
    def begin(self, prompt_ids: list[int]) -> list[int]:
        """Start a sequence from `prompt_ids`; returns the tokens to feed the cache."""
        self.reset()
        if not self.is_encoder_decoder:
            return list(prompt_ids)
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        self._encoder_mask = torch.ones_like(ids)
        self._encoder_out = self.model.get_encoder()(input_ids=ids, attention_mask=self._encoder_mask)
        start = self.model.config.decoder_start_token_id
        if start is None:
            raise ValueError(
                f"{self.name}: encoder-decoder model has no decoder_start_token_id in its config"
            )
        return [int(start)]

    def _new_cache(self) -> Any:
        from transformers import DynamicCache, EncoderDecoderCache

        if self.is_encoder_decoder:
            return EncoderDecoderCache(DynamicCache(), DynamicCache())
        try:
            cache = DynamicCache(config=self.model.config)
        except TypeError:  # transformers < 4.56
            return DynamicCache()
        if any("Sliding" in type(layer).__name__ for layer in getattr(cache, "layers", [])):
            # a sliding-window layer drops old positions and refuses to crop once its window is full; a
            # full-length cache keeps them (the attention mask still applies the window), so rollback works
            return DynamicCache()
        return cache

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, logits_to_keep: int = 0) -> torch.Tensor:
        """Append `input_ids` [1, T]; return logits [1, T, V] (or the last `logits_to_keep` rows)."""
        if self.is_encoder_decoder and self._encoder_out is None:
            raise RuntimeError(f"{self.name}: call begin(prompt_ids) before forward on a seq2seq model")
        if self._cache is None:
            self._cache = self._new_cache()
        input_ids = input_ids.to(self.device)
        steps = input_ids.shape[1]
        kwargs: dict[str, Any] = {self._cache_kwarg: self._cache, "use_cache": True}
        if logits_to_keep and self._has_logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        if self.is_encoder_decoder:
            out = self.model(
                encoder_outputs=self._encoder_out,
                attention_mask=self._encoder_mask,
                decoder_input_ids=input_ids,
                **kwargs,
            )
        else:
            positions = torch.arange(self.length, self.length + steps, device=self.device)
            out = self.model(input_ids=input_ids, position_ids=positions.unsqueeze(0), **kwargs)
        self._tokens.extend(int(t) for t in input_ids[0].tolist())
        logits = out.logits
        if logits_to_keep and logits.shape[1] > logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return logits

    def truncate(self, length: int) -> None:
        """Drop cached positions >= `length`."""
        if length > self.length or length < 0:
            raise ValueError(f"cannot truncate a cache of {self.length} positions to {length}")
        if length == self.length:
            return
        if length == 0:
            self._cache = None
        else:
            _crop(self._cache, length, self.length)
        del self._tokens[length:]


def _crop(cache: Any, length: int, current: int) -> None:
    """Crop a transformers cache to `length` positions, across the crop(max_length) and
    crop(-tokens_to_remove) conventions of different transformers versions."""
    params = inspect.signature(cache.crop).parameters
    if "max_length" in params:
        cache.crop(length)
    else:
        cache.crop(length - current)


def _eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    sources = [generation_eos if generation_eos is not None else model.config.eos_token_id]
    if tokenizer is not None:
        sources.append(getattr(tokenizer, "eos_token_id", None))
    for value in sources:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids
