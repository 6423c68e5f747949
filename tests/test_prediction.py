"""Predicted outputs: the prediction drafter's alignment (follow, insertions, deletions, unrelated text),
exactness against the same call without a prediction (greedy and sampled), and the usage counts."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from scipy.stats import power_divergence

from specdecode import SpeculativeGenerator
from specdecode.drafters import DraftContext, NgramDrafter
from specdecode.prediction import PredictionDrafter
from specdecode.results import GenerationStats
from specdecode.sampling import SamplingParams
from specdecode.toy import TableLM, random_table

PROMPT = [900, 901, 902]


def drafter_for(prediction: list[int], **kw) -> PredictionDrafter:
    d = PredictionDrafter(prediction, **kw)
    ctx = DraftContext(SamplingParams(), PROMPT, torch.Generator(), 2000, torch.device("cpu"),
                       GenerationStats())
    d.begin(list(PROMPT), ctx)
    return d


def follow(d: PredictionDrafter, output: list[int], gamma: int = 4) -> list[list[int]]:
    """Feed `output` token by token; return what the drafter proposed before each token."""
    proposals, seq = [], list(PROMPT)
    for token in output:
        proposals.append(d.propose(seq, gamma)[0].tolist())
        seq.append(token)
        d.commit(seq)
    return proposals


def test_follows_the_prediction_from_the_start():
    pred = list(range(10, 30))
    d = drafter_for(pred)
    props = follow(d, pred[:6])
    assert props[0] == pred[:4] and props[3] == pred[3:7]
    assert d.source(PROMPT + pred[:6]) == "prediction"


def test_reanchors_after_an_insertion():
    pred = list(range(10, 40))
    d = drafter_for(pred)
    output = pred[:5] + [500, 501] + pred[5:12]  # two tokens the prediction lacks, then back on track
    props = follow(d, output)
    # right after the insertion nothing is anchored; once the output has re-joined the prediction for
    # min_n tokens, the drafter proposes the prediction's continuation again
    assert props[7 + 3] == pred[8:12]


def test_reanchors_after_a_deletion():
    pred = list(range(10, 40))
    d = drafter_for(pred)
    output = pred[:5] + pred[15:25]  # the output skips ten predicted tokens
    props = follow(d, output)
    assert props[5 + 3] == pred[18:22]


def test_unrelated_output_proposes_nothing_and_uses_the_fallback():
    pred = list(range(10, 40))
    d = drafter_for(pred)
    seq = PROMPT + [700, 701]
    d.commit(seq)
    assert d.source(seq) == "none" and d.propose(seq, 4)[0].numel() == 0
    with_fallback = drafter_for(pred, fallback=NgramDrafter())
    seq = PROMPT + [700, 701, 702, 700, 701]
    with_fallback.commit(seq)
    assert with_fallback.source(seq) == "ngram"
    assert with_fallback.propose(seq, 4)[0].tolist() == [702, 700, 701]


def test_repeated_text_prefers_the_occurrence_ahead():
    block = [1, 2, 3, 4]
    pred = block + [50, 51] + block + [60, 61]
    d = drafter_for(pred)
    output = block + [50, 51, 99] + block  # a miss after "50 51", then the second copy of the block
    props = follow(d, output + [60])
    assert props[-1] == [60, 61]


def test_bad_prediction_input():
    gen = SpeculativeGenerator(TableLM(random_table(8, 1, seed=0)), None)
    with pytest.raises(ValueError, match="outside the target's vocabulary"):
        gen.generate([1], max_new_tokens=3, prediction=[1, 99])
    with pytest.raises(ValueError, match="a text prediction needs a tokenizer"):
        gen.generate([1], max_new_tokens=3, prediction="hello")


def test_greedy_output_is_the_same_with_and_without_prediction_and_counts_add_up():
    target = TableLM(random_table(12, 2, seed=3, sharpness=3.0))
    plain = SpeculativeGenerator(target).generate([1, 2], max_new_tokens=40)
    good = plain.token_ids[:15] + [5, 5] + plain.token_ids[15:]  # right but for an inserted pair
    for prediction, gamma in ((good, 8), (good, "auto"), ([7] * 30, 8), (plain.token_ids, 16)):
        res = SpeculativeGenerator(target).generate([1, 2], max_new_tokens=40, prediction=prediction,
                                                    gamma=gamma)
        assert res.token_ids == plain.token_ids
        s = res.stats
        from_prediction = sum(n for k, n in s.drafted_by_source.items() if k.startswith("prediction"))
        assert s.accepted_prediction_tokens + s.rejected_prediction_tokens == from_prediction
        if prediction is good and gamma == 8:
            assert s.accepted_prediction_tokens >= 30 and s.target_calls < 15
        if prediction == plain.token_ids:
            # 16 + 16 + 5 predicted tokens accepted, and each call adds the target's own next token
            assert s.rejected_prediction_tokens == 0 and s.accepted_prediction_tokens == 37
            assert s.target_calls == 3


def test_sampled_distribution_with_a_prediction_is_the_targets():
    """G-test: sampling with a (partly wrong) prediction gives the target's exact distribution."""
    vocab, length, samples = 4, 3, 6000
    target = TableLM(random_table(vocab, 1, seed=5))
    gen = SpeculativeGenerator(target)
    rng = torch.Generator().manual_seed(11)
    counts: Counter = Counter()
    accepted = rejected = 0
    for _ in range(samples):
        res = gen.generate([1], max_new_tokens=length, gamma=3, generator=rng, temperature=1.0,
                           prediction=[2, 0, 3, 1])
        counts[tuple(res.token_ids)] += 1
        accepted += res.stats.accepted_prediction_tokens
        rejected += res.stats.rejected_prediction_tokens
    exact = {}
    for seq in itertools.product(range(vocab), repeat=length):
        w, ctx = 1.0, [1]
        for t in seq:
            w *= float(target.table[ctx[-1], t])
            ctx.append(t)
        exact[seq] = w
    cells = sorted(exact)
    pvalue = power_divergence([counts.get(c, 0) for c in cells], [exact[c] * samples for c in cells],
                              lambda_="log-likelihood").pvalue
    assert pvalue > 1e-3
    assert accepted > 0 and rejected > 0
