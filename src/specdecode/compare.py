"""Greedy exactness report: where two greedy outputs first differ and how close the target's top two
logits were there (a near-tie means floating point, not the algorithm, chose differently)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Divergence:
    """First position (0-based, in the new tokens) where two outputs differ, and the target's top-2 logit
    margin at that position given the common prefix."""

    position: int
    tokens: tuple[int, int]
    top2_margin: float


def first_divergence(target: Any, sequence: list[int], a: list[int], b: list[int]) -> Divergence | None:
    """Compare two token lists generated after `sequence` (the tokens the target's cache is fed); None
    when one is a prefix of the other."""
    pos = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    if pos is None:
        return None
    target.reset()
    with torch.inference_mode():
        logits = target.forward(torch.tensor([sequence + a[:pos]], dtype=torch.long))[0, -1].float()
    target.reset()
    top = torch.topk(logits, 2).values
    return Divergence(pos, (a[pos], b[pos]), float(top[0] - top[1]))
