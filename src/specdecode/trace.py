"""Per-step records of a generation (an acceptance trace): what each target call was fed, which draft source
proposed how many tokens and how many the target accepted, and what the step cost.

A trace is recorded by `generate(..., trace=True)` (`result.trace`) and read by `specdecode.predict`,
which re-prices it under another machine's cost curves. Recording draws no random numbers and changes
no decision, so the output is the same with and without it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StepRecord:
    """One target call.

    source: the draft source of the block ("" for a plain step); proposed: draft tokens verified;
    accepted: how many of them the target accepted; emitted: tokens the step added to the output (after an
    EOS or a grammar's end cut the block); fed: tokens the target call processed (pending ones plus the
    block); context: tokens in the target's cache before the call; beta: the summed sum(min(p, q)) over
    the proposed positions; draft_calls / draft_tokens: the draft model's calls and processed positions
    in this step (a catch-up on skipped text included; 0 for lookups); target_s / draft_s: measured
    seconds of the target call (verification included) and of the drafting.
    """

    source: str
    proposed: int
    accepted: int
    emitted: int
    fed: int
    context: int
    beta: float = 0.0
    draft_calls: int = 0
    draft_tokens: int = 0
    target_s: float = 0.0
    draft_s: float = 0.0


@dataclass
class Trace:
    """The steps of one generation and what identifies it (`config`: e.g. "model gamma=4", `prompt_id`,
    `task`); `prefill_s` and `decode_s` are the measured seconds of the prompt's read and of the steps;
    `greedy`: temperature 0; `gamma`: the policy it ran under."""

    steps: list[StepRecord] = field(default_factory=list)
    config: str = ""
    prompt_id: str = ""
    task: str = ""
    prompt_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    greedy: bool = True
    gamma: int | str = "auto"  # the policy the trace ran under: a fixed number of draft tokens, or "auto"

    @property
    def new_tokens(self) -> int:
        return sum(s.emitted for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trace:
        """A trace from `to_dict`'s output; a ValueError naming what is missing otherwise."""
        try:
            steps = [StepRecord(**s) for s in data["steps"]]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a trace (need 'steps', each a StepRecord's fields): {exc}") from None
        rest = {k: v for k, v in data.items() if k != "steps" and k in cls.__dataclass_fields__}
        return cls(steps=steps, **rest)


def save_traces(path: str | Path, traces: list[Trace], meta: dict[str, Any] | None = None) -> None:
    """Write `traces` (and free-form `meta`: models, machine, date) as one JSON file."""
    payload = {"meta": meta or {}, "traces": [t.to_dict() for t in traces]}
    Path(path).write_text(json.dumps(payload, indent=1), encoding="utf-8")


def load_traces(path: str | Path) -> tuple[list[Trace], dict[str, Any]]:
    """The traces and meta written by `save_traces`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read traces from {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("traces"), list):
        raise ValueError(f"{path}: not a traces file (expected {{'meta': ..., 'traces': [...]}})")
    return [Trace.from_dict(t) for t in data["traces"]], dict(data.get("meta") or {})
