"""Predicted outputs (as in OpenAI's API): the user's guess of the output, e.g. the file being edited,
used as a free draft. The drafter proposes the continuation of the prediction aligned with the text
generated so far; the output stays exactly the target's (a deterministic draft has a one-hot q).

Alignment: a pointer into the prediction advances while the output follows it. After a miss the drafter
re-anchors on the longest suffix of the output that occurs in the prediction: first near the old pointer
(two tokens within `window` tokens, or one token just after the replaced one: a renamed word or a
small insertion rejoins at once), else anywhere with at least `min_n` tokens, preferring the first
occurrence at or after the old pointer. So substitutions, insertions (output text the prediction
lacks) and deletions (prediction text the output skips) all find their way back. An index of the
prediction's n-grams makes each re-anchoring O(max_n log k), never a rescan.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Any

import torch

from .drafters import draft_source

NO_DRAFT = "none"  # the source of a step with nothing to propose: auto-gamma takes a plain step
CONFIRMED = 4  # matched tokens after which a fresh anchor counts as following the prediction


class PredictionDrafter:
    """Drafts from `prediction` (token ids); where the output has left the prediction and no anchor is
    found, it hands over to `fallback` (another drafter, e.g. n-gram or a model), or proposes nothing."""

    name = "prediction"
    lookup_source = True  # its proposals cost a lookup, not a model call: gamma=auto may use long blocks

    def __init__(self, prediction: list[int], fallback: Any = None, max_n: int = 8, min_n: int = 3,
                 window: int = 48) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"prediction anchors need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
        self.prediction = [int(t) for t in prediction]
        self.fallback, self.max_n, self.min_n, self.window = fallback, max_n, min_n, window
        # n-gram -> sorted positions just after each occurrence in the prediction
        self._index: dict[tuple[int, ...], list[int]] = defaultdict(list)
        pred = self.prediction
        for end in range(1, len(pred) + 1):
            for n in range(1, min(max_n, end) + 1):
                self._index[tuple(pred[end - n : end])].append(end)
        self._start = 0  # where the output begins in the sequence
        self._pointer: int | None = 0  # next prediction position the output is expected to follow
        self._last = 0  # the last pointer known, kept while unanchored: re-anchoring prefers what follows it
        self._confirmed = CONFIRMED  # output tokens that followed the prediction since the last anchor
        self._seen = 0  # sequence length at the last alignment

    def begin(self, sequence: list[int], ctx: Any) -> None:
        self._start = len(sequence)
        self._pointer, self._seen, self._last = (0 if self.prediction else None), len(sequence), 0
        self._confirmed = CONFIRMED  # the start of the output is where the prediction starts
        if self.fallback is not None:
            self.fallback.begin(sequence, ctx)
        self._ctx = ctx

    def _align(self, sequence: list[int]) -> None:
        """Move the pointer over the tokens accepted since the last call; re-anchor after a miss."""
        new = sequence[self._seen :]
        self._seen = len(sequence)
        pred, ptr = self.prediction, self._pointer
        for i, token in enumerate(new):
            if ptr is not None and ptr < len(pred) and pred[ptr] == token:
                ptr += 1
                self._confirmed += 1
                continue
            if ptr is not None:
                self._last = ptr
            ptr = self._anchor(sequence, len(sequence) - len(new) + i + 1, self._last)
            self._confirmed = 0
        self._pointer = ptr

    def _anchor(self, sequence: list[int], end: int, old: int) -> int | None:
        """The prediction position after the longest suffix of the output `sequence[:end]` found in it
        (None: no anchor)."""
        longest = min(self.max_n, end - self._start)
        matches = [(n, ends) for n in range(longest, 0, -1)
                   if (ends := self._index.get(tuple(sequence[end - n : end])))]
        for n, ends in matches:  # near the old pointer, shorter matches will do
            at = bisect.bisect_left(ends, old)
            # one token only right after the token the output replaced; two anywhere in the window
            if at < len(ends) and ends[at] <= old + (self.window if n >= 2 else 2):
                return ends[at]
        for n, ends in matches:  # anywhere, with a longer match
            if n < self.min_n:
                break
            at = bisect.bisect_left(ends, old)  # the first occurrence at or after the old pointer
            return ends[at] if at < len(ends) else ends[-1]
        return None

    def anchored(self, sequence: list[int]) -> bool:
        """Whether the next proposal comes from the prediction."""
        self._align(sequence)
        return self._pointer is not None and self._pointer < len(self.prediction)

    def source(self, sequence: list[int]) -> str:
        """"prediction" while the output follows the prediction, "prediction-new" right after a re-anchor
        (until CONFIRMED tokens have matched: auto-gamma learns apart how often fresh anchors hold),
        else the fallback's source, or "none"."""
        if self.anchored(sequence):
            return "prediction" if self._confirmed >= CONFIRMED else "prediction-new"
        return draft_source(self.fallback, sequence) if self.fallback is not None else NO_DRAFT

    def propose(self, sequence: list[int], gamma: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.anchored(sequence):
            assert self._pointer is not None
            block = self.prediction[self._pointer : self._pointer + gamma]
            device = getattr(self._ctx, "device", torch.device("cpu"))
            return torch.tensor(block, dtype=torch.long, device=device), None
        if self.fallback is not None:
            return self.fallback.propose(sequence, gamma)
        return torch.empty(0, dtype=torch.long), None

    def commit(self, sequence: list[int]) -> None:
        self._align(sequence)
        if self.fallback is not None:
            self.fallback.commit(sequence)
