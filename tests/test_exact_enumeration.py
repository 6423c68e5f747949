"""Test 1: the exact output distribution of the speculative procedure, by enumeration (no sampling)."""

from __future__ import annotations

import itertools

import pytest
import torch

import specdecode.acceptance as v
from specdecode.drafters import NgramDrafter
from specdecode.sampling import SamplingParams, adjusted_probs
from specdecode.toy import TableLM, random_table

LENGTH = 3


def speculative_distribution(target, draft, params, gamma, prefix, length):
    """P(output = s) for every sequence s of `length` new tokens under the speculative procedure.

    Mirrors the engine: gamma is capped by the remaining budget, drafts are sampled from the adjusted q,
    each draft position is accepted with probability min(1, p/q), the first rejection is resampled from
    the residual and a fully accepted block gets a bonus token from p.
    """
    result: dict[tuple[int, ...], float] = {}

    def adjust(model, seq):
        return adjusted_probs(model.logits_after(seq).unsqueeze(0), params)[0]

    def draft_options(seq, g, weight):
        """(drafts, q rows, probability) of every proposal: enumerated for a model, one for a function."""
        if callable(draft):
            drafts = tuple(draft(seq, g))[:g]
            yield drafts, [torch.nn.functional.one_hot(torch.tensor(t), target.vocab_size).double()
                           for t in drafts], weight
            return
        for drafts in itertools.product(range(target.vocab_size), repeat=g):
            q_rows, w_draft = [], weight
            for i in range(g):
                q_i = adjust(draft, seq + list(drafts[:i]))
                q_rows.append(q_i)
                w_draft *= float(q_i[drafts[i]])
            if w_draft > 0.0:
                yield drafts, q_rows, w_draft

    def expand(seq: list[int], generated: tuple[int, ...], weight: float) -> None:
        remaining = length - len(generated)
        if remaining == 0:
            result[generated] = result.get(generated, 0.0) + weight
            return
        g = min(gamma, remaining - 1)
        vocab = target.vocab_size
        for drafts, q_rows, w_draft in draft_options(seq, g, weight):
            g = len(drafts)  # a deterministic drafter may propose fewer
            p = torch.stack([adjust(target, seq + list(drafts[:i])) for i in range(g + 1)]).unsqueeze(0)
            q = (torch.stack(q_rows) if g else torch.empty(0, vocab, dtype=torch.float64)).unsqueeze(0)
            x = torch.tensor([list(drafts)], dtype=torch.long)
            acc = v.acceptance_probs(p, q, x)[0].tolist()
            reach = 1.0
            for n in range(g + 1):
                if n < g:
                    stop_here = reach * (1.0 - acc[n])
                    next_dist = v.residual(p[0, n], q[0, n])
                else:
                    stop_here = reach
                    next_dist = p[0, g].double()
                if stop_here > 0:
                    for t in range(vocab):
                        w = w_draft * stop_here * float(next_dist[t])
                        if w > 0:
                            emitted = tuple(drafts[:n]) + (t,)
                            expand(seq + list(emitted), generated + emitted, w)
                if n < g:
                    reach *= acc[n]

    expand(list(prefix), (), 1.0)
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
