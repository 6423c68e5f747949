"""Predicted outputs: the prediction drafter's alignment (follow, insertions, deletions, unrelated text),
exactness against the same call without a prediction (greedy and sampled), and the usage counts."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from scipy.stats import power_divergence

from specdecode import SpeculativeGenerator
from specdecode.drafters import CallableDrafter, DraftContext, NgramDrafter
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


def test_a_replaced_span_is_learned_and_drafted_where_it_comes_again():
    a, b, c = list(range(10, 20)), list(range(20, 30)), list(range(30, 40))
    old, new = [100, 101], [200, 201, 202]  # an identifier the edit renames, in other tokens
    pred = a + old + b + old + c + old + a
    output = a + new + b + new + c + new + a
    props = follow(drafter_for(pred), output, gamma=6)
    assert props[len(a)] == old + b[:4]  # the first occurrence is a miss: nothing learned yet
    assert props[len(a + new + b)] == new + c[:3]  # learned: the replacement is drafted
    assert props[len(a + new + b + new + c)] == new + a[:3]
    assert props[len(a + new + b) + 1] == new[1:] + c[:4]  # and followed token by token


def test_an_occurrence_the_output_keeps_forgets_the_replacement():
    a, b, c = list(range(10, 20)), list(range(20, 30)), list(range(30, 40))
    old, new = [100, 101], [200]
    pred = a + old + b + old + c + old + a
    output = a + new + b + old + c + old + a  # only the first occurrence was changed
    props = follow(drafter_for(pred), output, gamma=6)
    assert props[len(a + new + b)] == new + c[:5]  # learned from the first, drafted once
    assert props[len(a + new + b + old + c)] == old + a[:4]  # kept there: forgotten


def test_a_model_fallback_drafts_only_after_a_long_detour():
    pred = list(range(10, 40))
    model_like = CallableDrafter(lambda seq, g: [5] * g, name="model")
    d = drafter_for(pred, fallback=model_like, model_after=8)
    seq = PROMPT + pred[:5]
    for i in range(12):
        seq = seq + [700 + i]
        d.commit(seq)
        expected = "model" if i + 1 >= 8 else "none"
        assert d.source(seq) == expected, (i, d.source(seq))
        assert d.propose(seq, 3)[0].numel() == (3 if expected == "model" else 0)


def test_plain_steps_check_a_lookup_source_and_bring_it_back():
    """After misses auto-gamma decodes plainly; the prediction's guesses at those plain steps (free to
    make) are checked against the target's tokens, so once they come right long blocks resume, with no
    probe waits."""
    from specdecode.gamma import AutoGamma, CostModel

    curve = {1: 27.6, 2: 45, 4: 72, 8: 122, 16: 141, 32: 242}  # ms, 1.5B Q4_K_M on 2 cores (MODELS.md)
    policy = AutoGamma(CostModel({k: v / 1000 for k, v in curve.items()}, 1e-4, frozen=True),
                       lookup_gamma_max=32)
    assert policy.choose(100, "prediction") >= 8  # the prior: a prediction is usually right
    for _ in range(3):  # three blocks rejected at their first token
        policy.observe("prediction", 16, 0.0, 17, None, 0.0, 0, accepted=0)
    assert policy.choose(100, "prediction") == 0
    for _ in range(6):  # the target's tokens at six plain steps were the prediction's
        policy.observe_shadow("prediction", True)
    assert policy.choose(100, "prediction") >= 1
    for _ in range(10):
        policy.observe_shadow("prediction", True)
    assert policy.choose(100, "prediction") >= 12
    policy.observe_shadow("ngram-1", False)  # any lookup source learns the same way
    assert policy.alpha_of("ngram-1") < policy.alpha_of("prediction")


def test_auto_gamma_follows_a_prediction_after_early_misses():
    from specdecode.gamma import CostModel

    target = TableLM(random_table(50, 1, seed=7, sharpness=4.0))
    gen = SpeculativeGenerator(target)
    plain = gen.generate([1], max_new_tokens=300).token_ids
    prediction = list(plain)
    for i in (1, 3, 5, 7, 9, 11):  # an early stretch where the prediction keeps being wrong
        prediction[i] = (plain[i] + 1) % 50
    curve = {1: 27.6, 2: 45, 4: 72, 8: 122, 16: 141, 32: 242}
    gen._cost_models[32] = CostModel({k: v / 1000 for k, v in curve.items()}, 1e-4, frozen=True)
    res = gen.generate([1], max_new_tokens=300, prediction=prediction, gamma="auto", lookup_gamma_max=32)
    assert res.token_ids == plain
    assert res.stats.accepted_prediction_tokens >= 270 and res.stats.target_calls <= 20
