"""`SpeculativeGenerator`: prompts in, text and stats out, over a target and an optional draft."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .costs import calibrate
from .drafters import as_drafter, draft_models, has_lookup_source
from .engine import DecodeLoop
from .gamma import AutoGamma, CostModel
from .logprobs import check_top
from .models import as_model, check_pair
from .penalties import Penalties
from .prediction import PredictionDrafter
from .protocol import start_sequence
from .results import GenerationResult, GenerationStats
from .sampling import SamplingParams
from .text import TextStream

Prompt = str | Sequence[int] | Sequence[dict[str, str]]


class GenerationStream:
    """Iterator over text pieces (or token-id lists) as they are accepted.

    After it is exhausted (or closed), `result` holds the full `GenerationResult`, with the same stats
    `generate` returns.
    """

    def __init__(self, pieces: Iterator[Any]) -> None:
        self._pieces = pieces
        self.result: GenerationResult | None = None
        self.live_logprobs: list[Any] = []  # filled as the generation runs, when logprobs were asked for
        self.live_provenance: list[Any] | None = None  # TokenSources as the generation runs (provenance=True)
        self.live_stats: GenerationStats | None = None  # filled as the generation runs (progress displays)

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> Any:
        return next(self._pieces)

    def close(self) -> None:
        self._pieces.close()  # type: ignore[attr-defined]

    @property
    def stats(self) -> GenerationStats | None:
        return self.result.stats if self.result else None


class Generation:
    """One generation, advanced by whoever runs it: `begin`, then the loop's steps (`loop.step()` alone, or
    `loop.plan` / `loop.accept` inside a batched call) each passed to `take`, then `finish` and `close`."""

    def __init__(self, loop: DecodeLoop, sequence: list[int], max_new_tokens: int, text: TextStream,
                 tokens: bool = False) -> None:
        self.loop, self.sequence, self.max_new_tokens = loop, sequence, max_new_tokens
        self.text, self.tokens = text, tokens
        self.result: GenerationResult | None = None

    @property
    def stats(self) -> GenerationStats:
        return self.loop.stats

    @property
    def live_logprobs(self) -> list[Any]:
        """The logprobs entries so far (when asked for), one per emitted token."""
        return self.loop.logprobs

    @property
    def live_provenance(self) -> list[Any] | None:
        """One `TokenSource` per emitted token so far (None unless provenance was asked for)."""
        return self.loop.sources

    @property
    def done(self) -> bool:
        return self.loop.done or self.text.stopped

    def begin(self) -> None:
        """Start the clock and the loop's state (the caches are fed by the first steps)."""
        self.loop.start(self.sequence, self.max_new_tokens)

    def take(self, chunk: list[int]) -> Any:
        """The text (token ids with `tokens=True`) that accepted `chunk` releases; empty when none yet."""
        before = len(self.text.token_ids)
        piece = self.text.add(chunk)
        if self.text.stopped:
            self.loop.stats.finish_reason = "stop"
        return self.text.token_ids[before:] if self.tokens else piece

    def finish(self) -> Any:
        """Text held back until the end (an incomplete character, a possible stop string's start)."""
        tail = self.text.finish()
        return None if self.tokens else tail

    def close(self) -> GenerationResult:
        """The result, its stats completed (and agreeing with the returned text after a stop-string cut)."""
        if self.result is None:
            self.loop.end()
            self.loop.stats.count(len(self.text.token_ids))
            logprobs = self.loop.logprobs[: len(self.text.token_ids)] if self.loop.top_logprobs is not None \
                else None
            sources = self.loop.sources
            provenance = None if sources is None else sources[: len(self.text.token_ids)]
            self.result = GenerationResult(self.text.token_ids, self.text.text, self.loop.stats, logprobs,
                                           provenance, self.loop.trace)
        return self.result


