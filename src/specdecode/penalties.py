"""Repetition penalties, applied to the target's logits at every position of a block.

A penalty at a position depends on the tokens before it, so inside a draft block position i counts the
draft tokens before i as if they were accepted: each verified position gets exactly the logits plain
decoding would have had there, and speculative decoding stays exact.

- `presence` / `frequency` (OpenAI): logit -= frequency * count + presence * (count > 0), counting the
  generated tokens (not the prompt), as OpenAI and vLLM do.
- `repeat` (llama.cpp's repeat_penalty): a logit of a token among the last `repeat_last_n` tokens of the
  sequence (prompt included, as llama-server) is divided by it when positive, multiplied when not.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Penalties:
    """Penalty settings; the defaults change nothing."""

    presence: float = 0.0
    frequency: float = 0.0
    repeat: float = 1.0
    repeat_last_n: int = 64

    def __post_init__(self) -> None:
        for name in ("presence", "frequency"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not -2.0 <= value <= 2.0:
                raise ValueError(f"{name}_penalty must be in [-2, 2], got {value!r}")
        if not isinstance(self.repeat, (int, float)) or self.repeat <= 0:
            raise ValueError(f"repeat_penalty must be > 0 (1 disables it), got {self.repeat!r}")
        if not isinstance(self.repeat_last_n, int) or self.repeat_last_n < 0:
            raise ValueError(f"repeat_last_n must be an integer >= 0, got {self.repeat_last_n!r}")

    @property
    def active(self) -> bool:
        return self.presence != 0 or self.frequency != 0 or (self.repeat != 1.0 and self.repeat_last_n > 0)

    def apply(self, logits: torch.Tensor, sequence: list[int], generated: int, draft: list[int]
              ) -> torch.Tensor:
        """Penalised copy of `logits` [len(draft)+1, V]: row i follows `sequence` (its last `generated`
        tokens being the output so far) and draft[:i]."""
        out = (logits if logits.dtype == torch.float64 else logits.float()).clone()
        rows = len(draft) + 1
        device = out.device
        if self.repeat != 1.0 and self.repeat_last_n > 0:
            windows = [set((sequence + draft[:i])[-self.repeat_last_n :]) for i in range(rows)]
            ids = sorted(set().union(*windows))
            if ids:
                index = torch.tensor(ids, device=device)
                member = torch.tensor([[t in w for t in ids] for w in windows], device=device)
                vals = out[:, index]
                hit = torch.where(vals > 0, vals / self.repeat, vals * self.repeat)
                out[:, index] = torch.where(member, hit, vals)
        if self.presence != 0 or self.frequency != 0:
            base = Counter(sequence[len(sequence) - generated :] if generated else [])
            ids = sorted(set(base) | set(draft))
            if ids:
                col = {t: j for j, t in enumerate(ids)}
                counts = torch.zeros(rows, len(ids), dtype=out.dtype)
                counts[:] = torch.tensor([float(base.get(t, 0)) for t in ids])
                for i, t in enumerate(draft):  # rows after position i have seen draft token i
                    counts[i + 1 :, col[t]] += 1
                counts = counts.to(device)
                index = torch.tensor(ids, device=device)
                out[:, index] -= self.frequency * counts + self.presence * (counts > 0).to(out.dtype)
        return out
