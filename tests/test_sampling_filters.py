"""`adjusted_probs` against transformers' own logits processors (temperature, top-k, top-p, min-p, in
that order), on random logits with ties and extreme values: the expected distributions come from an
independent implementation, not from the one the engine uses."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from specdecode.sampling import SamplingParams, adjusted_probs


def reference(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    procs = LogitsProcessorList([TemperatureLogitsWarper(p.temperature)])
    if p.top_k:
        procs.append(TopKLogitsWarper(p.top_k))
    if p.top_p < 1.0:
        procs.append(TopPLogitsWarper(p.top_p))
    if p.min_p > 0.0:
        procs.append(MinPLogitsWarper(p.min_p))
    scores = procs(torch.zeros(logits.shape[0], 1, dtype=torch.long), logits.clone())
    return scores.softmax(-1)


def logits_cases(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    normal = torch.randn(6, 50, generator=g) * 3
    ties = torch.randint(0, 4, (6, 50), generator=g).float()  # many exact ties
    extreme = torch.randn(6, 50, generator=g) * 40
    extreme[:, :5] = float("-inf")  # tokens ruled out before any filter
    extreme[0, 7] = 1e4
    return [normal, ties, extreme]


SETTINGS = [SamplingParams(temperature=t, top_k=k, top_p=tp, min_p=mp)
            for t in (0.3, 1.0, 1.7) for k in (0, 1, 5, 49) for tp in (1.0, 0.9, 0.5, 0.01)
            for mp in (0.0, 0.05, 0.5)]


@pytest.mark.parametrize("seed", [0, 1])
def test_filters_match_transformers_processors(seed):
    checked = 0
    for logits in logits_cases(seed):
        for params in SETTINGS:
            ours = adjusted_probs(logits, params)
            theirs = reference(logits, params)
            assert torch.allclose(ours, theirs, atol=1e-6), params
            assert torch.equal(ours > 0, theirs > 0), f"different support for {params}"
            checked += 1
    assert checked == 3 * len(SETTINGS)


def test_greedy_is_the_first_argmax_on_ties():
    logits = torch.tensor([[1.0, 3.0, 3.0, -1.0]])
    assert adjusted_probs(logits, SamplingParams()).tolist() == [[0.0, 1.0, 0.0, 0.0]]
