"""Drafters: where draft tokens come from. The engine asks for up to gamma tokens continuing the accepted
sequence and the distribution q each was drawn from; whatever the drafter proposes, `verify` keeps the
output distribution the target's (a deterministic proposal has a one-hot q).

- `ModelDrafter`: a small causal LM with its own KV cache, optionally stopping early when its own
  probability of the next token falls below a threshold.
- `NgramDrafter`: prompt lookup; copies what followed the latest earlier occurrence of the longest
  matching suffix (n = max_n..min_n) of the prompt and everything generated so far.
- `NgramThenModel`: the n-gram proposal where a long enough match exists, else the model's.
- `CallableDrafter`: any function `(sequence, gamma) -> tokens` or `-> (tokens, q)`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from .protocol import accepts_logits_to_keep, last_logits, start_sequence
from .sampling import SamplingParams, adjusted_probs


@dataclass
class DraftContext:
    """What a drafter needs from the running generation (set by the engine before the first call)."""

    params: SamplingParams
    prompt_ids: list[int]  # the prompt as given (encoder-decoder drafts encode it in begin)
    generator: torch.Generator
    vocab: int  # the target's logit width: q must have this many columns
    device: torch.device
    stats: Any  # GenerationStats: drafters add their calls and processed tokens
    reuse: bool = False  # a draft model may keep the prefix of the prompt its cache already holds
    grammar: Any = None  # the generation's GrammarMatcher: a model draft samples within the grammar too


@runtime_checkable
class Drafter(Protocol):
    """A source of draft tokens. `propose` may return fewer than gamma tokens (even none)."""

    name: str

    def begin(self, sequence: list[int], ctx: DraftContext) -> None:
        """A new generation over `sequence` (the prompt as the target is fed it)."""

    def propose(self, sequence: list[int], gamma: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Up to `gamma` tokens continuing `sequence` ([n] long) and their q ([n, vocab]; None: one-hot)."""

    def commit(self, sequence: list[int]) -> None:
        """`sequence` is what was accepted: forget anything proposed beyond it."""


