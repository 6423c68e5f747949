"""Incremental detokenisation with stop strings: turns accepted token chunks into safe text pieces."""

from __future__ import annotations

from typing import Any


class TextStream:
    """Accumulates token ids and releases text that can no longer change or be cut by a stop string.

    Decoding is incremental (the prefix-offset method): each token decodes only a short window of the
    latest tokens, so a generation of n tokens costs O(n), not O(n^2). Text that ends in an incomplete
    UTF-8 sequence, or that could be the start of a stop string, is held back until the next tokens decide
    it. `stopped` becomes True once a stop string appears; the text is then cut just before it and
    `token_ids` just after the token that completed it.
    """

    def __init__(self, tokenizer: Any, stop: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self._longest = max((len(s) for s in self.stop), default=0)
        self.token_ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.stopped = False
        self._prefix = 0  # decode windows start here ...
        self._read = 0  # ... and the text of tokens before this index is already in self.text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""

    def _step(self, final: bool = False) -> str:
        """Text the tokens after `_read` add (empty while they end inside a multi-byte character)."""
        if self.tokenizer is None or self._read == len(self.token_ids):
            return ""
        before = self._decode(self.token_ids[self._prefix : self._read])
        after = self._decode(self.token_ids[self._prefix :])
        if after.endswith("\ufffd") and not final:
            return ""
        self._prefix, self._read = self._read, len(self.token_ids)
        return after[len(before) :]

    def _find_stop(self, start: int) -> int:
        """Index of the earliest stop string that ends after `start` (-1 when none)."""
        window = max(0, start - self._longest + 1)
        hits = [h for h in (self.text.find(s, window) for s in self.stop) if h >= 0]
        return min(hits) if hits else -1

    def add(self, ids: list[int]) -> str:
        """Add accepted ids; return the text that is now final."""
        for token in ids:
            self.token_ids.append(int(token))
            old = len(self.text)
            self.text += self._step()
            if self.stop and len(self.text) > old:
                cut = self._find_stop(old)
                if cut >= 0:  # this token completed a stop string: keep the tokens up to it
                    self.stopped = True
                    self.text = self.text[:cut]
                    return self._release(len(self.text))
        safe = len(self.text)
        hold = 0
        for s in self.stop:  # the tail could still become a stop string: hold it back
            for k in range(min(len(s) - 1, safe - self.emitted), hold, -1):
                if self.text[safe - k : safe] == s[:k]:
                    hold = k
                    break
        return self._release(safe - hold)

    def finish(self) -> str:
        """Release everything still held back (generation has ended)."""
        if not self.stopped:
            self.text += self._step(final=True)
            cut = self._find_stop(0) if self.stop else -1
            if cut >= 0:
                self.stopped, self.text = True, self.text[:cut]
        return self._release(len(self.text))

    def _release(self, end: int) -> str:
        piece = self.text[self.emitted : end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return piece
