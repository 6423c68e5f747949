"""Log-probabilities of the emitted tokens, from the target's own distribution at each position.

The distribution is the target's after penalties and the grammar mask, before temperature and the
sampling filters (as OpenAI reports them: the model's probabilities, whatever the sampling settings).
A token accepted from a draft gets the value of the verify call's row at its position, which is the
distribution plain decoding would have had there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

TOP_LOGPROBS_MAX = 20  # as OpenAI


@dataclass
class TokenLogprob:
    """One emitted token: its id, its log-probability, and the `top` most likely tokens with theirs."""

    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


def check_top(top: int | None) -> None:
    """ValueError unless `top` is None (off) or 0..TOP_LOGPROBS_MAX."""
    if top is not None and (not isinstance(top, int) or isinstance(top, bool)
                            or not 0 <= top <= TOP_LOGPROBS_MAX):
        raise ValueError(f"logprobs must be None or an integer in 0..{TOP_LOGPROBS_MAX} "
                         f"(the number of top alternatives), got {top!r}")


def token_logprobs(logits: torch.Tensor, tokens: list[int], top: int) -> list[TokenLogprob]:
    """For each row of `logits` [k, V] (the processed logits at k emitted positions) and its emitted token."""
    logp = torch.log_softmax(logits[: len(tokens)].float(), dim=-1)
    chosen = logp.gather(1, torch.tensor(tokens, device=logp.device).view(-1, 1)).view(-1).tolist()
    tops: list[list[tuple[int, float]]] = [[] for _ in tokens]
    if top > 0:
        values, ids = logp.topk(min(top, logp.shape[-1]), dim=-1)
        tops = [[(int(i), float(v)) for i, v in zip(r_ids, r_vals, strict=True) if v > float("-inf")]
                for r_ids, r_vals in zip(ids.tolist(), values.tolist(), strict=True)]
    return [TokenLogprob(t, float(lp), tp) for t, lp, tp in zip(tokens, chosen, tops, strict=True)]