def one_hot(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    """q of a deterministic proposal."""
    q = torch.zeros(tokens.shape[0], vocab, device=tokens.device)
    return q.scatter_(1, tokens.view(-1, 1), 1.0)


class ModelDrafter:
    """A draft `CausalLM`. `threshold`: end the block when the draft's probability of its most likely
    next token is below it (dynamic lookahead; decided before sampling, so exactness is untouched);
    0 never stops early."""

    def __init__(self, model: Any, threshold: float = 0.0) -> None:
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"draft threshold must be in [0, 1), got {threshold}")
        self.model, self.threshold = model, threshold
        self.name = "model"
        self._trim = accepts_logits_to_keep(model)
        self.ctx: DraftContext | None = None

    def begin(self, sequence: list[int], ctx: DraftContext) -> None:
        self.ctx = ctx
        if start_sequence(self.model, list(ctx.prompt_ids), reuse=ctx.reuse) != list(sequence):
            raise ValueError(
                "target and draft start the sequence differently (e.g. an encoder-decoder target with a "
                "decoder-only draft, or different decoder start tokens): use a draft of the same kind"
            )
        # no prefill here: the first proposal feeds whatever the cache lacks, so a generation where
        # gamma=auto never drafts never pays for the draft's prompt

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        assert self.ctx is not None
        self.ctx.stats.draft_tokens += ids.shape[1]
        return last_logits(self.model, ids, 1, self._trim)

    def propose(self, sequence: list[int], gamma: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        ctx = self.ctx
        assert ctx is not None, "begin() first"
        feed = torch.tensor([sequence[self.model.length :]], dtype=torch.long, device=ctx.device)
        if feed.shape[1] > 2:  # catching up on text it skipped (lazy prefill, plain steps): timed apart,
            start = time.perf_counter()  # so that auto-gamma's per-call draft cost stays a call's cost
            self._forward(feed[:, :-1])
            ctx.stats.draft_catchup_s += time.perf_counter() - start
            feed = feed[:, -1:]
        tokens, qs = [], []
        grammar, walked = ctx.grammar, 0
        for i in range(gamma):
            logits = self._forward(feed).to(ctx.device)
            ctx.stats.draft_calls += 1
            if grammar is not None:  # q within the grammar: tokens the target would reject are never drafted
                if grammar.stopped:
                    break
                logits = logits[:, : ctx.vocab]
                logits = logits if logits.dtype == torch.float64 else logits.float()
                allowed = grammar.allowed()[: logits.shape[-1]].to(logits.device)
                logits = logits.masked_fill(~allowed, float("-inf"))
            greedy = ctx.params.greedy
            q = None if greedy else adjusted_probs(logits[:, : ctx.vocab], ctx.params)
            if self.threshold > 0 and self._confidence(logits, q) < self.threshold:
                break  # decided from the prefix alone, before sampling: the proposal stays exactly q
            if greedy:  # q is one-hot at the argmax: no vocabulary-wide sampling needed
                token = logits[:, : ctx.vocab].argmax(-1, keepdim=True)
            else:
                assert q is not None
                if q.shape[-1] < ctx.vocab:  # draft head narrower than the target's: those ids get q = 0
                    q = torch.nn.functional.pad(q, (0, ctx.vocab - q.shape[-1]))
                token = torch.multinomial(q, 1, generator=ctx.generator)
                qs.append(q)
            tokens.append(token)
            if grammar is not None:
                grammar.consume([int(token)])
                walked += 1
            if i + 1 < gamma:
                feed = token.view(1, 1)
        if grammar is not None:
            grammar.rollback(walked)
        if not tokens:
            empty = torch.empty(0, dtype=torch.long, device=ctx.device)
            return empty, torch.empty(0, ctx.vocab, device=ctx.device)
        return torch.cat(tokens).view(-1), (torch.cat(qs) if qs else None)

    def _confidence(self, logits: torch.Tensor, q: torch.Tensor | None) -> float:
        """The draft's probability of its most likely next token (untempered softmax when greedy)."""
        assert self.ctx is not None
        if q is None:
            return float(logits[:, : self.ctx.vocab].float().softmax(-1).max())
        return float(q.max())

    def commit(self, sequence: list[int]) -> None:
        self.model.truncate(min(len(sequence) - 1, self.model.length))

    def source(self, sequence: list[int]) -> str:
        return "model"


class NgramDrafter:
    """Prompt lookup with an incremental index: each new token adds max_n + 1 entries, so a proposal costs
    O(max_n) whatever the length of the text.

    Where the text repeats a long span (a file copied into the answer, a quoted passage), the latest
    occurrence of a short suffix is often the wrong place to copy from: in code, "    return" or
    "self." recur everywhere. So every occurrence of each `anchor_n`-gram is kept, and when the suffix
    matches one, the occurrence whose match runs furthest back (up to `extent_max` tokens; the latest
    among equals) is the one copied; shorter suffixes fall back to their latest occurrence.
    """

    def __init__(self, max_n: int = 3, min_n: int = 1, anchor_n: int = 8, extent_max: int = 64) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"n-gram sizes need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
        if anchor_n < 1 or extent_max < anchor_n:
            raise ValueError(f"n-gram anchors need 1 <= anchor_n <= extent_max, got anchor_n={anchor_n}, "
                             f"extent_max={extent_max}")
        self.max_n, self.min_n, self.anchor_n, self.extent_max = max_n, min_n, anchor_n, extent_max
        self.name = "ngram"
        self.ctx: DraftContext | None = None
        self._index: list[dict[tuple[int, ...], int]] = []
        self._anchors: dict[tuple[int, ...], list[int]] = {}
        self._seq: list[int] = []
        self._indexed = 0
        self._last: tuple[Any, tuple[int, int, int]] | None = None

    def begin(self, sequence: list[int], ctx: DraftContext | None = None) -> None:
        self.ctx = ctx
        self._index = [{} for _ in range(self.max_n + 1)]
        self._anchors = {}
        self._seq, self._indexed, self._last = [], 0, None
        self._extend(sequence)

    def _extend(self, sequence: list[int]) -> None:
        """Index every n-gram that has a token after it (latest occurrence wins; every occurrence for the
        anchor n-grams)."""
        seq = self._seq
        seq.extend(sequence[len(seq) :])
        a = self.anchor_n
        for end in range(max(self._indexed, 1), len(seq)):  # the n-gram ending at `end` precedes seq[end]
            for n in range(1, min(self.max_n, end) + 1):
                self._index[n][tuple(seq[end - n : end])] = end
            if end >= a:
                self._anchors.setdefault(tuple(seq[end - a : end]), []).append(end)
        self._indexed = max(self._indexed, len(seq))

    def _longest(self, sequence: list[int]) -> tuple[int, int]:
        """(extent, position) of the anchor occurrence whose match with the end of `sequence` runs furthest
        back; (0, -1) when the last anchor_n tokens never occurred before."""
        a = self.anchor_n
        if len(sequence) <= a:
            return 0, -1
        ends = self._anchors.get(tuple(sequence[-a:]))
        if not ends:
            return 0, -1
        seq, best, best_pos = self._seq, 0, -1
        for end in reversed(ends):  # latest first: it wins ties
            if end >= len(sequence):
                continue
            k = a
            while k < self.extent_max and end - k - 1 >= 0 and seq[end - k - 1] == sequence[-k - 1]:
                k += 1
            if k > best:
                best, best_pos = k, end
                if k >= self.extent_max:
                    break
        return best, best_pos

    def _match(self, sequence: list[int]) -> tuple[int, int, int]:
        """(n, position, extent): the suffix's n-gram length, where to copy from, and how far back the
        chosen occurrence matches."""
        key = (len(sequence), tuple(sequence[-self.anchor_n :]))
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        self._extend(sequence)
        extent, pos = self._longest(sequence)
        found = (min(self.max_n, extent), pos, extent) if extent else (0, -1, 0)
        if not extent:
            for n in range(min(self.max_n, len(sequence)), self.min_n - 1, -1):
                at = self._index[n].get(tuple(sequence[-n:]))
                if at is not None:
                    found = (n, at, n)
                    break
        self._last = (key, found)
        return found

    def match(self, sequence: list[int]) -> tuple[int, int]:
        """(n, position) of the longest indexed suffix match of length >= min_n; (0, -1) when none."""
        n, pos, _ = self._match(sequence)
        return n, pos

    def lookup(self, sequence: list[int], gamma: int) -> list[int]:
        """The proposed continuation as token ids (empty when nothing matches)."""
        n, pos = self.match(sequence)
        return list(self._seq[pos : pos + gamma]) if n else []

    def propose(self, sequence: list[int], gamma: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        device = self.ctx.device if self.ctx else torch.device("cpu")
        return torch.tensor(self.lookup(sequence, gamma), dtype=torch.long, device=device), None

    def commit(self, sequence: list[int]) -> None:
        self._extend(sequence)  # only accepted text is ever indexed

    def source(self, sequence: list[int]) -> str:
        """"ngram-long" for a match of anchor_n tokens or more (a copied span: right far more often),
        "ngram" for two tokens or more, "ngram-1" for a single-token match (auto-gamma tracks them apart),
        "none" without a match."""
        n, _, extent = self._match(sequence)
        if extent >= self.anchor_n:
            return "ngram-long"
        return "ngram" if n >= 2 else "ngram-1" if n == 1 else "none"


class NgramThenModel:
    """The n-gram proposal when a suffix match of at least `min_match` tokens exists, else the model's."""

    def __init__(self, ngram: NgramDrafter, model: ModelDrafter, min_match: int = 2) -> None:
        self.ngram, self.model, self.min_match = ngram, model, min_match
        self.name = "ngram+model"

    def begin(self, sequence: list[int], ctx: DraftContext) -> None:
        self.ngram.begin(sequence, ctx)
        self.model.begin(sequence, ctx)

    def source(self, sequence: list[int]) -> str:
        """The n-gram's source ("ngram", "ngram-long") when the next proposal is a lookup, else "model"
        (auto-gamma tracks them apart)."""
        n, _ = self.ngram.match(sequence)
        return self.ngram.source(sequence) if n >= self.min_match else "model"

    def propose(self, sequence: list[int], gamma: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.source(sequence) != "model":
            return self.ngram.propose(sequence, gamma)
        return self.model.propose(sequence, gamma)

    def commit(self, sequence: list[int]) -> None:
        self.ngram.commit(sequence)
        self.model.commit(sequence)


class CallableDrafter:
    """A user function as drafter: `fn(sequence, gamma)` returns token ids, or `(token_ids, q)` with q an
    [n, vocab] tensor of the probabilities the tokens were drawn from (omit q for deterministic drafts)."""

    def __init__(self, fn: Callable[[list[int], int], Any], name: str = "callable") -> None:
        self.fn, self.name = fn, name
        self.ctx: DraftContext | None = None

    def begin(self, sequence: list[int], ctx: DraftContext) -> None:
        self.ctx = ctx

    def propose(self, sequence: list[int], gamma: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        assert self.ctx is not None
        out = self.fn(list(sequence), gamma)
        tokens, q = (out if isinstance(out, tuple) else (out, None))
        ids = torch.as_tensor(list(tokens) if not isinstance(tokens, torch.Tensor) else tokens,
                              dtype=torch.long, device=self.ctx.device).view(-1)[:gamma]
        if ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < self.ctx.vocab):
            raise ValueError(f"drafter {self.name!r} proposed token ids outside [0, {self.ctx.vocab})")
        if q is not None:
            q = torch.as_tensor(q, device=self.ctx.device)[: ids.numel()]
            if q.shape != (ids.numel(), self.ctx.vocab):
                raise ValueError(f"drafter {self.name!r} returned q of shape {tuple(q.shape)}; "
                                 f"expected ({ids.numel()}, {self.ctx.vocab})")
        return ids, q

    def commit(self, sequence: list[int]) -> None:
        pass


def draft_source(drafter: Any, sequence: list[int]) -> str:
    """Which kind of draft `drafter`'s next proposal is ("model", "ngram", "prediction", "none", ...): its
    `source(sequence)` when it has one, else its name ("" without a drafter)."""
    if drafter is None:
        return ""
    return drafter.source(sequence) if hasattr(drafter, "source") else getattr(drafter, "name", "draft")


def draft_models(drafter: Any) -> list[Any]:
    """The models a drafter runs (none for token lookups and callables)."""
    if isinstance(drafter, ModelDrafter):
        return [drafter.model]
    if isinstance(drafter, NgramThenModel):
        return [drafter.model.model]
    fallback = getattr(drafter, "fallback", None)  # a prediction drafter hands over to another
    return draft_models(fallback) if fallback is not None else []


def has_lookup_source(drafter: Any) -> bool:
    """Whether some of the drafter's proposals cost a lookup rather than a model call (n-gram, prediction),
    so that gamma=auto may choose long blocks for them."""
    if isinstance(drafter, (NgramDrafter, NgramThenModel)):
        return True
    return bool(getattr(drafter, "lookup_source", False))


def as_drafter(draft: Any) -> Drafter | None:
    """A drafter for what `SpeculativeGenerator` was given: None, a Drafter, a model or a callable."""
    if draft is None or isinstance(draft, (ModelDrafter, NgramDrafter, NgramThenModel, CallableDrafter)):
        return draft
    from .models import as_model
    from .protocol import CausalLM

    if isinstance(draft, CausalLM) or hasattr(draft, "get_output_embeddings"):
        return ModelDrafter(as_model(draft, role="draft"))
    if isinstance(draft, Drafter):
        return draft
    if callable(draft):
        return CallableDrafter(draft)
    raise ValueError(
        "draft must be None, a model (CausalLM or transformers), a Drafter or a callable; "
        f"got {type(draft).__name__}"
    )


def fork_drafter(drafter: Any, model_for: Callable[[Any], Any]) -> Drafter | None:
    """A drafter like `drafter` with state of its own, for one of several generations running at once;
    its draft models are replaced by `model_for(model)` (each generation needs its own KV cache)."""
    if drafter is None:
        return None
    if isinstance(drafter, ModelDrafter):
        return ModelDrafter(model_for(drafter.model), drafter.threshold)
    if isinstance(drafter, NgramDrafter):
        return NgramDrafter(drafter.max_n, drafter.min_n, drafter.anchor_n, drafter.extent_max)
    if isinstance(drafter, NgramThenModel):
        ngram, model = fork_drafter(drafter.ngram, model_for), fork_drafter(drafter.model, model_for)
        return NgramThenModel(ngram, model, drafter.min_match)  # type: ignore[arg-type]
    if isinstance(drafter, CallableDrafter):
        return CallableDrafter(drafter.fn, drafter.name)  # the function is the user's: it must be reentrant
    if hasattr(drafter, "fork"):
        return drafter.fork(model_for)
    raise ValueError(
        f"drafter {getattr(drafter, 'name', type(drafter).__name__)!r} cannot serve several generations at "
        "once (it has no fork(model_for) method): give it one, or serve one request at a time (--parallel 1)"
    )
