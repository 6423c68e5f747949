"""Where each emitted token came from: a draft source whose token the target accepted, or the target itself.

A target call verifies a block of `gamma` draft tokens from one source ("prediction", "ngram", "model",
"grammar", ...), accepts the first n and adds one token of its own: "corrected" when it replaces a
rejected draft token (sampled from the residual distribution), "bonus" when the whole block was
accepted, "plain" when nothing was drafted. Greedy or sampled, these labels say how the exact
algorithm produced the text; they never change it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

TARGET_SOURCES = ("corrected", "bonus", "plain")


@dataclass(frozen=True)
class TokenSource:
    """One emitted token and its origin.

    source: the draft source of an accepted draft token, else "corrected", "bonus" or "plain" (the
    target's own token). p: for an accepted draft token, its acceptance probability min(1, p(x)/q(x));
    for a corrected token, that of the rejected draft token it replaced; None otherwise. draft: for a
    corrected token, the source of the rejected draft token.
    """

    token: int
    source: str
    p: float | None = None
    draft: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def block_sources(new: list[int], source: str, gamma: int, accepted: int, probs: list[float]
                  ) -> list[TokenSource]:
    """The origins of the tokens `new` one verified block emitted: `accepted` draft tokens of `source`
    (out of `gamma` proposed, with acceptance probabilities `probs`), then the target's token; `new` may
    be shorter than accepted + 1 (cut at an end of sequence or where a grammar completes)."""
    out = [TokenSource(t, source, round(probs[i], 4)) for i, t in enumerate(new[:accepted])]
    if len(new) > accepted:
        last = new[accepted]
        if gamma == 0:
            out.append(TokenSource(last, "plain"))
        elif accepted < gamma:
            out.append(TokenSource(last, "corrected", round(probs[accepted], 4), source))
        else:
            out.append(TokenSource(last, "bonus"))
    return out
