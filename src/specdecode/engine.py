"""The speculative decoding loop (Algorithm 1 of Leviathan et al.) over two `CausalLM`s.

Each iteration: the draft proposes up to gamma tokens serially, the target scores them all in one
call, `verify` accepts a prefix and picks the next token, and both KV caches are rolled back to what
was accepted. Invariant between iterations: each model's cache holds a prefix of the sequence and
the tokens after it are "pending"; the target's pending part is exactly the last token, the draft's
is the last one or two (a bonus token is fed together with the draft's next step, never alone).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch

from . import acceptance
from .drafters import DraftContext, Drafter, draft_models, draft_source, one_hot
from .gamma import AutoGamma, BatchLoad, is_lookup
from .logprobs import TokenLogprob, token_logprobs
from .penalties import Penalties
from .protocol import accepts_logits_to_keep, last_logits
from .provenance import TokenSource, block_sources
from .results import GenerationStats
from .sampling import SamplingParams, adjusted_probs
from .trace import StepRecord

SHADOW_SOURCES = ("prediction", "ngram")  # lookups checked at plain steps too (free to propose)


def _floating(logits: torch.Tensor) -> torch.Tensor:
    """float64 logits as they are, anything else as float32 (as `adjusted_probs` computes)."""
    return logits if logits.dtype == torch.float64 else logits.float()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class DecodeLoop:
    """Runs one generation and yields the accepted token ids chunk by chunk (one chunk per target call).

    The caller sets stop conditions on the token level here (EOS ids, token budget); stop strings are
    handled by the text layer, which simply stops iterating. `stats` is filled as it goes and completed
    when the iterator ends or is closed.

    grammar (a `structured.llg.GrammarMatcher`): the target's logits at every verified position are masked
    to what the grammar allows after the tokens before it, so a draft token outside the grammar is
    always rejected; the generation ends when the grammar is complete. penalties: applied per position
    likewise. logprobs (None: off; k: the top k alternatives too): `self.logprobs` gets one entry per
    emitted token, from the processed logits of the verify call. provenance: `self.sources` gets one
    `TokenSource` per emitted token (which draft source, or the target, produced it). trace: `self.trace`
    gets one `specdecode.trace.StepRecord` per target call (what was fed, proposed, accepted, and cost).
    """

    def __init__(
        self,
        target: Any,
        drafter: Drafter | None,
        params: SamplingParams,
        gamma: int,
        generator: torch.Generator,
        eos_token_ids: set[int],
        prompt_ids: list[int] | None = None,
        policy: AutoGamma | None = None,
        reuse: bool = False,
        grammar: Any = None,
        penalties: Penalties | None = None,
        logprobs: int | None = None,
        provenance: bool = False,
        trace: bool = False,
    ) -> None:
        self.target, self.drafter, self.params = target, drafter, params
        self.grammar = grammar
        self.penalties = penalties if penalties is not None and penalties.active else None
        self.top_logprobs = logprobs
        self.logprobs: list[TokenLogprob] = []
        self._rows: torch.Tensor | None = None  # the processed logits of the last verify (for logprobs)
        self.sources: list[TokenSource] | None = [] if provenance else None
        self._accept_p: torch.Tensor | None = None  # acceptance probabilities of the last block (provenance)
        self.trace: list[StepRecord] | None = [] if trace else None
        self._mark: tuple[float, int, int] = (0.0, 0, 0)  # draft seconds, draft tokens, context at plan()
        self.gamma = gamma if drafter is not None else 0
        self.generator = generator
        self.eos = eos_token_ids
        self.device = torch.device(getattr(target, "device", "cpu"))
        self.vocab = int(target.vocab_size)
        self.prompt_ids = prompt_ids
        self.policy = policy if drafter is not None else None
        self.reuse = reuse  # drafters may keep what their caches share with the prompt
        self._trim_target = accepts_logits_to_keep(target)
        self.stats = GenerationStats(
            accepted_per_position=[0] * self.gamma, drafted_per_position=[0] * self.gamma
        )

    def _propose(self, seq: list[int], gamma: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Up to `gamma` draft tokens [g] and the q they were drawn from [g, V] (None: one-hot)."""
        assert self.drafter is not None
        start = time.perf_counter()
        tokens, q = self.drafter.propose(seq, gamma)
        tokens = tokens.to(self.device).view(-1)[:gamma]
        q = None if q is None else q.to(self.device)[: tokens.shape[0]]
        _sync(self.device)
        self.stats.draft_s += time.perf_counter() - start
        return tokens, q

    def _process(self, logits: torch.Tensor, draft_tokens: torch.Tensor) -> torch.Tensor:
        """The target's logits [gamma+1, V] as plain decoding would use them at each position of the block:
        penalties from the tokens before it, then the grammar's mask (-inf outside). Never in place."""
        if self.penalties is None and self.grammar is None:
            return logits
        draft = draft_tokens.tolist()
        if self.penalties is not None:
            logits = self.penalties.apply(logits, self.seq, self.generated, draft)
        if self.grammar is not None:
            allowed, _ = self.grammar.block_masks(draft)
            logits = _floating(logits).masked_fill(~allowed.to(logits.device), float("-inf"))
        return logits

    def _verify(self, logits: torch.Tensor, q: torch.Tensor | None, draft_tokens: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Accepted count [1], next token [1] and the summed overlap sum(min(p, q)) of the draft positions."""
        gamma = draft_tokens.shape[0]
        logits = self._process(logits, draft_tokens)
        self._rows = logits if self.top_logprobs is not None else None
        if self.params.greedy:  # p is one-hot at the argmax: no vocabulary-wide tensors needed
            best = logits.float().argmax(-1)
            n_acc, nxt = acceptance.verify_greedy(best.unsqueeze(0), draft_tokens.unsqueeze(0))
            hits = best[:gamma].view(-1, 1)
            beta = (draft_tokens == best[:gamma]).double() if q is None else q.gather(1, hits).double()
            if self.sources is not None:  # p one-hot: a draft token is accepted with probability 0 or 1
                self._accept_p = (draft_tokens == best[:gamma]).double()
            return n_acc, nxt, beta.sum()
        p = adjusted_probs(logits, self.params)
        q = one_hot(draft_tokens, self.vocab) if q is None else q
        if self.sources is not None:
            self._accept_p = acceptance.acceptance_probs(p[None], q[None], draft_tokens[None])[0]
        n_acc, nxt = acceptance.verify(p.unsqueeze(0), q.unsqueeze(0), draft_tokens.unsqueeze(0),
                                       self.generator)
        return n_acc, nxt, acceptance.overlap(p[:gamma].double(), q.double()).sum()

    # -- one generation, step by step: start, (prefill), then plan / accept until done, then end ---------
    def start(self, sequence: list[int], max_new_tokens: int) -> None:
        """A new generation extending `sequence` (the tokens both caches must be fed) by at most
        `max_new_tokens` tokens."""
        self.seq = list(sequence)
        self.max_new_tokens = max_new_tokens
        self.generated = 0
        self.done = max_new_tokens <= 0
        self._beta_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._wall_start = time.perf_counter()
        self._pending: tuple[str, int, torch.Tensor, torch.Tensor | None, int, float, int, int | None] | None
        self._pending = None
        self.logprobs.clear()  # in place: a stream reads this list as it grows
        if self.sources is not None:
            self.sources.clear()
        if self.trace is not None:
            self.trace.clear()
        self.stats.finish_reason = ""

    def begin_drafter(self) -> None:
        """Start the drafter on the sequence (its model, if any, is fed lazily by its first proposal)."""
        if self.drafter is not None and self.gamma > 0:
            ctx = DraftContext(self.params, list(self.prompt_ids or self.seq), self.generator, self.vocab,
                               self.device, self.stats, reuse=self.reuse, grammar=self.grammar)
            self.drafter.begin(list(self.seq), ctx)

    def prefill(self) -> None:
        """Feed the target all but the last token of the prompt and start the drafter (timed apart)."""
        start = time.perf_counter()
        seq = self.seq
        if len(seq) - self.target.length >= 2:
            feed = seq[self.target.length : -1]
            last_logits(self.target, torch.tensor([feed], dtype=torch.long, device=self.device), 1,
                        self._trim_target)
            self.stats.target_tokens += len(feed)
        self.begin_drafter()
        _sync(self.device)
        self.stats.prefill_s = time.perf_counter() - start

    def _lag(self, source: str) -> int:
        """Tokens a model draft would first have to read before drafting (0 for lookups)."""
        if not source or is_lookup(source):
            return 0
        models = draft_models(self.drafter)
        return len(self.seq) - models[0].length if models else 0

    def unfed(self) -> int:
        """Tokens of the sequence the target's cache still lacks (the prompt, before its prefill)."""
        return len(self.seq) - self.target.length

    def _shadow(self, source: str, gamma: int, budget: int) -> int | None:
        """At a plain step, the first token a free lookup source (prediction, n-gram) would have proposed,
        for auto-gamma to check against the target's token (None: nothing to check)."""
        if gamma > 0 or budget <= 1 or self.policy is None or not source.startswith(SHADOW_SOURCES):
            return None
        assert self.drafter is not None
        tokens, _ = self.drafter.propose(self.seq, 1)
        return int(tokens[0]) if tokens.numel() else None

    def plan(self, load: BatchLoad | None = None) -> tuple[list[int], int]:
        """The next target call: the tokens to feed (pending ones, then the draft block) and how many of
        the last rows' logits `accept` needs. `load`: what the other sequences of a batched step add
        (gamma=auto then maximises the whole step's tokens per second)."""
        assert not self.done and self._pending is None, "plan() needs a running generation, once per step"
        stats = self.stats
        budget = self.max_new_tokens - self.generated
        source = draft_source(self.drafter, self.seq) if self.gamma > 0 else ""
        if load is not None:
            load.leave(self.unfed())
        lag = self._lag(source)
        chosen = self.policy.choose(budget, source, load, lag) if self.policy else self.gamma
        if self.policy is not None and load is not None and load.rows > 0 and lag > 2:
            chosen = 0  # its backlog would be fed serially while every other sequence of the step waits
        gamma = min(chosen, self.gamma, budget - 1)
        draft_s, draft_calls = stats.draft_s - stats.draft_catchup_s, stats.draft_calls
        if self.trace is not None:
            self._mark = (stats.draft_s, stats.draft_tokens, int(self.target.length))
        q = None
        if gamma > 0:
            draft_tokens, q = self._propose(self.seq, gamma)
            gamma = int(draft_tokens.shape[0])  # a drafter may propose fewer, even none
        else:
            draft_tokens = torch.empty(0, dtype=torch.long, device=self.device)
        shadow = self._shadow(source, gamma, budget)
        feed = self.seq[self.target.length :] + draft_tokens.tolist()
        self._pending = (source, gamma, draft_tokens, q, draft_calls, draft_s, len(feed), shadow)
        if load is not None:
            load.add(len(feed))
        return feed, gamma + 1

    def accept(self, logits: torch.Tensor, target_s: float = 0.0, batched: bool = False) -> list[int]:
        """Verify the planned block against the target's `logits` [gamma+1, V] (the last rows of the
        call); roll the caches back to what was accepted and return the new tokens. `target_s`: the
        call's seconds; `batched`: the call carried other sequences too (its cost is then observed for
        the whole batch, not here)."""
        assert self._pending is not None, "accept() follows plan()"
        source, gamma, draft_tokens, q, draft_calls, draft_s, fed, shadow = self._pending
        self._pending = None
        target, drafter, stats = self.target, self.drafter, self.stats
        start = time.perf_counter()
        n_acc, nxt, beta_iter = self._verify(logits.to(self.device), q, draft_tokens)
        self._beta_sum += beta_iter
        # the one host sync of the iteration: accepted count, next token, draft tokens
        host = torch.cat([n_acc, nxt, draft_tokens]).tolist()
        seconds = time.perf_counter() - start + target_s
        stats.target_s += seconds
        stats.target_calls += 1
        stats.target_tokens += fed
        if self.policy is not None:
            alone = None if batched else seconds
            self.policy.observe(source, gamma, float(beta_iter), fed, alone,
                                stats.draft_s - stats.draft_catchup_s - draft_s,
                                stats.draft_calls - draft_calls, accepted=host[0])
        n, new = host[0], host[2 : 2 + host[0]] + [host[1]]
        if shadow is not None and self.policy is not None:
            self.policy.observe_shadow(source, new[0] == shadow)
        stats.drafted += gamma
        stats.accepted += n
        if gamma:
            stats.drafted_by_source[source] = stats.drafted_by_source.get(source, 0) + gamma
            stats.accepted_by_source[source] = stats.accepted_by_source.get(source, 0) + n
        for i in range(gamma):
            stats.drafted_per_position[i] += 1
            stats.accepted_per_position[i] += int(i < n)
        target.truncate(len(self.seq) + n)

        eos_at = next((i for i, t in enumerate(new) if t in self.eos), None)
        if eos_at is not None:
            new = new[: eos_at + 1]
        grammar_done = False
        if self.grammar is not None:  # the output ends where the grammar is complete
            new = new[: self.grammar.consume(new)]
            grammar_done = self.grammar.stopped
        if self.sources is not None:
            probs = self._accept_p.tolist() if self._accept_p is not None and gamma else []
            self.sources += block_sources(new, source, gamma, n, probs)
            self._accept_p = None
        if self._rows is not None:
            assert self.top_logprobs is not None
            self.logprobs += token_logprobs(self._rows, new, self.top_logprobs)
            self._rows = None
        if self.trace is not None:
            self._record(source, gamma, n, len(new), fed, float(beta_iter), draft_calls, seconds)
        self.seq.extend(new)
        if drafter is not None and self.gamma > 0:
            drafter.commit(self.seq)
        self.generated += len(new)
        stats.new_tokens = self.generated
        if eos_at is not None or grammar_done:
            stats.finish_reason, self.done = "stop", True
        elif self.generated >= self.max_new_tokens:
            stats.finish_reason, self.done = "length", True
        return new

    def _record(self, source: str, gamma: int, accepted: int, emitted: int, fed: int, beta: float,
                draft_calls: int, seconds: float) -> None:
        """Append this step's `StepRecord` to the trace (recording only: nothing is decided here)."""
        assert self.trace is not None
        stats, (draft_s, draft_tokens, context) = self.stats, self._mark
        self.trace.append(StepRecord(source, gamma, accepted, emitted, fed, context, beta,
                                     stats.draft_calls - draft_calls, stats.draft_tokens - draft_tokens,
                                     seconds, stats.draft_s - draft_s))

    def end(self) -> None:
        """Complete the stats (whatever ended the generation: done, a stop string, a disconnect, an error)."""
        stats = self.stats
        stats.finish_reason = stats.finish_reason or "interrupted"
        stats.wall_s = time.perf_counter() - self._wall_start
        verified = sum(stats.drafted_per_position)
        stats.acceptance_rate = float(self._beta_sum) / verified if verified else 0.0
        if self.policy is not None:
            stats.gamma_histogram = {g: c for g, c in sorted(self.policy.histogram.items())}
        stats.accepted_prediction_tokens, stats.rejected_prediction_tokens = stats.prediction_counts()
        stats.count(stats.new_tokens)

    def step(self) -> list[int]:
        """One target call of this sequence alone: plan, forward, accept."""
        feed, keep = self.plan()
        start = time.perf_counter()
        ids = torch.tensor([feed], dtype=torch.long, device=self.device)
        logits = last_logits(self.target, ids, keep, self._trim_target)
        _sync(self.device)
        return self.accept(logits, time.perf_counter() - start)

    def run(self, sequence: list[int], max_new_tokens: int) -> Iterator[list[int]]:
        """Extend `sequence` (the tokens both caches must be fed) by at most `max_new_tokens` tokens."""
        self.start(sequence, max_new_tokens)
        try:
            self.prefill()
            while not self.done:
                yield self.step()
        finally:
            # closed early by the consumer (a stop string sets "stop" first) or by an exception
            self.end()
