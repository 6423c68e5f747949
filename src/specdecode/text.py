"""Incremental detokenisation with stop strings: turns accepted token chunks into safe text pieces."""

from __future__ import annotations

from typing import Any


class TextStream:
    """Accumulates token ids and releases text that can no longer change or be cut by a stop string.

    Text that ends in an incomplete UTF-8 sequence, or that could be the start of a stop string, is held
    back until the next tokens decide it. `stopped` becomes True once a stop string appears; the text is
    then cut just before it and `token_ids` just after the token that completed it.
    """

    def __init__(self, tokenizer: Any, stop: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.token_ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _find_stop(self, text: str) -> int:
        hits = [text.find(s) for s in self.stop]
        hits = [h for h in hits if h >= 0]
        return min(hits) if hits else -1

    def add(self, ids: list[int]) -> str:
        """Add accepted ids; return the text that is now final."""
        before = len(self.token_ids)
        self.token_ids.extend(ids)
        self.text = self._decode(self.token_ids)
        cut = self._find_stop(self.text) if self.stop else -1
        if cut >= 0:
            self.stopped = True
            # keep only the tokens up to the one that completed the stop string
            for end in range(before + 1, len(self.token_ids) + 1):
                if self._find_stop(self._decode(self.token_ids[:end])) >= 0:
                    del self.token_ids[end:]
                    break
            self.text = self.text[:cut]
            return self._release(len(self.text))
        safe = len(self.text)
        while safe > self.emitted and self.text[safe - 1] == "\ufffd":
            safe -= 1
        hold = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, safe - self.emitted), hold, -1):
                if self.text[safe - k : safe] == s[:k]:
                    hold = k
                    break
        return self._release(safe - hold)

    def finish(self) -> str:
        """Release everything still held back (generation has ended)."""
        return self._release(len(self.text))

    def _release(self, end: int) -> str:
        piece = self.text[self.emitted : end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return piece
