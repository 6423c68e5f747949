"""Which replica already read a prompt's prefix: an index of chained block hashes, kept by the router.

A prompt's routing key is its text (a chat's roles and contents, or a completion's prompt); it is cut
into blocks of `block_chars` characters, and block k is named by a hash of blocks 0..k, so one lookup per
block finds the longest prefix a replica was sent. Memory is bounded: the least recently used blocks go
first.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RoutedCall:
    """A completion request on its way to an engine replica: its JSON body, whether it is a chat, and the
    text the router matches prefixes on."""

    chat: bool
    body: dict[str, Any]
    key: str = field(default="")


def affinity_key(body: dict[str, Any], chat: bool) -> str:
    """The text whose prefix decides where a request goes: what the prompt starts with, in order (the
    tools, then each message's role and content; or the completion prompt)."""
    if not chat:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            return prompt[0]
        return json.dumps(prompt) if prompt is not None else ""
    parts = [json.dumps(body["tools"], sort_keys=True)] if body.get("tools") else []
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if not isinstance(content, str):
            content = json.dumps(content, sort_keys=True)
        parts.append(f"<{message.get('role', '')}>{content}")
    return "\n".join(parts)


class PrefixIndex:
    """Replica ids by the prompt prefixes they were sent, at `block_chars` granularity, for at most
    `max_blocks` blocks."""

    def __init__(self, block_chars: int = 128, max_blocks: int = 200_000) -> None:
        if block_chars < 1 or max_blocks < 1:
            raise ValueError(f"block_chars and max_blocks must be >= 1, got {block_chars} and {max_blocks}")
        self.block_chars, self.max_blocks = block_chars, max_blocks
        self._blocks: OrderedDict[int, set[str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def hashes(self, key: str) -> list[int]:
        """The chained hashes of `key`'s whole blocks."""
        out, h, size = [], 0, self.block_chars
        for start in range(0, len(key) - size + 1, size):
            h = hash((h, key[start : start + size]))
            out.append(h)
        return out

    def record(self, key: str, replica: str) -> None:
        """Note that `replica` was sent a prompt starting with `key`."""
        for h in self.hashes(key):
            holders = self._blocks.get(h)
            if holders is None:
                holders = self._blocks[h] = set()
            else:
                self._blocks.move_to_end(h)
            holders.add(replica)
        while len(self._blocks) > self.max_blocks:
            self._blocks.popitem(last=False)

    def match(self, key: str, among: Iterable[str]) -> tuple[list[str], int]:
        """The replicas of `among` that were sent the longest prefix of `key`, and its length in characters
        (0 and no replicas when none was sent its first block)."""
        live = set(among)
        best: list[str] = []
        depth = 0
        for k, h in enumerate(self.hashes(key)):
            holders = self._blocks.get(h)
            found = sorted(holders & live) if holders else []
            if not found:
                break
            best, depth = found, k + 1
        return best, depth * self.block_chars

    def forget(self, keep: Iterable[str]) -> None:
        """Drop every replica but those of `keep` (the ones still running)."""
        keep = set(keep)
        for h in list(self._blocks):
            holders = self._blocks[h] & keep
            if holders:
                self._blocks[h] = holders
            else:
                del self._blocks[h]
