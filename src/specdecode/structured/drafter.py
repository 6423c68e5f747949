"""Tokens a grammar forces, drafted for free.

Where the grammar leaves one way on (a JSON key, the punctuation around it, the rest of an enum value
once its start is chosen), llguidance reports the forced tokens; they are proposed as a draft from the
source "grammar", verified in one target call like any other draft, and (the target's masked
distribution being one-hot on them) accepted. The forced text's last bytes, which a longer token could
also start (the ` "` before a string value), follow as their own tokens: likely, not certain.
Elsewhere the wrapped drafter proposes; a deterministic proposal is cut at its first token the grammar
forbids (that token would be rejected for certain, and with a one-hot q the residual there is the
target's own distribution, so the cut changes nothing but the wasted rows). A model draft samples
within the grammar itself (`DraftContext.grammar`).
"""

from __future__ import annotations

from typing import Any

import torch

from ..drafters import DraftContext, draft_source

SOURCE = "grammar"


class GrammarDrafter:
    """Drafts the grammar's forced tokens, else what `fallback` (any drafter, or None) proposes within the
    grammar. `matcher`: the generation's `GrammarMatcher`, kept by the engine at the accepted sequence."""

    name = SOURCE
    lookup_source = True  # forced tokens cost a lookup: gamma=auto may choose long blocks for them

    def __init__(self, fallback: Any, matcher: Any, forced: bool = True) -> None:
        self.fallback, self.matcher, self.use_forced = fallback, matcher, forced
        self._device = torch.device("cpu")

    def begin(self, sequence: list[int], ctx: DraftContext) -> None:
        self._device = ctx.device
        if self.fallback is not None:
            self.fallback.begin(sequence, ctx)

    def _forced(self) -> list[int]:
        return self.matcher.forced_draft() if self.use_forced else []

    def source(self, sequence: list[int]) -> str:
        """"grammar" when the grammar forces the next tokens, else the fallback's source ("none" without)."""
        if self._forced():
            return SOURCE
        if self.matcher.stopped or self.fallback is None:
            return "none"
        return draft_source(self.fallback, sequence)

    def propose(self, sequence: list[int], gamma: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        forced = self._forced()
        if forced:
            return torch.tensor(forced[:gamma], dtype=torch.long, device=self._device), None
        if self.fallback is None or self.matcher.stopped:
            return torch.empty(0, dtype=torch.long, device=self._device), None
        tokens, q = self.fallback.propose(sequence, gamma)
        if q is None and tokens.numel():
            tokens = tokens[: self.matcher.valid_prefix(tokens.tolist())]
        return tokens, q

    def commit(self, sequence: list[int]) -> None:
        if self.fallback is not None:
            self.fallback.commit(sequence)
