"""Choosing gamma: fixed, or "auto" from measured costs and a running acceptance rate.

Auto picks, before each iteration, the gamma in 0..gamma_max that maximises expected tokens per second,
E(alpha, gamma) / (gamma * T_draft + T(gamma + 1)) (the general form in ../shared/PAPER.md); gamma 0 is
a plain step, 1 / T(1). While it chooses 0 it still probes gamma = 1 every `probe_every` iterations so
that an easy stretch later on is noticed. Observed call times refine the measured costs as it goes.
"""

from __future__ import annotations

import json
import os
import platform
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .theory import expected_tokens


@dataclass
class CostModel:
    """Seconds of a target call on k new tokens, T(k), and of one draft call."""

    target_s: dict[int, float]
    draft_s: float
    frozen: bool = False  # ignore observations (fixed, made-up costs)

    def t(self, k: int) -> float:
        """T(k), extrapolated linearly beyond the largest measured k."""
        if k in self.target_s:
            return self.target_s[k]
        ks = sorted(self.target_s)
        if len(ks) < 2:
            return self.target_s[ks[-1]] * k / ks[-1]
        a, b = ks[-2], ks[-1]
        slope = (self.target_s[b] - self.target_s[a]) / (b - a)
        return self.target_s[b] + slope * (k - b)

    def observe_target(self, k: int, seconds: float, weight: float = 0.1) -> None:
        """Blend in one observed call (cheap continuous re-measurement)."""
        if self.frozen:
            return
        old = self.target_s.get(k)
        self.target_s[k] = seconds if old is None else (1 - weight) * old + weight * seconds

    def observe_draft(self, seconds_per_call: float, weight: float = 0.1) -> None:
        if not self.frozen:
            self.draft_s = (1 - weight) * self.draft_s + weight * seconds_per_call


def best_gamma(alpha: float, costs: CostModel, gamma_max: int) -> int:
    """argmax over 0..gamma_max of expected tokens per second."""
    alpha = min(max(alpha, 0.0), 1.0)

    def rate(g: int) -> float:
        return expected_tokens(alpha, g) / (g * costs.draft_s + costs.t(g + 1))

    return max(range(gamma_max + 1), key=rate)


@dataclass
class AutoGamma:
    """The per-generation gamma policy of `gamma="auto"`."""

    costs: CostModel
    gamma_max: int = 8
    alpha: float = 0.6  # prior until the first verified position
    decay: float = 0.8  # weight of the past in the running alpha
    probe_every: int = 8
    histogram: Counter = field(default_factory=Counter)
    _idle: int = 0

    def choose(self, budget: int) -> int:
        g = min(best_gamma(self.alpha, self.costs, self.gamma_max), max(budget - 1, 0))
        if g == 0 and budget > 1:
            self._idle += 1
            if self._idle >= self.probe_every:
                self._idle, g = 0, 1
        self.histogram[g] += 1
        return g

    def observe(self, proposed: int, beta_sum: float, target_k: int, target_s: float, draft_s: float,
                draft_calls: int) -> None:
        if proposed:
            self.alpha = self.decay * self.alpha + (1 - self.decay) * beta_sum / proposed
        self.costs.observe_target(target_k, target_s)
        if draft_calls:
            self.costs.observe_draft(draft_s / draft_calls)


def machine_key(*parts: Any) -> str:
    """Identifies a (model, dtype, device, machine) for the calibration cache."""
    import torch

    cpu = platform.processor() or platform.machine()
    return "|".join(str(p) for p in (*parts, cpu, os.cpu_count(), torch.get_num_threads()))


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
    tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)
