"""What a generation returns: the new tokens, their text and the measurements of the run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class GenerationStats:
    """Counts and timings of one generation.

    acceptance_rate is alpha estimated as the mean of sum(min(p, q)) over every verified draft
    position. accepted_per_position[i] / drafted_per_position[i] is how often draft position i (0-based)
    was accepted when it was proposed. target_tokens / draft_tokens count every position each model
    processed, so prompt_tokens + new_tokens - 1 for the target means no prefix was ever recomputed.
    wall_s includes prefill_s (both caches fed the prompt before decoding starts); tokens_per_s is
    new_tokens / wall_s and decode_tokens_per_s is new_tokens / (wall_s - prefill_s). target_calls,
    target_s and draft_s count the decoding iterations only.
    """

    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV was reused from an earlier sequence (not read)
    new_tokens: int = 0
    target_calls: int = 0
    draft_calls: int = 0
    drafted: int = 0
    accepted: int = 0
    acceptance_rate: float = 0.0
    accepted_per_position: list[int] = field(default_factory=list)
    drafted_per_position: list[int] = field(default_factory=list)
    target_tokens: int = 0
    draft_tokens: int = 0
    mean_tokens_per_target_call: float = 0.0
    wall_s: float = 0.0
    prefill_s: float = 0.0
    target_s: float = 0.0
    draft_s: float = 0.0
    draft_catchup_s: float = 0.0  # part of draft_s: a draft model catching up on text it did not draft
    tokens_per_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    gamma_histogram: dict[int, int] = field(default_factory=dict)  # gamma="auto": iterations per gamma
    drafted_by_source: dict[str, int] = field(default_factory=dict)  # "model", "ngram", "prediction", ...
    accepted_by_source: dict[str, int] = field(default_factory=dict)
    # predicted outputs, with OpenAI's meanings: prediction tokens that were proposed and appear in the
    # completion, and those proposed and rejected (still billed as completion tokens there)
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0
    finish_reason: str = ""  # "stop" (EOS or stop string), "length" (budget) or "interrupted"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def prediction_counts(self) -> tuple[int, int]:
        """(accepted, rejected) draft tokens that came from a prediction (every "prediction..." source)."""
        sources = [s for s in self.drafted_by_source if s.startswith("prediction")]
        accepted = sum(self.accepted_by_source.get(s, 0) for s in sources)
        return accepted, sum(self.drafted_by_source[s] for s in sources) - accepted

    def count(self, new_tokens: int) -> None:
        """Set the number of tokens returned and the rates that depend on it (after a stop-string cut,
        every figure agrees with the text returned)."""
        self.new_tokens = new_tokens
        self.mean_tokens_per_target_call = new_tokens / self.target_calls if self.target_calls else 0.0
        self.tokens_per_s = new_tokens / self.wall_s if self.wall_s > 0 else 0.0
        decode_s = self.wall_s - self.prefill_s
        self.decode_tokens_per_s = new_tokens / decode_s if decode_s > 0 else 0.0

    def summary(self) -> str:
        """One human-readable line."""
        line = (
            f"{self.new_tokens} tokens in {self.wall_s:.2f}s ({self.tokens_per_s:.2f} tok/s; "
            f"{self.decode_tokens_per_s:.2f} tok/s after a {self.prefill_s:.2f}s prefill), "
            f"{self.target_calls} target calls, {self.mean_tokens_per_target_call:.2f} tokens/call"
        )
        if self.drafted:
            line += (
                f", acceptance {self.acceptance_rate:.3f} ({self.accepted}/{self.drafted} accepted), "
                f"time target {self.target_s:.2f}s ({self._share(self.target_s)}) / "
                f"draft {self.draft_s:.2f}s ({self._share(self.draft_s)})"
            )
        if self.accepted_prediction_tokens or self.rejected_prediction_tokens:
            line += (f", prediction tokens accepted {self.accepted_prediction_tokens} / rejected "
                     f"{self.rejected_prediction_tokens}")
        if self.gamma_histogram:
            line += ", gamma chosen " + " ".join(f"{g}:{n}" for g, n in self.gamma_histogram.items())
        return line

    def _share(self, seconds: float) -> str:
        return f"{100 * seconds / self.wall_s:.0f}%" if self.wall_s > 0 else "-"


@dataclass
class GenerationResult:
    """The new tokens only (prompt excluded), their decoded text ("" without a tokenizer) and stats;
    `logprobs` (when asked for): one `TokenLogprob` per token; `provenance` (when asked for): one
    `specdecode.provenance.TokenSource` per token; `trace` (when asked for): one
    `specdecode.trace.StepRecord` per target call."""

    token_ids: list[int]
    text: str
    stats: GenerationStats
    logprobs: list[Any] | None = None
    provenance: list[Any] | None = None
    trace: list[Any] | None = None

    @property
    def finish_reason(self) -> str:
        return self.stats.finish_reason
