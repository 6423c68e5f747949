"""Test 2: the real seeded engine's samples match the target's exact distribution (G-test), and a
deliberately broken acceptance rule is caught by the same test."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from scipy.stats import power_divergence

import specdecode.acceptance as acceptance
from specdecode import SpeculativeGenerator
from specdecode.sampling import SamplingParams, adjusted_probs
from specdecode.toy import TableLM, random_table

SAMPLES = 20_000
LENGTH = 3
PREFIX = [1]


def exact_distribution(target: TableLM, params: SamplingParams, prefix: list[int] = PREFIX
                       ) -> dict[tuple[int, ...], float]:
    out = {}
    for seq in itertools.product(range(target.vocab_size), repeat=LENGTH):
        w, ctx = 1.0, list(prefix)
        for t in seq:
            w *= float(adjusted_probs(target.logits_after(ctx).unsqueeze(0), params)[0, t])
            ctx.append(t)
        out[seq] = w
    return out


def p_value(target: TableLM, draft, params: SamplingParams, gamma: int, prefix: list[int] = PREFIX,
            drafted: list[int] | None = None) -> float:
    gen = SpeculativeGenerator(target, draft)
    rng = torch.Generator().manual_seed(1234)
    counts: Counter = Counter()
    for _ in range(SAMPLES):
        res = gen.generate(prefix, max_new_tokens=LENGTH, gamma=gamma, generator=rng,
                           temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                           min_p=params.min_p)
        counts[tuple(res.token_ids)] += 1
        if drafted is not None:
            drafted.append(res.stats.drafted)
    exact = exact_distribution(target, params, prefix)
    cells = [s for s, w in exact.items() if w > 0]
    assert set(counts) <= set(cells), "sampled a sequence the target gives probability 0"
    observed = [counts.get(s, 0) for s in cells]
    expected = [exact[s] * SAMPLES for s in cells]
    return float(power_divergence(observed, expected, lambda_="log-likelihood").pvalue)


@pytest.fixture(autouse=True)
def one_thread():
    """The toy tensors are tiny: thread hand-offs would cost more than the arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_pair() -> tuple[TableLM, TableLM]:
    return TableLM(random_table(3, 1, seed=11)), TableLM(random_table(3, 1, seed=12, sharpness=2.5))


@pytest.mark.parametrize(
    "params,gamma",
    [(SamplingParams(temperature=1.0), 3), (SamplingParams(temperature=0.8, top_k=2, top_p=0.9), 2),
     (SamplingParams(temperature=1.2, min_p=0.35), 3)],
    ids=["t1-g3", "topk-topp-g2", "minp-g3"],
)
def test_engine_samples_follow_target(params, gamma):
    target, draft = toy_pair()
    assert p_value(target, draft, params, gamma) > 1e-4


@pytest.mark.parametrize("name", ["ngram", "ngram+model-threshold"])
def test_other_drafters_samples_follow_target(name):
    """A prompt that repeats itself, so the n-gram lookup proposes; a threshold that ends some blocks."""
    from specdecode.drafters import ModelDrafter, NgramDrafter, NgramThenModel

    target, draft = toy_pair()
    drafter = NgramDrafter(max_n=2) if name == "ngram" else NgramThenModel(
        NgramDrafter(max_n=2), ModelDrafter(draft, threshold=0.6), min_match=2)
    drafted: list[int] = []
    assert p_value(target, drafter, SamplingParams(temperature=1.0), 3, [1, 2, 1, 2, 0, 1], drafted) > 1e-4
    assert sum(drafted) > 0 and min(drafted) < max(drafted)  # proposals of varying length


def test_broken_residual_is_detected(monkeypatch):
    """Negative control: residual = p instead of norm(max(0, p - q)) must fail the same test."""
    monkeypatch.setattr(acceptance, "residual", lambda p, q: p.double())
    target, draft = toy_pair()
    assert p_value(target, draft, SamplingParams(temperature=1.0), 3) < 1e-4
