"""Drafters (n-gram index, n-gram + model, early stop, user callables) and automatic gamma."""

from __future__ import annotations

import pytest
import torch

import specdecode as sd
from specdecode.drafters import CallableDrafter, ModelDrafter, NgramDrafter, NgramThenModel
from specdecode.gamma import AutoGamma, CostModel, best_gamma
from specdecode.toy import TableLM, random_table

from .tiny_models import build, noisy_copy, reference_greedy


def test_ngram_prefers_the_longest_match():
    ng = NgramDrafter(max_n=3)
    seq = [5, 1, 2, 3, 9, 2, 3, 7, 8, 1, 2, 3]
    ng.begin(seq)
    # suffix [1, 2, 3] occurred at 1..3 (followed by 9); [2, 3] alone also at 5..6 (followed by 7)
    assert ng.match(seq) == (3, 4)
    assert ng.lookup(seq, 3) == [9, 2, 3]


def test_ngram_latest_occurrence_and_overlaps():
    ng = NgramDrafter(max_n=2)
    seq = [4, 4, 4, 4]  # overlapping occurrences of [4, 4]: the latest earlier one wins
    ng.begin(seq)
    assert ng.match(seq) == (2, 3) and ng.lookup(seq, 5) == [4]
    seq2 = [1, 2, 7, 1, 2, 8, 1, 2]
    ng.begin(seq2)
    assert ng.lookup(seq2, 2) == [8, 1]


def test_ngram_matches_generated_text_incrementally():
    ng = NgramDrafter(max_n=2)
    prompt = [10, 11, 12]
    ng.begin(prompt)
    assert ng.lookup(prompt, 4) == []  # nothing repeats yet
    seq = prompt + [20, 21, 22, 20]
    ng.commit(seq)  # generated text is indexed as it is accepted
    assert ng.lookup(seq, 2) == [21, 22]
    indexed = ng._indexed
    seq += [21]
    assert ng.lookup(seq, 3) == [22, 20, 21] and ng._indexed == indexed + 1  # one new position indexed


def test_ngram_copies_from_the_occurrence_with_the_longest_match():
    # a "file" whose lines share short n-grams; the answer copies it: after the copy has passed a shared
    # n-gram once, the latest occurrence of a short suffix points into the copy's own earlier text
    line_a, line_b = [7, 1, 2, 3, 4, 5, 6, 8, 9, 10], [11, 1, 2, 3, 4, 5, 6, 12, 13, 14]
    file = line_a + line_b
    prompt = [100, *file, 101]
    answer = [*line_a, 11, 1, 2, 3, 4, 5, 6]  # copying line_b now: the next token is 12
    seq = prompt + answer
    ng = NgramDrafter(max_n=3, anchor_n=4)
    ng.begin(seq)
    assert ng.lookup(seq, 3) == [12, 13, 14]  # from line_b in the prompt (the match runs 7 tokens back)
    assert ng.source(seq) == "ngram-long"
    short = NgramDrafter(max_n=3, anchor_n=64, extent_max=64)  # no anchors: the latest 3-gram wins
    short.begin(seq)
    assert short.lookup(seq, 3) == [8, 9, 10] and short.source(seq) == "ngram"
    with pytest.raises(ValueError, match="anchor_n"):
        NgramDrafter(anchor_n=8, extent_max=4)


def test_ngram_min_n_and_no_match():
    ng = NgramDrafter(max_n=3, min_n=2)
    seq = [1, 2, 3, 4, 3]
    ng.begin(seq)
    assert ng.match(seq) == (0, -1) and ng.lookup(seq, 4) == []  # only a 1-gram repeats
    with pytest.raises(ValueError, match="min_n"):
        NgramDrafter(max_n=1, min_n=2)


def test_drafters_keep_greedy_output_exact():
    target = build("llama")
    prompt = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 3, 1, 4, 1, 5]
    ref = reference_greedy(target, prompt, 40)
    wrapped = sd.wrap(target)
    draft_model = noisy_copy(target, 0.3)
    drafters = {
        "ngram": NgramDrafter(max_n=3),
        "ngram+model": NgramThenModel(NgramDrafter(), ModelDrafter(sd.wrap(draft_model)), min_match=1),
        "threshold": ModelDrafter(sd.wrap(draft_model), threshold=0.5),
        "callable": lambda seq, g: [seq[-1]] * g,  # "repeat the last token": mostly wrong
        "auto": ModelDrafter(sd.wrap(draft_model)),
    }
    for name, drafter in drafters.items():
        gen = sd.SpeculativeGenerator(wrapped, drafter)
        gamma = "auto" if name == "auto" else 4
        if name == "auto":  # costs that make drafting pay: measured ones may say "never draft" here
            gen._cost_models[8] = CostModel({k: 0.01 for k in range(1, 10)}, 0.001, frozen=True)
        res = gen.generate(prompt, max_new_tokens=40, gamma=gamma)
        assert res.token_ids == ref, name
        st = res.stats  # nothing recomputed: prefill (less the prefix an earlier run left), then one
        # pending token plus the drafts per call
        assert st.target_tokens == len(prompt) - 1 - st.cached_tokens + st.target_calls + st.drafted, name
        assert st.drafted > 0, f"{name} never drafted: the comparison would be plain against plain"
    # the threshold drafter proposed fewer tokens than gamma at least once
    res = sd.SpeculativeGenerator(wrapped, drafters["threshold"]).generate(prompt, max_new_tokens=40, gamma=4)
    assert res.stats.drafted < 4 * res.stats.target_calls


