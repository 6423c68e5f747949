"""What a constrained output must match: a JSON schema, any JSON object, a grammar (GBNF or Lark) or a
regular expression. Plain data: compiling it is the grammar engine's job (`specdecode.structured.llg`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["json_object", "json_schema", "grammar", "regex"]


@dataclass(frozen=True)
class Constraint:
    """An output constraint.

    kind: "json_object" (any JSON object), "json_schema" (`value` is the schema, a dict or its JSON text),
    "grammar" (`value` is a llama.cpp GBNF grammar or a Lark grammar as llguidance reads it, told apart
    by llguidance: Lark has a `start:` rule or a `%llguidance` line), or "regex".
    strict (JSON schemas): True refuses schema keywords the engine cannot enforce; False ignores them
    (OpenAI's strict=false: best effort on those keywords, the rest still enforced).
    A JSON value inside other text (e.g. a tool call in a chat template's wrapper) is a Lark grammar using
    llguidance's `%json`: 'start: "<tool_call>\\n" call "\\n</tool_call>"\ncall: %json {schema}'.
    """

    kind: Kind
    value: Any = None
    strict: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("json_object", "json_schema", "grammar", "regex"):
            raise ValueError(f"constraint kind must be json_object, json_schema, grammar or regex; "
                             f"got {self.kind!r}")
        if self.kind == "json_schema":
            schema = self.value
            if isinstance(schema, str):
                try:
                    schema = json.loads(schema)
                except ValueError as e:
                    raise ValueError(f"the JSON schema is not valid JSON: {e}") from None
            if not isinstance(schema, dict):
                raise ValueError(f"a JSON schema must be an object, got {type(schema).__name__}")
            object.__setattr__(self, "value", schema)
        elif self.kind in ("grammar", "regex") and not (isinstance(self.value, str) and self.value.strip()):
            raise ValueError(f"a {self.kind} constraint needs its text as a non-empty string")

    @classmethod
    def json(cls, schema: dict[str, Any] | str | None = None, strict: bool = True) -> Constraint:
        """Any JSON object (schema None) or one matching `schema`."""
        return cls("json_object") if schema is None else cls("json_schema", schema, strict)

    @classmethod
    def grammar(cls, text: str) -> Constraint:
        """A GBNF (llama.cpp) or Lark grammar."""
        return cls("grammar", text)

    @classmethod
    def regex(cls, pattern: str) -> Constraint:
        """Text matching a regular expression."""
        return cls("regex", pattern)
