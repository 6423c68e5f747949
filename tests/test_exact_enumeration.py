"""Test 1: the exact output distribution of the real engine, by enumeration (no sampling): every random
draw of a generation becomes an enumerated choice, so the product itself, not a model of it, is proven
to give the target's distribution."""

from __future__ import annotations

import itertools

import pytest
import torch

import specdecode.acceptance as v
from specdecode import SpeculativeGenerator
from specdecode.drafters import NgramDrafter
from specdecode.sampling import SamplingParams, adjusted_probs
from specdecode.toy import TableLM, random_table

LENGTH = 3


class Oracle:
    """Stands in for every random draw of one generation: each draw becomes a choice among its outcomes,
    taken from `path` (first outcome past its end), and `weight` is the probability of the whole path."""

    def __init__(self, path: list[int]) -> None:
        self.path, self.pos, self.weight = list(path), 0, 1.0
        self.branching: list[int] = []
        self._pending: tuple[int, int] | None = None  # (accepted count chosen, gamma) awaiting its acc

    def choose(self, options: int) -> int:
        if self.pos == len(self.path):
            self.path.append(0)
        self.branching.append(options)
        self.pos += 1
        return self.path[self.pos - 1]

    def multinomial(self, probs: torch.Tensor, num_samples: int, generator=None) -> torch.Tensor:
        assert probs.dim() == 2 and probs.shape[0] == 1 and num_samples == 1
        support = (probs[0] > 0).nonzero().view(-1)
        pick = self.choose(len(support))
        self.weight *= float(probs[0, support[pick]]) / float(probs[0].sum())
        return support[pick].view(1, 1)

    def rand(self, batch: int, gamma: int, dtype=None, device=None, generator=None) -> torch.Tensor:
        """The uniforms of one verify: outcome n accepts n drafts, then rejects (n < gamma)."""
        assert batch == 1
        n = self.choose(gamma + 1)
        self._pending = (n, gamma)
        u = torch.zeros(1, gamma, dtype=torch.float64)
        if n < gamma:
            u[0, n] = 1.0  # not below any acceptance probability: a rejection
        return u

    def weigh_acceptance(self, acc: torch.Tensor) -> None:
        """The probability of the outcome `rand` chose, now that the acceptance probabilities are known."""
        assert self._pending is not None
        n, gamma = self._pending
        a = acc[0].tolist()
        for i in range(n):
            self.weight *= a[i]
        if n < gamma:
            self.weight *= 1.0 - a[n]
        self._pending = None


def speculative_distribution(target, draft, params, gamma, prefix, length):
    """P(output = s) for every sequence s of `length` new tokens, from the real engine: SpeculativeGenerator,
    DecodeLoop, ModelDrafter (or a callable drafter) and verify, with every random draw (the draft's
    samples, the uniforms, the resample or bonus) replaced by an enumerated choice, depth first."""
    result: dict[tuple[int, ...], float] = {}
    gen = SpeculativeGenerator(target, draft)
    real_acceptance = v.acceptance_probs
    stack: list[list[int]] = [[]]
    with pytest.MonkeyPatch.context() as mp:
        while stack:
            path = stack.pop()
            oracle = Oracle(path)

            def acceptance(p, q, x, oracle=oracle):
                acc = real_acceptance(p, q, x)
                oracle.weigh_acceptance(acc)
                return acc

            mp.setattr(torch, "multinomial", oracle.multinomial)
            mp.setattr(torch, "rand", oracle.rand)
            mp.setattr(v, "acceptance_probs", acceptance)
            res = gen.generate(list(prefix), max_new_tokens=length, gamma=gamma, seed=0,
                               temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                               min_p=params.min_p)
            for k in range(len(path), len(oracle.path)):  # the outcomes not taken, to run later
                stack += [oracle.path[:k] + [alt] for alt in range(1, oracle.branching[k])]
            if oracle.weight > 0:
                out = tuple(res.token_ids)
                result[out] = result.get(out, 0.0) + oracle.weight
    return result


def target_distribution(target, params, prefix, length):
    out = {}
    for seq in itertools.product(range(target.vocab_size), repeat=length):
        w, ctx = 1.0, list(prefix)
        for t in seq:
            w *= float(adjusted_probs(target.logits_after(ctx).unsqueeze(0), params)[0, t])
            ctx.append(t)
        if w > 0:
            out[seq] = w
    return out


SETTINGS = [
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.7, top_k=3, top_p=0.9),
    SamplingParams(temperature=1.3, min_p=0.1),
    SamplingParams(temperature=0.0),
]


@pytest.mark.parametrize("gamma", [1, 2, 3, 4])
@pytest.mark.parametrize("params", SETTINGS, ids=["t1", "topk-topp", "minp", "greedy"])
@pytest.mark.parametrize("vocab,context", [(3, 1), (4, 2), (5, 1)])
def test_speculative_distribution_equals_target(gamma, params, vocab, context):
    target = TableLM(random_table(vocab, context, seed=vocab * 10 + context))
    draft = TableLM(random_table(vocab, context, seed=vocab * 10 + context + 1, sharpness=2.0))
    prefix = [1]
    spec = speculative_distribution(target, draft, params, gamma, prefix, LENGTH)
    exact = target_distribution(target, params, prefix, LENGTH)
    assert abs(sum(spec.values()) - 1.0) < 1e-9
    for seq in set(spec) | set(exact):
        assert abs(spec.get(seq, 0.0) - exact.get(seq, 0.0)) < 1e-9, seq


def _ngram(seq, g):
    drafter = NgramDrafter(max_n=2)
    drafter.begin(seq)
    return drafter.lookup(seq, g)


@pytest.mark.parametrize("gamma", [1, 2, 4])
@pytest.mark.parametrize("params", SETTINGS, ids=["t1", "topk-topp", "minp", "greedy"])
@pytest.mark.parametrize("name", ["ngram", "repeat-last", "short"])
def test_deterministic_drafters_keep_the_target_distribution(gamma, params, name):
    """One-hot q: n-gram lookup, a fixed rule, and proposals shorter than gamma (as early stop gives)."""
    draft = {"ngram": _ngram, "repeat-last": lambda s, g: [s[-1]] * g,
             "short": lambda s, g: [(s[-1] + 1) % 4] * min(g, len(s) % 2)}[name]
    target = TableLM(random_table(4, 1, seed=21))
    prefix = [1, 2, 1]
    spec = speculative_distribution(target, draft, params, gamma, prefix, LENGTH)
    exact = target_distribution(target, params, prefix, LENGTH)
    assert abs(sum(spec.values()) - 1.0) < 1e-9
    for seq in set(spec) | set(exact):
        assert abs(spec.get(seq, 0.0) - exact.get(seq, 0.0)) < 1e-9, seq


def test_enumeration_detects_a_wrong_residual(monkeypatch):
    """Negative control: with residual = p the enumerated distribution is no longer the target's."""
    target = TableLM(random_table(3, 1, seed=5))
    draft = TableLM(random_table(3, 1, seed=6, sharpness=2.0))
    params = SamplingParams(temperature=1.0)
    monkeypatch.setattr(v, "residual", lambda p, q: p.double())
    broken = speculative_distribution(target, draft, params, 2, [1], LENGTH)
    exact = target_distribution(target, params, [1], LENGTH)
    assert max(abs(broken.get(s, 0.0) - w) for s, w in exact.items()) > 1e-3