def test_callable_drafter_with_q_and_bad_output():
    target = TableLM(random_table(5, 1, seed=3))

    def uniform(seq, gamma):
        return [0] * gamma, torch.full((gamma, 5), 0.2)

    res = sd.SpeculativeGenerator(target, uniform).generate([1], max_new_tokens=8, gamma=3, seed=0,
                                                            temperature=1.0)
    assert len(res.token_ids) == 8 and res.stats.drafted > 0
    with pytest.raises(ValueError, match="outside"):
        sd.SpeculativeGenerator(target, lambda s, g: [99] * g).generate([1], max_new_tokens=4, gamma=2)
    with pytest.raises(ValueError, match="shape"):
        sd.SpeculativeGenerator(target, lambda s, g: ([0] * g, torch.ones(g, 3))).generate(
            [1], max_new_tokens=4, gamma=2)
    with pytest.raises(ValueError, match="threshold"):
        ModelDrafter(target, threshold=1.5)
    with pytest.raises(ValueError, match="draft must be"):
        sd.SpeculativeGenerator(target, 42)
    assert isinstance(sd.SpeculativeGenerator(target, uniform).drafter, CallableDrafter)


def test_best_gamma_follows_the_cost_model():
    flat = CostModel({k: 0.1 for k in range(1, 10)}, draft_s=0.001)
    linear = CostModel({k: 0.1 * k for k in range(1, 10)}, draft_s=0.03)
    assert best_gamma(0.0, flat, 8) == 0  # an always-wrong draft: never speculate
    assert best_gamma(1.0, flat, 8) == 8  # always right and verification is free: the longest block
    assert best_gamma(0.9, linear, 8) == 0  # T(k) ~ k: speculation cannot pay
    assert 1 <= best_gamma(0.8, flat, 8) <= 8
    assert linear.t(12) == pytest.approx(1.2)  # extrapolated beyond the measured k


def test_auto_gamma_in_the_engine():
    target = TableLM(random_table(4, 1, seed=1, sharpness=3.0))
    flat = {k: 0.01 for k in range(1, 10)}
    same = sd.SpeculativeGenerator(target, TableLM(target.table.clone()))
    same._cost_models[8] = CostModel(dict(flat), 1e-4, frozen=True)
    res = same.generate([1], max_new_tokens=60, gamma="auto")
    hist = res.stats.gamma_histogram
    assert max(hist, key=hist.get) == 8 and res.stats.acceptance_rate > 0.99

    wrong_table = torch.full_like(target.table, 1e-6)
    wrong_table.scatter_(-1, target.table.argmin(-1, keepdim=True), 1.0)  # mass where the target has least
    wrong = sd.SpeculativeGenerator(target, TableLM(wrong_table))
    wrong._cost_models[8] = CostModel(dict(flat), 5e-3, frozen=True)
    res = wrong.generate([1], max_new_tokens=60, gamma="auto", temperature=0)
    hist = res.stats.gamma_histogram
    assert hist.get(0, 0) > 0.7 * sum(hist.values())  # mostly plain steps, with occasional probes
    assert set(hist) <= {0, 1, 2, 3, 4, 5, 6, 7, 8}


def test_auto_gamma_probes_while_idle_and_backs_off():
    policy = AutoGamma(CostModel({k: 0.1 for k in range(1, 10)}, 0.05), gamma_max=4, probe_every=4)
    policy.alphas["model"] = 0.0  # so far always wrong: plain steps, but a perfect draft would pay
    chosen = [policy.choose(budget=100) for _ in range(28)]
    probes = [i for i, g in enumerate(chosen) if g]
    assert probes == [3, 11, 27]  # waits 4, then 8, then 16 plain steps: each probe said "plain"
    assert set(chosen) == {0, 1}


def test_auto_gamma_does_not_probe_a_draft_model_that_first_must_read_a_long_backlog():
    curve = CostModel({1: 0.1, 2: 0.11, 4: 0.13, 8: 0.17, 16: 0.3, 64: 1.0, 512: 6.0}, 0.05)
    policy = AutoGamma(curve, gamma_max=4, probe_every=4)
    policy.alphas["model"] = 0.0
    # 300 skipped tokens would cost the draft about 0.05 * T(300) / T(1) = 1.8 s: more than a plain step
    assert [policy.choose(budget=100, lag=300) for _ in range(40)] == [0] * 40
    assert any(policy.choose(budget=100, lag=2) for _ in range(8))  # caught up: probes again
    policy.alphas["model"] = 0.95  # measured good: drafts whatever the backlog (it is read once)
    assert policy.choose(budget=100, lag=300) > 0
    assert policy.choose(budget=100, source="ngram", lag=300) > 0  # lookups read nothing


