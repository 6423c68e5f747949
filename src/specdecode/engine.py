"""The speculative decoding loop (Algorithm 1 of Leviathan et al.) over two `CausalLM`s.

Each iteration: the draft proposes up to gamma tokens serially, the target scores them all in one
call, `verify` accepts a prefix and picks the next token, and both KV caches are rolled back to what
was accepted. Invariant between iterations: each model's cache holds a prefix of the sequence and
the tokens after it are "pending"; the target's pending part is exactly the last token, the draft's
is the last one or two (a bonus token is fed together with the draft's next step, never alone).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from typing import Any

import torch

from . import acceptance
from .results import GenerationStats
from .sampling import SamplingParams, adjusted_probs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _accepts_logits_to_keep(model: Any) -> bool:
    """Whether `model.forward` takes `logits_to_keep` (cached on the model object)."""
    known = getattr(model, "_specdecode_trims", None)
    if known is None:
        try:
            known = "logits_to_keep" in inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            known = False
        try:
            model._specdecode_trims = known
        except AttributeError:
            pass
    return known


def _logits(model: Any, ids: torch.Tensor, keep: int, trim: bool) -> torch.Tensor:
    """Last `keep` rows of the model's logits for `ids` [1, T], as [keep, V]."""
    out = model.forward(ids, logits_to_keep=keep) if trim else model.forward(ids)
    return out[0, -keep:]


class DecodeLoop:
    """Runs one generation and yields the accepted token ids chunk by chunk (one chunk per target call).

    The caller sets stop conditions on the token level here (EOS ids, token budget); stop strings are
    handled by the text layer, which simply stops iterating. `stats` is filled as it goes and completed
    when the iterator ends or is closed.
    """

    def __init__(
        self,
        target: Any,
        draft: Any | None,
        params: SamplingParams,
        gamma: int,
        generator: torch.Generator,
        eos_token_ids: set[int],
    ) -> None:
        self.target, self.draft, self.params = target, draft, params
        self.gamma = gamma if draft is not None else 0
        self.generator = generator
        self.eos = eos_token_ids
        self.device = torch.device(getattr(target, "device", "cpu"))
        self.vocab = int(target.vocab_size)
        self._trim_target = _accepts_logits_to_keep(target)
        self._trim_draft = draft is not None and _accepts_logits_to_keep(draft)
        self.stats = GenerationStats(
            accepted_per_position=[0] * self.gamma, drafted_per_position=[0] * self.gamma
        )

    def _draft_block(self, pending: list[int], gamma: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample `gamma` draft tokens; returns tokens [gamma] and the q they were drawn from [gamma, V]."""
        draft, stats = self.draft, self.stats
        start = time.perf_counter()
        feed = torch.tensor([pending], dtype=torch.long, device=self.device)
        tokens, qs = [], []
        for i in range(gamma):
            logits = _logits(draft, feed, 1, self._trim_draft).to(self.device)
            stats.draft_calls += 1
            stats.draft_tokens += feed.shape[1]
            q = adjusted_probs(logits[:, : self.vocab], self.params)
            if q.shape[-1] < self.vocab:  # draft head narrower than the target's: those ids get q = 0
                q = torch.nn.functional.pad(q, (0, self.vocab - q.shape[-1]))
            token = torch.multinomial(q, 1, generator=self.generator)
            tokens.append(token)
            qs.append(q)
            if i + 1 < gamma:
                feed = token.view(1, 1)
        _sync(self.device)
        stats.draft_s += time.perf_counter() - start
        return torch.cat(tokens).view(-1), torch.cat(qs)

    def _prefill(self, seq: list[int]) -> None:
        """Feed both caches all but the last token of the prompt (timed apart from decoding)."""
        start = time.perf_counter()
        for model, trim, role in ((self.target, self._trim_target, "target"),
                                  (self.draft, self._trim_draft, "draft")):
            if model is None or (role == "draft" and self.gamma == 0) or len(seq) - model.length < 2:
                continue
            feed = seq[model.length : -1]
            _logits(model, torch.tensor([feed], dtype=torch.long, device=self.device), 1, trim)
            setattr(self.stats, f"{role}_tokens", getattr(self.stats, f"{role}_tokens") + len(feed))
        _sync(self.device)
        self.stats.prefill_s = time.perf_counter() - start

    def run(self, sequence: list[int], max_new_tokens: int) -> Iterator[list[int]]:
        """Extend `sequence` (the tokens both caches must be fed) by at most `max_new_tokens` tokens."""
        target, draft, stats = self.target, self.draft, self.stats
        seq = list(sequence)
        generated = 0
        beta_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        wall_start = time.perf_counter()
        stats.finish_reason = ""
        try:
            self._prefill(seq)
            while generated < max_new_tokens:
                gamma = min(self.gamma, max_new_tokens - generated - 1)
                base = len(seq)
                if gamma > 0:
                    draft_tokens, q = self._draft_block(seq[draft.length :], gamma)
                else:
                    draft_tokens = torch.empty(0, dtype=torch.long, device=self.device)
                    q = torch.empty(0, self.vocab, device=self.device)

                start = time.perf_counter()
                pending = torch.tensor(seq[target.length :], dtype=torch.long, device=self.device)
                feed = torch.cat([pending, draft_tokens]).view(1, -1)
                logits = _logits(target, feed, gamma + 1, self._trim_target).to(self.device)
                p = adjusted_probs(logits, self.params)
                stats.target_calls += 1
                stats.target_tokens += feed.shape[1]
                n_acc, nxt = acceptance.verify(
                    p.unsqueeze(0), q.unsqueeze(0), draft_tokens.unsqueeze(0), self.generator
                )
                if gamma > 0:
                    beta_sum += acceptance.overlap(p[:gamma].double(), q.double()).sum()
                # the one host sync of the iteration: accepted count, next token, draft tokens
                host = torch.cat([n_acc, nxt, draft_tokens]).tolist()
                stats.target_s += time.perf_counter() - start
                n, new = host[0], host[2 : 2 + host[0]] + [host[1]]

                stats.drafted += gamma
                stats.accepted += n
                for i in range(gamma):
                    stats.drafted_per_position[i] += 1
                    stats.accepted_per_position[i] += int(i < n)
                target.truncate(base + n)
                if gamma > 0:
                    draft.truncate(min(base + n, draft.length))

                eos_at = next((i for i, t in enumerate(new) if t in self.eos), None)
                if eos_at is not None:
                    new = new[: eos_at + 1]
                seq.extend(new)
                generated += len(new)
                stats.new_tokens = generated
                yield new
                if eos_at is not None:
                    stats.finish_reason = "stop"
                    break
            else:
                stats.finish_reason = "length"
        finally:
            # closed early by the consumer (a stop string sets "stop" first) or by an exception
            stats.finish_reason = stats.finish_reason or "interrupted"
            stats.wall_s = time.perf_counter() - wall_start
            verified = sum(stats.drafted_per_position)
            stats.acceptance_rate = float(beta_sum) / verified if verified else 0.0
            stats.mean_tokens_per_target_call = (
                stats.new_tokens / stats.target_calls if stats.target_calls else 0.0
            )
            stats.tokens_per_s = stats.new_tokens / stats.wall_s if stats.wall_s > 0 else 0.0
            decode_s = stats.wall_s - stats.prefill_s
            stats.decode_tokens_per_s = stats.new_tokens / decode_s if decode_s > 0 else 0.0
