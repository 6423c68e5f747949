"""Predicted speed-ups on another machine: acceptance traces recorded here, priced under that machine's
measured cost curves.

Two predictions per drafter and gamma policy:
- **closed form** (Leviathan et al. 2023, ../shared/PAPER.md): alpha per draft source from the traces, then
  E(alpha, gamma) * T(1) / (gamma * T_draft(1) + T(gamma + 1)) with the new T; "auto" takes the best gamma;
- **replay**: every recorded target call priced at the new T(fed tokens, cached length) plus its draft
  calls, against plain decoding's T(1) per token. `reblock` replays a greedy model-draft trace under
  another fixed gamma (what a different policy would have done with the same draft).

Pure arithmetic on `specdecode.trace` records and cost curves in the JSON format of
`benchmarks/gpu_cost.py` (`load_curves`); nothing here runs a model.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .gamma import CostModel, is_lookup
from .theory import expected_tokens
from .trace import StepRecord, Trace

MODEL_GAMMA_MAX = 8  # auto's longest block for a draft model (SpeculativeGenerator's default gamma_max)
LOOKUP_GAMMA_MAX = 32  # and for lookups (lookup_gamma_max)


@dataclass
class Curve:
    """T(k), seconds of one call on k new tokens, of one model at one batch size, measured at several
    cached lengths (`by_context`: cached length -> {k: seconds}). Between measured k the curve is linear
    (`gamma.CostModel.t`), between measured lengths too; outside them the nearest length is used."""

    by_context: dict[int, dict[int, float]]
    name: str = ""
    _models: dict[int, CostModel] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.by_context or not all(self.by_context.values()):
            raise ValueError(f"cost curve {self.name!r} has no measured points")
        self._models = {c: CostModel(dict(ks), 0.0, frozen=True) for c, ks in self.by_context.items()}
        self._contexts = sorted(self._models)

    def t(self, k: int, context: int | None = None) -> float:
        """Seconds of a call on `k` tokens after `context` cached ones (None: the shortest measured)."""
        cs = self._contexts
        if context is None or context <= cs[0] or len(cs) == 1:
            return self._models[cs[0]].t(k)
        if context >= cs[-1]:
            return self._models[cs[-1]].t(k)
        i = bisect.bisect_right(cs, context)
        lo, hi = cs[i - 1], cs[i]
        w = (context - lo) / (hi - lo)
        return (1 - w) * self._models[lo].t(k) + w * self._models[hi].t(k)


@dataclass
class PairCosts:
    """What a step costs on the machine predicted for: the target's curve, the draft model's (None when
    only lookups draft), a lookup's seconds per proposal, and fixed per-call overheads (the engine's own
    work around a target call and around a draft call, seconds)."""

    target: Curve
    draft: Curve | None = None
    lookup_s: float = 0.0
    step_overhead_s: float = 0.0
    draft_overhead_s: float = 0.0

    def target_call(self, k: int, context: int) -> float:
        return self.target.t(k, context) + self.step_overhead_s

    def _draft(self) -> Curve:
        if self.draft is None:
            raise ValueError("a model-drafted step needs the draft model's cost curve (PairCosts.draft)")
        return self.draft

    def draft_call(self, context: int) -> float:
        return self._draft().t(1, context) + self.draft_overhead_s

    def step_draft_s(self, step: StepRecord) -> float:
        """Seconds of a recorded step's drafting: a lookup's, or its draft calls plus a catch-up call on the
        tokens beyond one per call (a lagging draft reading text it did not draft)."""
        if not step.proposed and not step.draft_calls:
            return 0.0
        if is_lookup(step.source) or step.draft_calls == 0:
            return self.lookup_s if step.proposed else 0.0
        draft = self._draft()
        seconds = step.draft_calls * self.draft_call(step.context)
        extra = step.draft_tokens - step.draft_calls
        if extra == 1:  # a first call on two tokens (the bonus token and the next)
            seconds += draft.t(2, step.context) - draft.t(1, step.context)
        elif extra > 1:
            seconds += draft.t(extra, step.context)
        return seconds


@dataclass(frozen=True)
class Prediction:
    """Seconds of the decoding steps, speculative and plain (prefill excluded), and their ratio."""

    spec_s: float
    plain_s: float
    new_tokens: int

    @property
    def speedup(self) -> float:
        return self.plain_s / self.spec_s if self.spec_s > 0 else 0.0


def plain_seconds(new_tokens: int, start: int, costs: PairCosts) -> float:
    """Plain decoding's seconds for `new_tokens` tokens after `start` cached ones (one call per token)."""
    return new_tokens * costs.target_call(1, start + new_tokens // 2) if new_tokens > 0 else 0.0


def replay(trace: Trace, costs: PairCosts) -> Prediction:
    """The trace's steps, as they were taken, priced under `costs`, against plain decoding of its tokens."""
    spec = sum(costs.target_call(s.fed, s.context) + costs.step_draft_s(s) for s in trace.steps)
    plain = sum(plain_seconds(s.emitted, s.context, costs) for s in trace.steps)
    return Prediction(spec, plain, trace.new_tokens)


def alpha_by_source(traces: list[Trace]) -> dict[str, float]:
    """alpha per draft source: the mean of sum(min(p, q)) over every verified draft position."""
    beta: dict[str, float] = {}
    proposed: dict[str, int] = {}
    for trace in traces:
        for s in trace.steps:
            if s.proposed:
                beta[s.source] = beta.get(s.source, 0.0) + s.beta
                proposed[s.source] = proposed.get(s.source, 0) + s.proposed
    return {src: min(max(beta[src] / n, 0.0), 1.0) for src, n in proposed.items()}


def closed_form(alpha: float, gamma: int, costs: PairCosts, context: int = 0, lookup: bool = False) -> float:
    """The paper's speed-up with measured costs: E(alpha, gamma) * T(1) / (gamma * T_draft + T(gamma + 1))."""
    t1 = costs.target_call(1, context)
    if gamma == 0:
        return 1.0
    draft = costs.lookup_s if lookup else costs.draft_call(context)
    return expected_tokens(alpha, gamma) * t1 / (gamma * draft + costs.target_call(gamma + 1, context))


def best_closed_form(alpha: float, costs: PairCosts, gamma_max: int, context: int = 0,
                     lookup: bool = False) -> tuple[int, float]:
    """(gamma, speed-up) of the best gamma in 0..gamma_max by `closed_form` (0: plain decoding, 1.0)."""
    options = [(g, closed_form(alpha, g, costs, context, lookup)) for g in range(gamma_max + 1)]
    return max(options, key=lambda o: o[1])


def closed_form_traces(traces: list[Trace], costs: PairCosts, gamma: int | str | None = None,
                       alphas: dict[str, float] | None = None) -> float:
    """The closed form for a group of traces of one configuration: each draft source's speed-up at its alpha
    (from these traces unless `alphas`) and the policy's gamma (`gamma`, else the traces' own; "auto": the
    best gamma up to 8 for a model, 32 for lookups), combined by the tokens its steps emitted (plain steps
    run at 1.0x): total tokens over the sum of each share's tokens divided by its speed-up."""
    if not traces:
        raise ValueError("no traces to predict from")
    alphas = alpha_by_source(traces) if alphas is None else alphas
    policy = traces[0].gamma if gamma is None else gamma
    tokens: dict[str, int] = {}
    contexts: dict[str, list[int]] = {}
    for trace in traces:
        for s in trace.steps:
            src = s.source if s.proposed else ""
            tokens[src] = tokens.get(src, 0) + s.emitted
            contexts.setdefault(src, []).append(s.context)
    time = 0.0
    for src, n in tokens.items():
        speedup = 1.0
        if src:
            context = sorted(contexts[src])[len(contexts[src]) // 2]
            lookup, alpha = is_lookup(src), alphas.get(src, 0.0)
            if policy == "auto":
                speedup = best_closed_form(alpha, costs, LOOKUP_GAMMA_MAX if lookup else MODEL_GAMMA_MAX,
                                           context, lookup)[1]
            else:
                speedup = closed_form(alpha, int(policy), costs, context, lookup)
        time += n / speedup
    total = sum(tokens.values())
    return total / time if time > 0 else 0.0


def matches(trace: Trace) -> list[bool]:
    """Greedy model-draft trace: for each output position, whether the draft's greedy token there equals the
    target's. Positions no block verified (bonus tokens, plain steps) continue the run before them."""
    if not trace.greedy:
        raise ValueError("reblocking needs a greedy trace (a sampled draft's tokens depend on the blocking)")
    out: list[bool | None] = []
    for s in trace.steps:
        if s.proposed and is_lookup(s.source):
            raise ValueError(f"reblocking needs model drafts only, the trace has a {s.source!r} step")
        accepted = min(s.accepted, s.emitted)
        out += [True] * accepted
        if s.emitted > accepted:  # the target's own token: a correction (the draft was wrong), or unknown
            out.append(False if s.accepted < s.proposed else None)
    filled: list[bool] = []
    for value in out[: trace.new_tokens]:
        filled.append(value if value is not None else (filled[-1] if filled else False))
    return filled


def reblock(trace: Trace, gamma: int, costs: PairCosts) -> Prediction:
    """A greedy model-draft trace replayed under a fixed `gamma` (0: plain decoding): blocks of gamma draft
    tokens over the same output, each accepting the run of matching positions it starts on (`matches`)."""
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    match = matches(trace)
    n, start = len(match), trace.steps[0].context if trace.steps else 0
    pos, spec = 0, 0.0
    while pos < n:
        g = min(gamma, n - pos - 1)
        run = 0
        while run < g and match[pos + run]:
            run += 1
        context = start + pos
        spec += costs.target_call(g + 1, context) + (g * costs.draft_call(context) if g else 0.0)
        pos += run + 1
    return Prediction(spec, plain_seconds(n, start, costs), n)


def load_curves(path: str | Path, batch: int = 1) -> dict[str, Curve]:
    """The cost curves of a `benchmarks/gpu_cost.py` JSON file (or one in its format) at `batch`, by model."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        models = data["models"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a cost-curve file ({exc})") from None
    curves: dict[str, Curve] = {}
    for name, entry in models.items():
        points = {int(c["context"]): {int(k): float(v) for k, v in c["seconds"].items()}
                  for c in entry.get("curves", []) if int(c.get("batch", 1)) == batch}
        if points:
            curves[name] = Curve(points, name)
    if not curves:
        raise ValueError(f"{path}: no curves at batch {batch}")
    return curves


def curves_payload(curves: dict[str, dict[int, dict[int, float]]], batch: int = 1,
                   meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Curves ({model: {context: {k: seconds}}}) in `load_curves`' format."""
    return {"meta": meta or {}, "models": {
        name: {"curves": [{"context": c, "batch": batch, "seconds": {str(k): s for k, s in ks.items()}}
                          for c, ks in sorted(by_context.items())]}
        for name, by_context in curves.items()}}
