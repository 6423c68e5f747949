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

Renames: at each re-anchoring the drafter learns what the output put in place of the prediction's span
(a few tokens each), and drafts the later occurrences of that span with the replacement applied; an
occurrence the output keeps unchanged forgets it. Where the output leaves the prediction, a model
fallback drafts only after `model_after` new tokens: it would first have to read all the text the
prediction drafted, which a short detour never repays.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Any

import torch

from .drafters import draft_source
from .gamma import is_lookup

NO_DRAFT = "none"  # the source of a step with nothing to propose: auto-gamma takes a plain step
CONFIRMED = 4  # matched tokens after which a fresh anchor counts as following the prediction
MAX_SUB, MAX_SUBS = 8, 16  # longest learned replacement (tokens), most replacements kept
MODEL_AFTER = 32  # unanchored output tokens before a model fallback drafts (it must first read them all)


class PredictionDrafter:
    """Drafts from `prediction` (token ids); where the output has left the prediction and no anchor is
    found, it hands over to `fallback` (another drafter, e.g. n-gram or a model), or proposes nothing."""

    name = "prediction"
    lookup_source = True  # its proposals cost a lookup, not a model call: gamma=auto may use long blocks

    def __init__(self, prediction: list[int], fallback: Any = None, max_n: int = 8, min_n: int = 3,
                 window: int = 48, model_after: int = MODEL_AFTER) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"prediction anchors need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
        self.prediction = [int(t) for t in prediction]
        self.fallback, self.max_n, self.min_n, self.window = fallback, max_n, min_n, window
        self.model_after = model_after
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
        self._held = 0  # sequence length when the output last followed the prediction
        self._queue: list[int] = []  # the rest of a learned replacement being followed
        self._subs: dict[tuple[int, ...], tuple[int, ...]] = {}  # learned span -> replacement (renames)
        self._miss: int | None = None  # sequence index where the output left the prediction

    def begin(self, sequence: list[int], ctx: Any) -> None:
        self._start = len(sequence)
        self._pointer, self._seen, self._last = (0 if self.prediction else None), len(sequence), 0
        self._held = len(sequence)
        self._queue, self._subs, self._miss = [], {}, None
        self._confirmed = CONFIRMED  # the start of the output is where the prediction starts
        if self.fallback is not None:
            self.fallback.begin(sequence, ctx)
        self._ctx = ctx

    def _align(self, sequence: list[int]) -> None:
        """Move the pointer over the tokens accepted since the last call (through learned substitutions);
        re-anchor after a miss, learning what the output put in place of the prediction's span."""
        new = sequence[self._seen :]
        self._seen = len(sequence)
        pred, ptr = self.prediction, self._pointer
        for i, token in enumerate(new):
            at = len(sequence) - len(new) + i  # this token's index in the sequence
            if ptr is not None and self._queue:  # inside a substitution
                if self._queue[0] == token:
                    self._queue.pop(0)
                    self._confirmed, self._held = self._confirmed + 1, at + 1
                    continue
                self._queue.clear()
            elif ptr is not None and ptr < len(pred):
                sub = self._substitution(ptr)
                if pred[ptr] == token:
                    if sub is not None and sub[1][0] != token:  # the output kept this occurrence
                        del self._subs[sub[0]]
                    ptr += 1
                    self._confirmed, self._held = self._confirmed + 1, at + 1
                    continue
                if sub is not None and sub[1][0] == token:  # the learned replacement again
                    ptr += len(sub[0])
                    self._queue = list(sub[1][1:])
                    self._confirmed, self._held = self._confirmed + 1, at + 1
                    continue
            if ptr is not None:
                self._last, self._miss = ptr, at
            found = self._anchor(sequence, at + 1, self._last)
            ptr = None if found is None else found[0]
            if found is not None and self._miss is not None:
                self._learn(self._last, found[0] - found[1], sequence[self._miss : at + 1 - found[1]])
                self._miss = None
            self._confirmed = 0
        if ptr is not None and ptr < len(pred):
            self._held = len(sequence)
        self._pointer = ptr

    def _substitution(self, ptr: int) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """The learned (span, replacement) whose span starts at prediction position `ptr`, if any."""
        for old, rep in reversed(self._subs.items()):  # the latest learned first
            if tuple(self.prediction[ptr : ptr + len(old)]) == old:
                return old, rep
        return None

    def _learn(self, start: int, end: int, output: list[int]) -> None:
        """The output replaced prediction[start:end] by `output`: remember a short replacement (a renamed
        identifier, a changed literal) to draft it wherever the span comes again."""
        if not 0 <= start <= end:
            return
        old, rep = self.prediction[start:end], list(output)
        while old and rep and old[0] == rep[0]:
            old, rep = old[1:], rep[1:]
        while old and rep and old[-1] == rep[-1]:
            old, rep = old[:-1], rep[:-1]
        if old and rep and len(old) <= MAX_SUB and len(rep) <= MAX_SUB:
            self._subs.pop(tuple(old), None)
            self._subs[tuple(old)] = tuple(rep)
            while len(self._subs) > MAX_SUBS:
                del self._subs[next(iter(self._subs))]

    def _expected(self, gamma: int) -> list[int]:
        """The next `gamma` tokens the output is expected to take: the rest of a substitution, then the
        prediction from the pointer with the learned substitutions applied."""
        assert self._pointer is not None
        block, ptr, pred = list(self._queue[:gamma]), self._pointer, self.prediction
        while len(block) < gamma and ptr < len(pred):
            sub = self._substitution(ptr) if self._subs else None
            if sub is not None:
                block += sub[1]
                ptr += len(sub[0])
            else:
                block.append(pred[ptr])
                ptr += 1
        return block[:gamma]

    def _anchor(self, sequence: list[int], end: int, old: int) -> tuple[int, int] | None:
        """(the prediction position after the longest suffix of the output `sequence[:end]` found in it,
        the suffix's length); None: no anchor."""
        longest = min(self.max_n, end - self._start)
        matches = [(n, ends) for n in range(longest, 0, -1)
                   if (ends := self._index.get(tuple(sequence[end - n : end])))]
        for n, ends in matches:  # near the old pointer, shorter matches will do
            at = bisect.bisect_left(ends, old)
            # one token only right after the token the output replaced; two anywhere in the window
            if at < len(ends) and ends[at] <= old + (self.window if n >= 2 else 2):
                return ends[at], n
        for n, ends in matches:  # anywhere, with a longer match
            if n < self.min_n:
                break
            at = bisect.bisect_left(ends, old)  # the first occurrence at or after the old pointer
            return (ends[at] if at < len(ends) else ends[-1]), n
        return None

    def anchored(self, sequence: list[int]) -> bool:
        """Whether the next proposal comes from the prediction."""
        self._align(sequence)
        return self._pointer is not None and (bool(self._queue) or self._pointer < len(self.prediction))

    def source(self, sequence: list[int]) -> str:
        """"prediction" while the output follows the prediction, "prediction-new" right after a re-anchor
        (until CONFIRMED tokens have matched: auto-gamma learns apart how often fresh anchors hold),
        else the fallback's source, or "none"."""
        if self.anchored(sequence):
            return "prediction" if self._confirmed >= CONFIRMED else "prediction-new"
        return self._fallback_source(sequence)

    def _fallback_source(self, sequence: list[int]) -> str:
        """The fallback's source, or "none" for a model draft before `model_after` unanchored tokens: a
        model draft that skipped the anchored text must first read it all (priced nowhere else), which
        only a long stretch of new text can repay; a short detour (a renamed word, a changed line) is
        decoded plainly or by lookups until the prediction is found again."""
        if self.fallback is None:
            return NO_DRAFT
        source = draft_source(self.fallback, sequence)
        if source != NO_DRAFT and not is_lookup(source) and len(sequence) - self._held < self.model_after:
            return NO_DRAFT
        return source

    def propose(self, sequence: list[int], gamma: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.anchored(sequence):
            assert self._pointer is not None
            block = self._expected(gamma)
            device = getattr(self._ctx, "device", torch.device("cpu"))
            return torch.tensor(block, dtype=torch.long, device=device), None
        if self._fallback_source(sequence) != NO_DRAFT:
            return self.fallback.propose(sequence, gamma)
        return torch.empty(0, dtype=torch.long), None

    def commit(self, sequence: list[int]) -> None:
        self._align(sequence)
        if self.fallback is not None:
            self.fallback.commit(sequence)
