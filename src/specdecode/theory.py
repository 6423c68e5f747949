"""The paper's speed model (Leviathan et al. 2023, Section 3 and ../shared/PAPER.md).

alpha: acceptance rate, the mean of sum(min(p, q)); gamma: draft tokens per target call;
c: one draft call's time over one target call's time; T(k): a target call on k new tokens.
"""

from __future__ import annotations

from collections.abc import Callable


def expected_tokens(alpha: float, gamma: int) -> float:
    """Expected tokens per target call with i.i.d. acceptance: (1 - alpha^(gamma+1)) / (1 - alpha)."""
    if gamma < 0 or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"need gamma >= 0 and 0 <= alpha <= 1, got gamma={gamma}, alpha={alpha}")
    if alpha >= 1.0:
        return float(gamma + 1)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def thm38_speedup(alpha: float, gamma: int, c: float) -> float:
    """Theorem 3.8: expected walltime improvement when a target call on gamma+1 tokens costs one on 1."""
    return expected_tokens(alpha, gamma) / (gamma * c + 1.0)


def tokens_per_second(alpha: float, gamma: int, t_target: Callable[[int], float], t_draft: float) -> float:
    """Expected tokens per second of one iteration: E(alpha, gamma) / (gamma * T_draft(1) + T(gamma + 1))."""
    return expected_tokens(alpha, gamma) / (gamma * t_draft + t_target(gamma + 1))


def general_speedup(alpha: float, gamma: int, t_target: Callable[[int], float], t_draft: float) -> float:
    """E(alpha, gamma) * T(1) / (gamma * T_draft(1) + T(gamma + 1)), with measured T(k) and T_draft(1)."""
    return tokens_per_second(alpha, gamma, t_target, t_draft) * t_target(1)
