"""Choosing gamma: fixed, or "auto" from measured costs and a running acceptance rate.

Auto picks, before each iteration, the gamma in 0..gamma_max that maximises expected tokens per second,
E(alpha, gamma) / (gamma * T_draft + T(gamma + 1)) (the general form in ../shared/PAPER.md); gamma 0 is
a plain step, 1 / T(1). While it chooses 0 it still probes gamma = 1 now and then (less and less often
while probes keep saying "plain") so that an easy stretch later on is noticed. Observed call times
refine the measured costs as it goes.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .fileio import atomic_write_text
from .theory import expected_tokens, tokens_per_second

SPLIT_MAX = 64  # split calls of up to this many tokens when smaller calls cost less in all


@dataclass
class CostModel:
    """Seconds of a target call on k new tokens, T(k), and of one draft call."""

    target_s: dict[int, float]
    draft_s: float
    frozen: bool = False  # ignore observations (fixed, made-up costs)
    _splits: dict[int, list[int]] = field(default_factory=dict, repr=False, compare=False)
    _split_points: list[int] = field(default_factory=list, repr=False, compare=False)  # what they were for

    def split(self, k: int) -> list[int]:
        """Call sizes summing to k that cost least in all: a call on k tokens can cost more than two smaller
        ones (measured on 2 cores: T(8) = 225 ms, T(4) = 102 ms). Decided from the curve's shape, which
        observations only rescale; beyond SPLIT_MAX tokens, one call."""
        if k <= 1 or k > SPLIT_MAX:
            return [k]
        if self._split_points != sorted(self.target_s):  # the measured points changed: decide again
            self._splits.clear()
            self._split_points = sorted(self.target_s)
        if k not in self._splits:
            best: dict[int, tuple[float, list[int]]] = {0: (0.0, [])}
            for j in range(1, k + 1):
                options = [(best[a][0] + self.t(j - a), best[a][1] + [j - a]) for a in range(j)]
                best[j] = min(options, key=lambda o: o[0])
            for j in range(2, k + 1):
                self._splits.setdefault(j, sorted(best[j][1], reverse=True))
        return list(self._splits[k])

    def t_split(self, k: int) -> float:
        """Seconds for k tokens in the cheapest calls (`split`)."""
        return sum(self.t(part) for part in self.split(k)) if k > 0 else 0.0

    def t(self, k: int) -> float:
        """T(k): measured, interpolated linearly between measured k, extrapolated beyond the largest."""
        if k in self.target_s:
            return self.target_s[k]
        ks = sorted(self.target_s)
        if len(ks) < 2:
            return self.target_s[ks[-1]] * k / ks[-1]
        above = next((j for j in ks if j > k), None)
        if above is not None and above != ks[0]:
            below = max(j for j in ks if j < k)
            w = (k - below) / (above - below)
            return (1 - w) * self.target_s[below] + w * self.target_s[above]
        if above == ks[0]:  # below the smallest measured k
            a, b = ks[0], ks[1]
            slope = (self.target_s[b] - self.target_s[a]) / (b - a)
            return max(self.target_s[a] + slope * (k - a), 0.0)
        # beyond the largest: the slope over its upper half (two neighbouring points can differ by a
        # kernel's kink or by noise); a call on more tokens never costs less
        b = ks[-1]
        a = max((j for j in ks if j <= b // 2), default=ks[-2])
        slope = max((self.target_s[b] - self.target_s[a]) / (b - a), 0.0)
        return self.target_s[b] + slope * (k - b)

    def observe_target(self, k: int, seconds: float, weight: float = 0.1) -> None:
        """Blend in one observed call of k tokens (cheap continuous re-measurement).

        The whole curve is rescaled, not just T(k): a plain-decoding stretch observes only T(1), and
        moving T(1) alone would make k > 1 look cheaper or dearer than it is. One call moves the curve
        by at most `weight` times a factor of 2, so a single stall cannot flip the choice.
        """
        expected = self.t(k)
        if self.frozen or expected <= 0:
            return
        ratio = min(max(seconds / expected, 0.5), 2.0)
        scale = 1 - weight + weight * ratio
        self.target_s = {j: v * scale for j, v in self.target_s.items()}

    def observe_draft(self, seconds_per_call: float, weight: float = 0.1) -> None:
        """Blend in one observed draft call, bounded like `observe_target`: one call moves the cost by at
        most `weight` times a factor of 2."""
        if self.frozen:
            return
        ratio = min(max(seconds_per_call / self.draft_s, 0.5), 2.0) if self.draft_s > 0 else 1.0
        self.draft_s *= 1 - weight + weight * ratio


LOOKUP_S = 1e-5  # a token lookup (n-gram source) costs next to nothing next to a model call
LOOKUP_SOURCES = ("ngram", "prediction", "grammar")  # sources whose drafts cost (next to) nothing


def is_lookup(source: str) -> bool:
    """Whether drafts from `source` cost a lookup rather than a model call."""
    return source.startswith(LOOKUP_SOURCES)


def rate(alpha: float, gamma: int, costs: CostModel, draft_s: float | None = None) -> float:
    """Expected tokens per second of one iteration with `gamma` draft tokens."""
    d = costs.draft_s if draft_s is None else draft_s
    return tokens_per_second(min(max(alpha, 0.0), 1.0), gamma, costs.t, d)


def best_gamma(alpha: float, costs: CostModel, gamma_max: int, draft_s: float | None = None) -> int:
    """argmax over 0..gamma_max of expected tokens per second."""
    return max(range(gamma_max + 1), key=lambda g: rate(alpha, g, costs, draft_s))


def catchup_seconds(costs: CostModel, lag: int) -> float:
    """About what a draft model pays to read `lag` tokens it skipped: its one-token cost scaled by the
    target's measured curve (the same kind of network, so the same shape), T(lag) / T(1)."""
    if lag <= 0:
        return 0.0
    t1 = costs.t(1)
    return costs.draft_s * costs.t(lag) / t1 if t1 > 0 else 0.0


