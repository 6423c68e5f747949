"""Sampling settings and the adjusted next-token distribution they define.

Temperature, top-k, top-p, min-p and greedy are all "sample from an adjusted distribution". The same
adjustment is applied to the target's and the draft's logits, so the verify step only ever compares
adjusted probabilities (see PAPER.md, "Standardised sampling").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TEMPERATURE_MAX = 2.0  # as in OpenAI's API; the server and the library check the same bounds


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen: temperature 0 is greedy (argmax)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, (int, float)) or not 0 <= self.temperature <= TEMPERATURE_MAX:
            raise ValueError(
                f"temperature must be in [0, {TEMPERATURE_MAX}] (0 means greedy), got {self.temperature!r}"
            )
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p!r}")
        if not isinstance(self.min_p, (int, float)) or not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1] (0 disables it), got {self.min_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def adjusted_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Turn logits [..., V] into the adjusted next-token distribution [..., V] (float32).

    Greedy gives a one-hot on the argmax (first index on exact ties, as `torch.argmax`). Otherwise the
    order is temperature, top-k, top-p, min-p, as in transformers' sampling processors. float64 logits
    stay float64; anything else is computed in float32.
    """
    if logits.dtype != torch.float64:
        logits = logits.float()
    if params.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum <= 1.0 - params.top_p
        drop_sorted[..., -1] = False  # always keep the most likely token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    if params.min_p > 0.0:
        floor = params.min_p * probs.max(-1, keepdim=True).values
        probs = probs.masked_fill(probs < floor, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs
