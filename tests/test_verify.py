"""Test 4: `verify` on hand-made p/q cases."""

from __future__ import annotations

import pytest
import torch

from specdecode import verify
from specdecode.acceptance import acceptance_probs, overlap, residual


def one_hot(i: int, v: int = 4) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(i), v).double()


def test_all_accepted_gives_bonus_from_last_p():
    # draft proposes 1, 2; the target agrees with certainty; the bonus position is one-hot on 3
    p = torch.stack([one_hot(1), one_hot(2), one_hot(3)]).unsqueeze(0)
    q = torch.stack([one_hot(1), one_hot(2)]).unsqueeze(0)
    n, nxt = verify(p, q, torch.tensor([[1, 2]]), torch.Generator().manual_seed(0))
    assert n.tolist() == [2] and nxt.tolist() == [3]


def test_first_rejected_resamples_from_residual():
    # target never emits 1 at the first position: certain rejection; residual = norm(max(0, p - q))
    p = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.25] * 4]], dtype=torch.float64)
    q = torch.tensor([[[0.0, 1.0, 0.0, 0.0]]], dtype=torch.float64)
    seen = set()
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        n, nxt = verify(p, q, torch.tensor([[1]]), gen)
        assert n.tolist() == [0]
        seen.add(int(nxt))
    assert seen == {2, 3}


def test_residual_excludes_tokens_where_q_covers_p():
    p = torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=torch.float64)
    q = torch.tensor([0.6, 0.1, 0.1, 0.2], dtype=torch.float64)
    r = residual(p, q)
    assert torch.allclose(r, torch.tensor([0.0, 2 / 3, 1 / 3, 0.0], dtype=torch.float64))
    assert torch.allclose(residual(p, p), p)  # numerically empty residual falls back to p
    assert float(overlap(p, q)) == pytest.approx(0.5 + 0.1 + 0.1)


def test_acceptance_probability_is_min_one_ratio():
    p = torch.tensor([[[0.2, 0.8], [0.5, 0.5]]], dtype=torch.float64)
    q = torch.tensor([[[0.5, 0.5]]], dtype=torch.float64)
    assert acceptance_probs(p, q, torch.tensor([[0]])).tolist() == [[pytest.approx(0.4)]]
    assert acceptance_probs(p, q, torch.tensor([[1]])).tolist() == [[1.0]]


def test_batched_rows_are_independent_and_gamma_zero_is_plain_sampling():
    v = 4
    p = torch.stack([
        torch.stack([one_hot(1), one_hot(2), one_hot(3)]),  # row 0: all accepted -> bonus 3
        torch.stack([one_hot(0), one_hot(2), one_hot(3)]),  # row 1: first rejected -> 0
    ])
    q = torch.stack([torch.stack([one_hot(1), one_hot(2)])] * 2)
    n, nxt = verify(p, q, torch.tensor([[1, 2], [1, 2]]))
    assert n.tolist() == [2, 0] and nxt.tolist() == [3, 0]
    n, nxt = verify(one_hot(2).view(1, 1, v), torch.empty(1, 0, v, dtype=torch.float64),
                    torch.empty(1, 0, dtype=torch.long))
    assert n.tolist() == [0] and nxt.tolist() == [2]


def test_acceptance_frequency_matches_ratio():
    p = torch.tensor([[[0.3, 0.7], [0.5, 0.5]]], dtype=torch.float64)
    q = torch.tensor([[[0.6, 0.4]]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    hits = sum(int(verify(p, q, torch.tensor([[0]]), gen)[0]) for _ in range(4000))
    assert abs(hits / 4000 - 0.5) < 0.03  # p/q = 0.3/0.6


def test_shape_errors_are_specific():
    with pytest.raises(ValueError, match="gamma"):
        verify(torch.rand(1, 3, 4), torch.rand(1, 3, 4), torch.zeros(1, 3, dtype=torch.long))


def test_greedy_verify_equals_the_general_rule_for_any_q():
    from specdecode.acceptance import verify_greedy

    gen = torch.Generator().manual_seed(3)
    for trial in range(200):
        batch, gamma, vocab = 3, trial % 5, 6
        best = torch.randint(0, vocab, (batch, gamma + 1), generator=gen)
        p = torch.nn.functional.one_hot(best, vocab).float()
        q = torch.rand(batch, gamma, vocab, generator=gen) ** 4
        q = q / q.sum(-1, keepdim=True)
        # drafts that often agree with the target, drawn from q where they do not
        drawn = torch.multinomial(q.view(-1, vocab), 1, generator=gen).view(batch, gamma)
        agree = torch.rand(batch, gamma, generator=gen) < 0.6
        draft = torch.where(agree, best[:, :gamma], drawn)
        n_fast, next_fast = verify_greedy(best, draft)
        n, nxt = verify(p, q, draft, gen)
        assert torch.equal(n_fast, n) and torch.equal(next_fast, nxt)