@dataclass
class BatchLoad:
    """A batched target call as it is being built, for auto-gamma to price one more sequence's block in:
    its rows so far and the sequences decoding in it."""

    rows: int = 0
    sequences: int = 0
    own_rows: int = 1  # the pending rows of the sequence now choosing

    def leave(self, rows: int) -> None:
        """The sequence now choosing was counted with `rows` pending rows: take them out."""
        self.rows, self.own_rows = self.rows - rows, rows

    def add(self, rows: int) -> None:
        """Its choice: `rows` rows in all."""
        self.rows += rows


@dataclass
class AutoGamma:
    """The per-generation gamma policy of `gamma="auto"`.

    Keeps a running alpha per draft source ("model", "ngram", ...), since an n-gram hit and a model
    guess are right at very different rates and cost very different amounts. While the best choice is
    a plain step it probes gamma = 1 now and then, backing off (doubling the wait) after each probe
    that did not change its mind; it never probes a source that could not beat plain decoding by
    `min_gain` even at alpha = `alpha_ceiling` (probes, and a lagging draft model catching up on the
    text it skipped, cost more than such a source could ever return).
    """

    costs: CostModel
    gamma_max: int = 8  # the longest block for a model draft
    lookup_gamma_max: int = 8  # the longest block for a lookup source (n-gram, prediction)
    alpha: float = 0.6  # prior until a source's first verified position
    # priors per source: a prediction is the user's own guess of the output, usually right; tokens a
    # grammar forces are the only ones the target may emit there
    priors: dict[str, float] = field(default_factory=lambda: {"prediction": 0.9, "grammar": 0.99})
    decay: float = 0.8  # weight of the past in the running alpha
    probe_every: int = 8
    max_probe_every: int = 256
    min_gain: float = 0.1
    alpha_ceiling: float = 0.95  # about the best a separate draft model reaches (bf16 twins: ~0.97)
    catchup_horizon: int = 256  # tokens over which a draft model's catch-up must pay for itself
    histogram: Counter = field(default_factory=Counter)
    alphas: dict[str, float] = field(default_factory=dict)
    _idle: Counter = field(default_factory=Counter)  # plain steps since the last probe, per source
    _wait: dict[str, int] = field(default_factory=dict)  # plain steps before the next probe, per source
    _worth: dict[str, bool] = field(default_factory=dict)
    run_decay: float = 0.9  # per iteration, for the run counts of lookup sources
    _runs: dict[str, tuple[float, float]] = field(default_factory=dict)

    def draft_s(self, source: str) -> float:
        return LOOKUP_S if is_lookup(source) else self.costs.draft_s

    def limit(self, source: str) -> int:
        """The longest block auto may choose for `source`."""
        return self.lookup_gamma_max if is_lookup(source) else self.gamma_max

    def worth_probing(self, source: str) -> bool:
        """Could a very good draft from `source` (alpha = `alpha_ceiling`) beat plain decoding by at least
        `min_gain`? (decided once per source)"""
        if source not in self._worth:
            d, a = self.draft_s(source), self.alpha_ceiling
            best = max(rate(a, g, self.costs, d) for g in range(1, self.limit(source) + 1))
            self._worth[source] = best >= (1 + self.min_gain) * rate(a, 0, self.costs, d)
        return self._worth[source]

    def alpha_of(self, source: str) -> float:
        """The running alpha of `source`, or its prior before its first verified position."""
        return self.alphas.get(source, self.priors.get(source, self.alpha))

    def expected_tokens(self, source: str, gamma: int) -> float:
        """Expected new tokens of a step with `gamma` draft tokens from `source`."""
        return expected_tokens(min(max(self.alpha_of(source), 0.0), 1.0), gamma) if gamma else 1.0

    def batch_gain(self, source: str, gamma: int, load: BatchLoad) -> tuple[float, float]:
        """What `gamma` draft tokens add to a shared call, in seconds: the steps their expected extra tokens
        save (a plain step's time per sequence each), and what their rows and draft calls cost."""
        n = max(load.sequences, 1)
        per_token = self.costs.t_split(n) / n
        base = load.rows + load.own_rows
        value = (self.expected_tokens(source, gamma) - 1.0) * per_token
        cost = self.costs.t_split(base + gamma) - self.costs.t_split(base) + gamma * self.draft_s(source)
        return value, cost

    def choose(self, budget: int, source: str = "model", load: BatchLoad | None = None, lag: int = 0) -> int:
        """The number of draft tokens for the next iteration (0: a plain step). With `load` (a call shared
        with other sequences), the block whose expected saving most exceeds its cost, by `min_gain` at
        least (a wasted row delays every sequence of the call). `lag`: tokens a model draft must read
        before it can draft (after lookups or plain steps carried the text). No probe is made while
        reading them costs more than a plain step: a probe is meant to be cheap, and one after a long
        lookup stretch would pay for the whole catch-up to learn one token's worth. A block chosen from
        the source's alpha drafts only when the catch-up is repaid by what drafting saves over the next
        `catchup_horizon` tokens (or the budget, if less): the catch-up buys every following model step,
        but reading a long prompt's worth of skipped text (seconds on a CPU) for a draft that saves a few
        per cent is a loss."""
        if source == "none":  # the drafter has nothing to propose: a plain step
            return 0
        shared = load is not None and load.rows > 0
        catchup = catchup_seconds(self.costs, lag) if lag > 2 and not is_lookup(source) else 0.0
        if not shared:
            best = best_gamma(self.alpha_of(source), self.costs, self.limit(source), self.draft_s(source))
        else:
            assert load is not None
            best, margin = 0, 0.0
            for k in range(1, self.limit(source) + 1):
                value, cost = self.batch_gain(source, k, load)
                if value >= (1 + self.min_gain) * cost and value - cost > margin:
                    best, margin = k, value - cost
        g = min(best, max(budget - 1, 0))
        if g > 0 and catchup > 0 and not shared:
            alpha, d = self.alpha_of(source), self.draft_s(source)
            saving = 1 / rate(alpha, 0, self.costs, d) - 1 / rate(alpha, g, self.costs, d)  # s per token
            if saving * min(budget, self.catchup_horizon) < catchup:
                g = 0
        # no probes in a step shared with other sequences: a probe delays all of them for one sequence's
        # possible gain (measured: probes and optimistic blocks cost 8 plain chat requests 10-20% of
        # their throughput)
        if g > 0:
            self._wait[source] = self.probe_every
        elif budget > 1 and not shared and catchup <= self.costs.t(1) and self.worth_probing(source):
            # probe state is per source: a source that rarely comes up still gets probed when it does
            self._idle[source] += 1
            wait = self._wait.setdefault(source, self.probe_every)
            if self._idle[source] >= wait:
                self._idle[source], g = 0, 1
                self._wait[source] = min(2 * wait, self.max_probe_every)
        return g

    def observe_shadow(self, source: str, hit: bool) -> None:
        """A plain step at which lookup `source` had a proposal (free to make, not verified): whether its
        first token was the target's. The source's run statistics keep learning while auto decodes
        plainly, so a prediction or n-gram match that lost its footing early is drafted again as soon as
        its guesses come right, not after ever longer probe waits."""
        if not is_lookup(source):
            return
        ok, miss = self._runs.get(source, (0.0, 0.0))
        ok, miss = self.run_decay * ok + hit, self.run_decay * miss + (not hit)
        self._runs[source] = (ok, miss)
        self.alphas[source] = (ok + self.priors.get(source, self.alpha)) / (ok + miss + 1.0)

    def observe(self, source: str, proposed: int, beta_sum: float, target_k: int, target_s: float | None,
                draft_s: float, draft_calls: int, accepted: int | None = None) -> None:
        """One finished iteration: what was proposed and verified (beta_sum: sum of min(p, q) over the
        proposed positions; accepted: the accepted prefix), and what it cost (target_s None: a batched
        call, whose cost the batch observes as a whole).

        A model's guesses are about independent per position, so its alpha is the running mean of beta.
        A lookup's are not: it copies runs of text that are right until an edit point and then wrong at
        once. Its alpha is the chance to continue a run, from decayed counts of accepted tokens and of
        rejections (a geometric fit of the run lengths), which is what E(alpha, gamma) needs."""
        self.histogram[proposed] += 1
        if is_lookup(source) and accepted is not None:
            if not proposed:
                return
            # counts fade with each verified proposal; a source that lost its footing comes back through
            # gamma-1 probes (cheap) rather than by forgetting, so text unrelated to a prediction costs
            # little
            ok, miss = self._runs.get(source, (0.0, 0.0))
            ok, miss = self.run_decay * ok + accepted, self.run_decay * miss + (accepted < proposed)
            self._runs[source] = (ok, miss)
            prior = self.priors.get(source, self.alpha)
            self.alphas[source] = (ok + prior) / (ok + miss + 1.0)  # the prior weighs one token
        elif proposed:
            old = self.alpha_of(source)
            self.alphas[source] = self.decay * old + (1 - self.decay) * beta_sum / proposed
        if target_s is not None:
            self.costs.observe_target(target_k, target_s)
        if draft_calls and not is_lookup(source):
            self.costs.observe_draft(draft_s / draft_calls)


def machine_key(*parts: Any, threads: int | None = None) -> str:
    """Identifies a (model, dtype, device, machine) for the calibration cache: the CPU model and its ISA
    (AVX2 and AVX-512 machines have cost curves several-fold apart), the cores and the threads used."""
    import torch

    from .machine import available_cores, cpu_isa, cpu_model

    threads = torch.get_num_threads() if threads is None else threads
    return "|".join(str(p) for p in (*parts, cpu_model(), cpu_isa(), available_cores(), threads))


def load_calibration(path: os.PathLike[str], key: str) -> CostModel | None:
    try:
        entry = json.loads(open(path).read()).get(key)
    except (OSError, ValueError):
        return None
    if not entry:
        return None
    return CostModel({int(k): float(v) for k, v in entry["target_s"].items()}, float(entry["draft_s"]))


def save_calibration(path: os.PathLike[str], key: str, costs: CostModel) -> None:
    try:
        data = json.loads(open(path).read())
    except (OSError, ValueError):
        data = {}
    data[key] = {"target_s": {str(k): v for k, v in costs.target_s.items()}, "draft_s": costs.draft_s}
    atomic_write_text(path, json.dumps(data, indent=1))
