"""Acceptance traces and the speed-up predictor (issue 24): recording, the closed form, the replay."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from specdecode import SpeculativeGenerator
from specdecode.predict import (
    Curve,
    PairCosts,
    alpha_by_source,
    best_closed_form,
    closed_form_traces,
    curves_payload,
    load_curves,
    matches,
    reblock,
    replay,
)
from specdecode.theory import thm38_speedup
from specdecode.toy import tiny_llama_pair
from specdecode.trace import StepRecord, Trace, load_traces, save_traces

ROOT = Path(__file__).resolve().parents[1]


def flat(t1: float, per_token: float = 0.0, draft: float | None = None) -> PairCosts:
    """T(k) = t1 + per_token * (k - 1) at every length; a draft call costs `draft`."""
    target = Curve({0: {1: t1, 64: t1 + 63 * per_token}})
    return PairCosts(target, None if draft is None else Curve({0: {1: draft, 64: draft}}))


def model_step(g: int, n: int, context: int = 0, beta: float | None = None) -> StepRecord:
    return StepRecord("model", g, n, n + 1, g + 1, context, float(n) if beta is None else beta, g, g)


def test_curve_interpolates_in_k_and_in_cached_length():
    curve = Curve({100: {1: 1.0, 4: 4.0}, 200: {1: 2.0, 4: 8.0}})
    assert curve.t(2, 100) == pytest.approx(2.0)
    assert curve.t(2, 150) == pytest.approx(3.0)  # halfway between 2.0 and 4.0
    assert curve.t(4, 50) == 4.0 and curve.t(4, 500) == 8.0  # nearest measured length outside
    with pytest.raises(ValueError, match="no measured points"):
        Curve({})


def test_closed_form_equals_the_papers_formula_on_synthetic_traces():
    alpha, gamma, c = 0.7, 4, 0.05
    # each step proposed gamma tokens with sum(min(p, q)) = alpha per position
    steps = [model_step(gamma, n, beta=alpha * gamma) for n in (4, 1, 0, 3, 4, 2)]
    traces = [Trace(steps, "model gamma=4", gamma=gamma)]
    assert alpha_by_source(traces) == {"model": pytest.approx(alpha)}
    costs = flat(1.0, 0.0, draft=c)  # the paper's assumption: T(gamma+1) = T(1)
    assert closed_form_traces(traces, costs) == pytest.approx(thm38_speedup(alpha, gamma, c))
    expected = (1 - alpha ** (gamma + 1)) / ((1 - alpha) * (gamma * c + 1))
    assert closed_form_traces(traces, costs) == pytest.approx(expected)
    # auto: the best gamma up to 8 under the same costs
    g, best = best_closed_form(alpha, costs, 8)
    assert best == max(thm38_speedup(alpha, k, c) for k in range(1, 9)) and 1 <= g <= 8
    assert closed_form_traces(traces, costs, "auto") == pytest.approx(best)


def test_closed_form_weighs_sources_by_their_tokens():
    # 8 tokens from model steps at speed-up s, 2 from plain steps at 1.0x: 10 / (8 / s + 2)
    steps = [model_step(3, 3, beta=1.5), model_step(3, 3, beta=1.5),
             StepRecord("", 0, 0, 1, 1, 0), StepRecord("model", 0, 0, 1, 1, 0)]
    costs = flat(1.0, 0.0, draft=0.1)
    s = thm38_speedup(0.5, 3, 0.1)
    assert closed_form_traces([Trace(steps, gamma=3)], costs) == pytest.approx(10 / (8 / s + 2))


def test_replay_gives_the_hand_computed_time():
    steps = [StepRecord("model", 4, 2, 3, 5, 10, 2.0, 4, 4),  # 4 draft calls of one token each
             StepRecord("", 0, 0, 1, 1, 13),  # a plain step
             StepRecord("ngram", 3, 3, 4, 4, 14, 3.0),  # a lookup: free
             StepRecord("model", 2, 0, 1, 3, 18, 0.0, 2, 7)]  # a catch-up on 5 tokens, then 2 calls
    costs = flat(0.010, 0.001, draft=0.002)  # T(k) = 10 + (k - 1) ms, T_draft(k) = 2 ms
    pred = replay(Trace(steps), costs)
    spec = (0.014 + 4 * 0.002) + 0.010 + 0.013 + (0.012 + 2 * 0.002 + 0.002)
    assert pred.spec_s == pytest.approx(spec)
    assert pred.plain_s == pytest.approx(9 * 0.010)
    assert pred.speedup == pytest.approx(0.090 / spec)
    assert pred.new_tokens == 9
    costs.step_overhead_s = 0.001  # one more ms per target call, both ways
    assert replay(Trace(steps), costs).spec_s == pytest.approx(spec + 4 * 0.001)
    assert replay(Trace(steps), costs).plain_s == pytest.approx(9 * 0.011)


def test_reblocking_a_greedy_trace():
    # gamma 3: accepted 3 (+ bonus), 1 (+ correction), 0, 3 (+ bonus): 4 + 2 + 1 + 4 = 11 tokens
    trace = Trace([model_step(3, 3), model_step(3, 1), model_step(3, 0), model_step(3, 3)], gamma=3)
    m = matches(trace)
    assert m == [True, True, True, True, True, False, False, True, True, True, True]
    costs = flat(1.0, 0.0, draft=0.0)
    assert reblock(trace, 3, costs).spec_s == pytest.approx(replay(trace, costs).spec_s) == 4.0
    assert reblock(trace, 0, costs).speedup == pytest.approx(1.0)  # plain decoding
    # gamma 8 from position 0: run of 5, then a miss; from 6: a miss; from 7: a run of 4 to the end
    assert reblock(trace, 8, costs).spec_s == pytest.approx(3.0)
    with pytest.raises(ValueError, match="greedy"):
        matches(Trace(trace.steps, greedy=False))


def test_curves_and_traces_round_trip(tmp_path):
    payload = curves_payload({"t": {128: {1: 0.01, 8: 0.02}}, "d": {128: {1: 0.001}}}, batch=8)
    (tmp_path / "c.json").write_text(json.dumps(payload))
    curves = load_curves(tmp_path / "c.json", batch=8)
    assert curves["t"].t(8, 128) == 0.02 and curves["d"].t(1) == 0.001
    with pytest.raises(ValueError, match="no curves at batch 1"):
        load_curves(tmp_path / "c.json", batch=1)
    trace = Trace([model_step(2, 1)], "model gamma=2", "p1", "chat", 5, 0.1, 0.2, True, 2)
    save_traces(tmp_path / "t.json", [trace], {"target": "x"})
    back, meta = load_traces(tmp_path / "t.json")
    assert back == [trace] and meta == {"target": "x"}
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a traces file"):
        load_traces(tmp_path / "bad.json")


@pytest.mark.parametrize("gamma", [3, "auto"])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_recording_changes_nothing_and_agrees_with_the_stats(gamma, temperature):
    target, draft = tiny_llama_pair(seed=0, noise=0.05)
    gen = SpeculativeGenerator(target, draft)
    kwargs = dict(max_new_tokens=40, gamma=gamma, temperature=temperature, seed=1, cache_prompt=False)
    plain = gen.generate([5, 6, 7, 8], **kwargs)
    traced = gen.generate([5, 6, 7, 8], trace=True, **kwargs)
    assert plain.trace is None
    if temperature == 0 or gamma != "auto":  # sampled auto blocks follow measured timings: runs may differ
        assert traced.token_ids == plain.token_ids
    steps, stats = traced.trace, traced.stats
    assert len(steps) == stats.target_calls
    assert sum(s.emitted for s in steps) == stats.new_tokens == len(traced.token_ids)
    assert sum(s.proposed for s in steps) == stats.drafted
    assert sum(s.accepted for s in steps) == stats.accepted
    assert sum(s.draft_calls for s in steps) == stats.draft_calls
    assert sum(s.draft_tokens for s in steps) == stats.draft_tokens
    assert sum(s.target_s for s in steps) == pytest.approx(stats.target_s)
    assert sum(s.draft_s for s in steps) == pytest.approx(stats.draft_s)
    if stats.drafted:
        assert sum(s.beta for s in steps) / stats.drafted == pytest.approx(stats.acceptance_rate)
    assert steps[0].context == 3
    assert all(b.context == a.context + a.emitted for a, b in zip(steps, steps[1:], strict=False))
    assert all(s.fed == s.proposed + 1 for s in steps)


def test_predict_check_and_predict_gpu_run_end_to_end_on_tiny_models(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import predict_check
        import predict_gpu
    finally:
        sys.path.pop(0)
    assert predict_check.main(["--tiny", "--out", str(tmp_path / "pc")]) == 0
    report = json.loads((tmp_path / "pc" / "report.json").read_text())
    assert set(report["configs"]) == {"model gamma=4", "model auto", "ngram auto",
                                      "edits: prediction+ngram auto", "edits: ngram auto"}
    for row in report["configs"].values():
        assert row["measured"] > 0 and row["replay"] > 0 and row["closed_form"] > 0
    traces, _ = load_traces(tmp_path / "pc" / "traces.json")
    assert {t.config for t in traces} >= {"plain", "model gamma=4"}
    assert "| model gamma=4 |" in (tmp_path / "pc" / "report.md").read_text()
    # recorded runs re-priced under curves measured again, covering the runs' longest context
    assert predict_check.main(["--tiny", "--traces", str(tmp_path / "pc" / "traces.json"), "--out",
                               str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert set(again["configs"]) == set(report["configs"])
    for config, row in again["configs"].items():  # the same runs measured: only the prediction moves
        assert row["measured"] == pytest.approx(report["configs"][config]["measured"])
    assert predict_check.covering([128, 1024, 2048], 3640) == [128, 1024, 2048, 4096]
    assert predict_check.covering([128, 1024], 900) == [128, 1024]
    # the CPU curves in the GPU benchmark's format predict for "target" drafted by "draft"
    out = tmp_path / "pred"
    assert predict_gpu.main(["--traces", str(tmp_path / "pc" / "traces.json"), "--curves",
                             str(tmp_path / "pc" / "cpu_curves.json"), "--targets", "target", "--draft",
                             "draft", "--batches", "1", "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["target@1"]
    assert "reblock_best" in rows["model gamma=4"] and "reblock_best" not in rows["ngram auto"]