class SpeculativeGenerator:
    """Exact speculative decoding of `target` with `draft` (None: plain autoregressive decoding).

    Both are `CausalLM`s (see `specdecode.protocol`) or transformers models, which get wrapped.
    The output distribution is the target's alone for any draft and any sampling settings.
    """

    def __init__(self, target: Any, draft: Any | None = None) -> None:
        self.target = as_model(target, role="target")
        self.drafter = as_drafter(draft)
        self._cost_models: dict[int, CostModel] = {}
        for model in draft_models(self.drafter):
            if model is self.target:
                raise ValueError(
                    "draft and target are the same adapter object, but each needs its own KV cache: "
                    "wrap the model twice (sd.wrap(model), sd.wrap(model)) to draft with the target itself"
                )
            check_pair(self.target, model)

    def _costs(self, gamma_max: int, drafter: Any = None, extend: bool = False) -> CostModel:
        """The measured costs auto-gamma works from (calibrated once per generator, cached on disk).
        extend: a curve measured for shorter blocks will do (extrapolated), when there is one."""
        costs = self._cost_models.get(gamma_max)
        if costs is None:  # a curve measured for longer blocks serves shorter ones too
            costs = next((c for k, c in sorted(self._cost_models.items()) if k >= gamma_max), None)
        if costs is None and extend and self._cost_models:
            costs = self._cost_models[max(self._cost_models)]
        if costs is None:
            costs = self._cost_models[gamma_max] = calibrate(self.target, self.drafter or drafter, gamma_max)
        return costs

    @property
    def draft(self) -> Any | None:
        """The draft model, when the drafter has one."""
        models = draft_models(self.drafter)
        return models[0] if models else None

    @property
    def tokenizer(self) -> Any:
        return getattr(self.target, "tokenizer", None)

    def generate(self, prompt: Prompt, **kwargs: Any) -> GenerationResult:
        """Generate a completion; keyword arguments as `stream`."""
        stream = self.stream(prompt, **kwargs)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def open(
        self,
        prompt: Prompt,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        gamma: int | str = "auto",
        gamma_max: int = 8,
        lookup_gamma_max: int = 32,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        chat: bool = False,
        generator: torch.Generator | None = None,
        tokens: bool = False,
        prediction: str | Sequence[int] | None = None,
        target: Any = None,
        drafter: Any = None,
        cache_prompt: bool = True,
        constraint: Any = None,
        grammar_drafts: bool = True,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        logprobs: int | None = None,
        provenance: bool = False,
        trace: bool = False,
    ) -> Generation:
        """A generation to advance step by step (what `stream` runs; a batching server drives several).

        target / drafter: run on these instead of the generator's own (a slot of a multi-sequence model
        and a drafter of its own, when a server batches requests); they must be models of the same files.

        prompt: a string (tokenised by the target's tokenizer; `chat=True` applies its chat template and
        also accepts a list of {"role", "content"} messages) or a list of token ids.
        temperature 0 is greedy; top_k 0, top_p 1 and min_p 0 disable those filters. gamma is the number
        of draft tokens per target call, or "auto": chosen before each call, in 0..gamma_max for a draft
        model and 0..lookup_gamma_max for drafts that cost nothing (n-gram lookup), from the measured costs
        and the running acceptance rate (see `specdecode.gamma`). seed (or a
        torch.Generator) makes sampling reproducible.
        stop: strings that end generation (not included in the text). max_new_tokens is never exceeded.
        prediction: the expected output, as text or token ids (OpenAI's Predicted Outputs; e.g. the file
        being edited). It drafts wherever the output follows it, the generator's own drafter elsewhere;
        the output is exactly what the same call without it gives. `stats.accepted_prediction_tokens`
        and `rejected_prediction_tokens` count its proposals.
        cache_prompt: start from the longest prefix of the prompt that the models' KV caches already hold
        (the previous generation's prompt and output, or any sequence a server's prefix cache holds), so
        a growing chat reads only its new tokens; `stats.cached_tokens` says how many were reused. The
        output is what a fresh read gives, up to floating-point noise; False reads the whole prompt.
        constraint: a `specdecode.Constraint` (JSON schema, any JSON object, GBNF/Lark grammar, regex): the
        output is drawn from the target's distribution restricted to it and renormalised at each step
        (before temperature and the filters), and ends when it is complete. grammar_drafts: the tokens
        the grammar forces are drafted for free (the output is the same either way).
        presence_penalty, frequency_penalty (OpenAI, over the generated tokens), repeat_penalty and
        repeat_last_n (llama.cpp, over the sequence's last tokens): see `specdecode.penalties`.
        logprobs: None, or the number (0..20) of top alternatives to report with each token's
        log-probability
        (`result.logprobs`, see `specdecode.logprobs`).
        provenance: record where each token came from (`result.provenance`: one
        `specdecode.provenance.TokenSource` per token: the draft source the target accepted it from, or
        the target's own "corrected", "bonus" or "plain" token).
        trace: record every target call (`result.trace`: one `specdecode.trace.StepRecord` each, for
        `specdecode.predict`); the output is the same either way.
        """
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
        penalties = Penalties(presence_penalty, frequency_penalty, repeat_penalty, repeat_last_n)
        check_top(logprobs)
        target = self.target if target is None else target
        drafter = self.drafter if drafter is None else drafter
        if prediction is not None:
            drafter = PredictionDrafter(self._prediction_ids(prediction), fallback=drafter)
        matcher, lookups = None, has_lookup_source(drafter)
        if constraint is not None:
            from .structured.drafter import GrammarDrafter
            from .structured.llg import GrammarMatcher

            eos_ids = set(getattr(target, "eos_token_ids", set()) or set())
            matcher = GrammarMatcher(constraint, self.tokenizer, int(target.vocab_size), eos_ids)
            if grammar_drafts or drafter is not None:
                drafter = GrammarDrafter(drafter, matcher, forced=grammar_drafts)
        auto = gamma == "auto"
        if auto:
            for label, value in (("gamma_max", gamma_max), ("lookup_gamma_max", lookup_gamma_max)):
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError(f"{label} must be an integer >= 1, got {value!r}")
            lookup_gamma_max = lookup_gamma_max if has_lookup_source(drafter) else gamma_max
            gamma = max(gamma_max, lookup_gamma_max)
        elif not isinstance(gamma, int) or isinstance(gamma, bool) or gamma < 1:
            raise ValueError(
                f"gamma must be 'auto' or an integer >= 1 (draft tokens per target call), got {gamma!r}"
            )
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if stops and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer: load the target with one, or pass stop=None")
        prompt_ids = self.encode(prompt, chat)
        if generator is None:
            generator = torch.Generator(device=getattr(target, "device", "cpu"))
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(int(seed))
        policy = None
        if auto and drafter is not None:  # measures costs the first time: before the caches start
            # forced tokens are lookups: never a calibration for them alone (a server calibrates at start)
            policy = AutoGamma(self._costs(int(gamma), drafter, extend=not lookups), gamma_max=gamma_max,
                               lookup_gamma_max=lookup_gamma_max)
        sequence = start_sequence(target, prompt_ids, reuse=cache_prompt)
        # the draft reads the same sequence as the target: the smaller context window rules
        windows = {"target": getattr(target, "max_length", None)}
        draft_windows = [w for w in (getattr(m, "max_length", None) for m in draft_models(drafter)) if w]
        if draft_windows:
            windows["draft"] = min(draft_windows)
        known = {k: v for k, v in windows.items() if v}
        limit = min(known.values()) if known else None
        if limit is not None:
            if len(sequence) >= limit:
                which = min(known, key=known.get)  # type: ignore[arg-type]
                raise ValueError(
                    f"prompt is {len(prompt_ids)} tokens but the {which}'s context window is {limit}: "
                    "shorten the prompt"
                )
            max_new_tokens = min(max_new_tokens, limit - len(sequence))
        for model in [target, *draft_models(drafter)]:  # size llama.cpp contexts up front
            if hasattr(model, "reserve"):
                room = len(sequence) + max_new_tokens + int(gamma) + 1
                model_limit = getattr(model, "max_length", None)
                model.reserve(min(room, model_limit) if model_limit else room)
        eos = set(getattr(target, "eos_token_ids", set()) or set())
        loop = DecodeLoop(target, drafter, params, gamma, generator, eos, prompt_ids, policy,
                          reuse=cache_prompt,
                          grammar=matcher, penalties=penalties, logprobs=logprobs, provenance=provenance,
                          trace=trace)
        loop.stats.prompt_tokens = len(prompt_ids)
        loop.stats.cached_tokens = int(target.length)
        return Generation(loop, sequence, max_new_tokens, TextStream(self.tokenizer, stops), tokens)

    def _pieces(
        self,
        loop: DecodeLoop,
        sequence: list[int],
        max_new_tokens: int,
        stops: list[str],
        tokens: bool,
        stream: GenerationStream,
    ) -> Iterator[Any]:
        text = TextStream(self.tokenizer, stops)
        chunks = loop.run(sequence, max_new_tokens)
        try:
            for chunk in chunks:
                before = len(text.token_ids)
                piece = text.add(chunk)
                if tokens:
                    if len(text.token_ids) > before:
                        yield text.token_ids[before:]
                elif piece:
                    yield piece
                if text.stopped:
                    loop.stats.finish_reason = "stop"
                    break
            tail = text.finish()
            if tail and not tokens:
                yield tail
        finally:
            chunks.close()
            loop.stats.count(len(text.token_ids))  # a stop string may have cut the last chunk
            stream.result = GenerationResult(text.token_ids, text.text, loop.stats)

    def stream(self, prompt: Prompt, **kwargs: Any) -> GenerationStream:
        """Stream a completion as text pieces (`tokens=True`: lists of token ids).

        Keyword arguments as `open` (max_new_tokens, temperature, top_k, top_p, min_p, gamma, gamma_max,
        lookup_gamma_max, seed, stop, chat, generator, tokens, prediction, cache_prompt, constraint,
        grammar_drafts, presence_penalty, frequency_penalty, repeat_penalty, repeat_last_n, logprobs,
        provenance, trace)."""
        generation = self.open(prompt, **kwargs)
        stream = GenerationStream(iter(()))
        stream.live_stats = generation.stats
        stream.live_logprobs = generation.loop.logprobs
        stream.live_provenance = generation.loop.sources
        stream._pieces = self._pieces(generation, stream)
        return stream

    def _pieces(self, generation: Generation, stream: GenerationStream) -> Iterator[Any]:
        loop = generation.loop
        try:
            generation.begin()
            loop.prefill()
            while not generation.done:
                piece = generation.take(loop.step())
                if piece:
                    yield piece
            tail = generation.finish()
            if tail:
                yield tail
        finally:
            stream.result = generation.close()

    def _prediction_ids(self, prediction: str | Sequence[int]) -> list[int]:
        """The prediction's token ids (text is tokenised without special tokens, as output text would be)."""
        if isinstance(prediction, str):
            if self.tokenizer is None:
                raise ValueError("a text prediction needs a tokenizer: pass token ids, or load the target "
                                 "with its tokenizer")
            return list(self.tokenizer(prediction, add_special_tokens=False)["input_ids"])
        return self._in_vocabulary(_token_list(prediction), "prediction")

    def encode(self, prompt: Prompt, chat: bool = False, tools: list[dict[str, Any]] | None = None
               ) -> list[int]:
        """The prompt's token ids exactly as `stream` feeds them (chat template applied when `chat`, offering
        `tools`, OpenAI-shaped function definitions, to templates that render them)."""
        tok = self.tokenizer
        if isinstance(prompt, str) or (chat and _is_messages(prompt)):
            if isinstance(prompt, str) and not prompt:
                raise ValueError("prompt is empty: pass some text or token ids")
            if tok is None:
                raise ValueError(
                    "a text prompt needs a tokenizer: pass token ids, or wrap the model with its tokenizer"
                )
            if chat:
                messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
                if not getattr(tok, "chat_template", None):
                    raise ValueError("chat=True but the target's tokenizer has no chat template")
                extra = {"tools": tools} if tools else {}
                rendered = tok.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False,
                                                   **extra)
                ids = tok(rendered, add_special_tokens=False)["input_ids"]
            else:
                ids = tok(prompt)["input_ids"]
        else:
            ids = _token_list(prompt)
            if chat:
                raise ValueError("chat=True needs a text prompt or a list of messages, not token ids")
        if not ids:
            raise ValueError("prompt is empty after tokenisation: pass some text or token ids")
        return self._in_vocabulary(ids, "prompt")

    def _in_vocabulary(self, ids: list[int], what: str) -> list[int]:
        """`ids`, after checking that each is a row of the target's logits (else a ValueError)."""
        vocab = int(self.target.vocab_size)
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"{what} token ids {bad[:5]} are outside the target's vocabulary [0, {vocab})")
        return ids


def _is_messages(prompt: Any) -> bool:
    return isinstance(prompt, (list, tuple)) and bool(prompt) and all(isinstance(m, dict) for m in prompt)


def _token_list(prompt: Any) -> list[int]:
    if isinstance(prompt, torch.Tensor):
        prompt = prompt.view(-1).tolist()
    try:
        ids = [int(t) for t in prompt]
    except (TypeError, ValueError):
        raise ValueError(
            f"prompt must be a string or a list of token ids, got {type(prompt).__name__}"
        ) from None
    if any(isinstance(t, bool) for t in prompt):
        raise ValueError("prompt token ids must be integers, not booleans")
    return ids
