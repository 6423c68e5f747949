"""The exact accept/resample step of speculative decoding: the one place where a token is accepted.

Batch-first and framework-free: it sees only adjusted probabilities. For draft position i the draft
token x_i is accepted with probability min(1, p_i(x_i) / q_i(x_i)); the first rejection at position n
is replaced by a sample of norm(max(0, p_n - q_n)); if all gamma tokens are accepted a bonus token is
sampled from p_{gamma+1}. This keeps the output distribution exactly p (Leviathan et al. 2023, Thm 3.5).
"""

from __future__ import annotations

import torch


def acceptance_probs(p: torch.Tensor, q: torch.Tensor, draft_tokens: torch.Tensor) -> torch.Tensor:
    """min(1, p_i(x_i) / q_i(x_i)) for every draft position: [B, gamma] float64."""
    gamma = draft_tokens.shape[1]
    idx = draft_tokens.unsqueeze(-1)
    p_x = p[:, :gamma].gather(-1, idx).squeeze(-1).double()
    q_x = q.gather(-1, idx).squeeze(-1).double()
    ratio = torch.where(q_x > 0, p_x / q_x.clamp_min(torch.finfo(torch.float64).tiny), p_x > 0)
    return ratio.to(torch.float64).clamp(max=1.0)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)) over the last dimension; where p and q coincide numerically, p itself."""
    diff = (p.double() - q.double()).clamp_min(0.0)
    total = diff.sum(-1, keepdim=True)
    return torch.where(total > 0, diff / total.clamp_min(1e-300), p.double())


def overlap(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """sum_x min(p(x), q(x)) per position (1 - total variation): the acceptance rate beta."""
    return torch.minimum(p, q).sum(-1)


def verify(
    p: torch.Tensor,
    q: torch.Tensor,
    draft_tokens: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept a prefix of the draft and pick the token that follows it.

    p: [B, gamma+1, V] target probabilities at each draft position plus the bonus position.
    q: [B, gamma, V] draft probabilities the draft tokens were sampled from.
    draft_tokens: [B, gamma] long. gamma may be 0 (a plain decoding step).
    Returns n_accepted [B] (long, 0..gamma) and next_token [B] (long): the residual sample after the
    first rejection, or the bonus sample from p[:, gamma] when every draft token is accepted.
    Uniforms are float64 and drawn from `generator`, so a seeded generator makes it deterministic.
    """
    if p.dim() != 3 or q.dim() != 3 or draft_tokens.dim() != 2:
        raise ValueError(
            "verify expects p [B, gamma+1, V], q [B, gamma, V] and draft_tokens [B, gamma]; got "
            f"shapes {tuple(p.shape)}, {tuple(q.shape)}, {tuple(draft_tokens.shape)}"
        )
    batch, gamma = draft_tokens.shape
    if p.shape[:2] != (batch, gamma + 1) or q.shape[:2] != (batch, gamma) or p.shape[2] != q.shape[2]:
        raise ValueError(
            f"verify shape mismatch: p {tuple(p.shape)} must be [B, gamma+1, V] and q {tuple(q.shape)} "
            f"[B, gamma, V] for draft_tokens {tuple(draft_tokens.shape)}"
        )
    uniforms = torch.rand(batch, gamma, dtype=torch.float64, device=p.device, generator=generator)
    accepted = uniforms < acceptance_probs(p, q, draft_tokens)
    n_accepted = accepted.long().cumprod(-1).sum(-1)
    rows = torch.arange(batch, device=p.device)
    q_padded = torch.cat([q, q.new_zeros(batch, 1, q.shape[2])], dim=1)  # q = 0 at the bonus position
    next_dist = residual(p[rows, n_accepted], q_padded[rows, n_accepted])
    next_token = torch.multinomial(next_dist, 1, generator=generator).squeeze(-1)
    return n_accepted, next_token


def verify_greedy(best: torch.Tensor, draft_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`verify` for a greedy target, whose p is one-hot at `best` [B, gamma+1] (its argmax per position).

    For any q, min(1, p(x)/q(x)) is 1 for x = best and 0 otherwise, and the residual after a rejection
    is one-hot at best; so a draft token is accepted iff it equals the target's argmax, and the next
    token is the argmax after the accepted prefix. Same result as `verify`, without the vocabulary-wide
    tensors or any randomness.
    """
    gamma = draft_tokens.shape[1]
    n_accepted = (draft_tokens == best[:, :gamma]).long().cumprod(-1).sum(-1)
    return n_accepted, best.gather(1, n_accepted.view(-1, 1)).squeeze(-1)
