"""Plain vs speculative, side by side: speeds, speedup, and a greedy exactness report that says where two
greedy outputs first differ and how close the target's top two logits were there (a near-tie means
floating point, not the algorithm, chose differently)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from .protocol import start_sequence
from .results import GenerationResult

# Largest top-2 logit margin at which a greedy divergence still counts as a floating-point near-tie, per
# dtype of the target: a few units in the last place of logits of magnitude 16-32 (bf16 ulp there: 0.125).
# A k-token target call and k one-token calls round differently, so such ties can flip either way.
NEAR_TIE_MARGIN = {torch.bfloat16: 0.5, torch.float16: 0.1, torch.float32: 1e-3, torch.float64: 1e-9}
# llama.cpp computes in f32, but a k-token call quantises activations and blocks its matrix products
# differently from k one-token calls (GEMM vs GEMV kernels on the GGUF's quantised weights), so its logits
# drift much more than f32 rounding. Measured with benchmarks/logit_drift.py on the built-in 1.5B Q4_K_M
# (16-token blocks against one-token calls, 256 positions, 2026-11-29, AVX-512 BF16 CPU): the top-2 margin
# moved by 0.069 at the median, 0.29 at the 99th percentile and 0.65 at most (BENCHMARKS.md).
LLAMA_CPP_NEAR_TIE_MARGIN = 0.75


def near_tie_margin(target: Any) -> float:
    """The largest top-2 logit margin at which `target`'s greedy choice may flip with the call shape."""
    if getattr(target, "deterministic", False):
        return 0.0  # batch-invariant kernels: the call shape changes no logit
    if getattr(target, "backend", "") == "llama.cpp":
        return LLAMA_CPP_NEAR_TIE_MARGIN
    return NEAR_TIE_MARGIN.get(getattr(target, "dtype", None), NEAR_TIE_MARGIN[torch.float32])


@dataclass
class Divergence:
    """First position (0-based, in the new tokens) where two outputs differ, the two tokens there, and the
    target's top-2 logit margin at that position given the common prefix."""

    position: int
    tokens: tuple[int, int]
    top2_margin: float
    texts: tuple[str, str] | None = None  # the two tokens decoded, when a tokenizer is at hand


def first_divergence(target: Any, prompt_ids: list[int], a: list[int], b: list[int]) -> Divergence | None:
    """Compare two token lists generated after `prompt_ids`; None when one is a prefix of the other.

    Leaves the target's cache empty.
    """
    pos = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    if pos is None:
        return None
    sequence = start_sequence(target, prompt_ids)
    with torch.inference_mode():
        logits = target.forward(torch.tensor([sequence + a[:pos]], dtype=torch.long))[0, -1].float()
    target.reset()
    top = torch.topk(logits, 2).values
    return Divergence(pos, (a[pos], b[pos]), float(top[0] - top[1]))


@dataclass
class Comparison:
    """Speeds of one plain and one speculative run of the same prompt, and (greedy only) whether their
    outputs are identical; `divergence` is set when they are not."""

    plain_tokens_per_s: float
    speculative_tokens_per_s: float
    speedup: float
    greedy: bool
    identical: bool | None
    divergence: Divergence | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """Two human-readable lines."""
        line = (
            f"plain {self.plain_tokens_per_s:.2f} tok/s, speculative {self.speculative_tokens_per_s:.2f} "
            f"tok/s: speedup {self.speedup:.2f}x"
        )
        if not self.greedy:
            return line + "\nsampled outputs are not compared token by token (each run draws its own sample)"
        if self.identical:
            return line + "\ngreedy outputs identical"
        div = self.divergence
        if div is None:  # one output is a prefix of the other (a stop or budget hit earlier)
            return line + "\ngreedy outputs agree up to the shorter one's end"
        plain, spec = (repr(t) for t in div.texts) if div.texts else div.tokens  # (plain, speculative)
        return line + (
            f"\ngreedy outputs differ from new token {div.position} (speculative {spec}, plain {plain}); "
            f"the target's top-2 logit margin there is {div.top2_margin:.4f}, a floating-point near-tie "
            "if it is within the rounding of the dtype"
        )


def compare(
    target: Any, prompt_ids: list[int], plain: GenerationResult, speculative: GenerationResult, greedy: bool
) -> Comparison:
    """Compare two runs of `target` on `prompt_ids`, plain and speculative."""
    p, s = plain.stats.tokens_per_s, speculative.stats.tokens_per_s
    identical = divergence = None
    if greedy:
        identical = plain.token_ids == speculative.token_ids
        if not identical:
            divergence = first_divergence(target, prompt_ids, plain.token_ids, speculative.token_ids)
            tokenizer = getattr(target, "tokenizer", None)
            if divergence is not None and tokenizer is not None:
                a, b = divergence.tokens
                divergence.texts = (tokenizer.decode([a]), tokenizer.decode([b]))
    return Comparison(p, s, s / p if p > 0 else 0.0, greedy, identical, divergence)
