"""Toy causal LMs defined by explicit conditional probability tables (for tests and quick benchmarks)."""

from __future__ import annotations

import torch


class TableLM:
    """A `CausalLM` whose next-token distribution depends only on the last `context` tokens.

    `table` has shape (V,) * context + (V,): table[a, b] is the distribution after "... a b". Positions
    before the start of the sequence read as token 0. Counts every processed position in `processed`.
    """

    def __init__(self, table: torch.Tensor, eos_token_ids: set[int] | None = None) -> None:
        if table.dim() < 2 or len(set(table.shape)) != 1:
            raise ValueError(f"table must have shape (V,)*context + (V,), got {tuple(table.shape)}")
        self.table = table.double() / table.double().sum(-1, keepdim=True)
        self.context = table.dim() - 1
        self.vocab_size = table.shape[-1]
        self.eos_token_ids = set(eos_token_ids or ())
        self.device = torch.device("cpu")
        self.tokens: list[int] = []
        self.length = 0
        self.processed = 0
        self.calls = 0

    def probs_after(self, tokens: list[int]) -> torch.Tensor:
        """The next-token distribution after the sequence `tokens`."""
        ctx = ([0] * self.context + list(tokens))[-self.context :]
        return self.table[tuple(ctx)]

    def logits_after(self, tokens: list[int]) -> torch.Tensor:
        return self.probs_after(tokens).log()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = []
        for token in input_ids.view(-1).tolist():
            self.tokens.append(int(token))
            rows.append(self.logits_after(self.tokens))
        self.length = len(self.tokens)
        self.processed += len(rows)
        self.calls += 1
        return torch.stack(rows).unsqueeze(0)

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} positions to {length}")
        del self.tokens[length:]
        self.length = length

    def reset(self) -> None:
        self.truncate(0)


def random_table(vocab: int, context: int, seed: int, sharpness: float = 1.0) -> torch.Tensor:
    """A random conditional probability table; larger `sharpness` gives peakier distributions."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn((vocab,) * (context + 1), generator=gen, dtype=torch.float64) * sharpness
    return logits.softmax(-1)