def test_auto_gamma_never_probes_a_draft_that_cannot_pay():
    linear = CostModel({k: 0.1 * k for k in range(1, 10)}, 0.05)  # T(k) ~ k: even alpha = 1 loses
    policy = AutoGamma(linear, gamma_max=4, probe_every=2)
    assert not policy.worth_probing("model")
    assert [policy.choose(budget=100) for _ in range(20)] == [0] * 20
    # the same target with a free n-gram lookup: 2 tokens for 0.2 s beats 1 for 0.1 s? no (linear T)
    assert not policy.worth_probing("ngram")
    cheap_verify = CostModel({1: 0.1, 2: 0.12, 3: 0.14, 4: 0.16, 5: 0.18}, 0.05)
    assert AutoGamma(cheap_verify, gamma_max=4).worth_probing("ngram")


def test_auto_gamma_tracks_alpha_per_source():
    flat = CostModel({k: 0.1 for k in range(1, 10)}, 0.03)
    policy = AutoGamma(flat, gamma_max=8)
    for _ in range(20):
        policy.observe("ngram", 4, 4.0, 5, 0.1, 0.0, 0)  # lookups always right
        policy.observe("model", 4, 0.0, 5, 0.1, 0.12, 4)  # the model always wrong
    assert policy.alphas["ngram"] > 0.95 and policy.alphas["model"] < 0.05
    assert policy.choose(100, "ngram") == 8 and policy.choose(100, "model") == 0
    assert policy.histogram[4] == 40


def test_gamma_validation():
    target = TableLM(random_table(3, 1, seed=0))
    gen = sd.SpeculativeGenerator(target, TableLM(random_table(3, 1, seed=1)))
    with pytest.raises(ValueError, match="'auto' or an integer"):
        gen.generate([1], gamma="fast")
    with pytest.raises(ValueError, match="gamma_max"):
        gen.generate([1], gamma="auto", gamma_max=0)


def test_ngram_sources_split_long_and_single_token_matches():
    d = NgramDrafter(max_n=3)
    d.begin([1, 2, 3, 4, 9, 2, 3])
    assert d.source([1, 2, 3, 4, 9, 2, 3]) == "ngram"  # "2 3" occurred before
    assert d.source([1, 2, 3, 4, 9, 2, 3, 5, 4]) == "ngram-1"  # only "4" matches
    policy = AutoGamma(CostModel({k: 0.1 for k in range(1, 10)}, 0.05))
    assert policy.draft_s("ngram-1") == policy.draft_s("ngram") < 0.05  # lookups cost next to nothing


def test_observed_costs_rescale_the_whole_curve_and_resist_stalls():
    costs = CostModel({1: 0.1, 2: 0.15, 3: 0.2}, 0.03)
    costs.observe_target(1, 10.0)  # one stall of 100x: moves the curve by at most 10% (weight x factor 2)
    assert costs.t(1) == pytest.approx(0.11) and costs.t(2) / costs.t(1) == pytest.approx(1.5)
    for _ in range(60):  # the machine really got twice as slow: the curve follows, shape kept
        costs.observe_target(1, 0.2)
    assert costs.t(1) == pytest.approx(0.2, rel=0.01) and costs.t(3) == pytest.approx(0.4, rel=0.01)


def test_probe_state_is_kept_per_source():
    """Plain steps under one source do not count toward another source's probe."""
    policy = AutoGamma(CostModel({k: 0.1 for k in range(1, 10)}, 0.05), gamma_max=4, probe_every=4,
                       alpha=0.0)
    order = ["model", "model", "model", "other", "other", "other", "model", "other"]
    chosen = [policy.choose(100, source) for source in order]
    assert chosen == [0, 0, 0, 0, 0, 0, 1, 1]  # each source probes after its own 4th plain step


def test_draft_cost_observations_are_bounded():
    costs = CostModel({1: 0.1, 2: 0.12}, 0.01)
    costs.observe_draft(10.0)  # one catch-up-sized stall
    assert costs.draft_s <= 0.01 * 1.1 + 1e-12
    costs.observe_draft(0.0)
    assert costs.draft_s >= 0.011 * 0.95 - 1e-12


def test_a_lagging_draft_catches_up_outside_its_per_call_cost():
    from specdecode.drafters import DraftContext
    from specdecode.results import GenerationStats
    from specdecode.sampling import SamplingParams

    model = TableLM(random_table(6, 1, seed=0))
    drafter = ModelDrafter(model)
    stats = GenerationStats()
    ctx = DraftContext(SamplingParams(), [1, 2, 3], torch.Generator(), 6, torch.device("cpu"), stats)
    drafter.begin([1, 2, 3], ctx)
    drafter.propose([1, 2, 3, 4, 5, 1, 2, 3, 4, 5], 2)  # ten tokens it has never seen
    assert stats.draft_calls == 2 and stats.draft_catchup_s > 0
    assert stats.draft_tokens == 9 + 1 + 1  # nine caught up, the tenth with the first call, one more
