"""Structured output: constrain a generation to a JSON schema, any JSON object, a grammar or a regex.

`Constraint` says what the output must match (framework-free); `specdecode.structured.llg` compiles it
with llguidance and follows a generation token by token with rollback (`GrammarMatcher`);
`specdecode.structured.drafter` turns the tokens the grammar forces into free drafts.
The engine masks the target's logits at every verified position with the grammar's state after the
tokens before it, so the output distribution is the target's restricted to the grammar and renormalised.
"""

from __future__ import annotations

from .constraint import Constraint

__all__ = ["Constraint"]
