"""Request fields -> generation options: structured output (`response_format`, llama-server's `grammar`
and `json_schema`), penalties (`presence_penalty`, `frequency_penalty`, llama-server's `repeat_penalty`
and `repeat_last_n`) and `logprobs` / `top_logprobs`. Invalid values are 400s naming the field."""

from __future__ import annotations

from typing import Any

from ..structured import Constraint
from .schemas import APIError


def _compiled(constraint: Constraint, field: str) -> Constraint:
    """`constraint` once the grammar engine has compiled it (a 400 naming `field` if it does not)."""
    try:
        from ..structured.llg import compile_grammar

        compile_grammar(constraint)
    except ImportError as e:
        raise APIError(400, f"{field} needs structured output, which this server lacks: {e}", field) from None
    except ValueError as e:
        raise APIError(400, f"{field}: {e}", field) from None
    return constraint


def constraint_of(body: Any) -> Constraint | None:
    """The output constraint a request asks for (None: free text); at most one of its three fields."""
    fmt = getattr(body, "response_format", None)
    asked = [name for name, used in (("response_format", fmt is not None and fmt.type != "text"),
                                     ("grammar", bool(getattr(body, "grammar", None))),
                                     ("json_schema", getattr(body, "json_schema", None) is not None)) if used]
    if len(asked) > 1:
        raise APIError(400, f"{' and '.join(asked)} both constrain the output: send only one", asked[1])
    if not asked:
        return None
    field = asked[0]
    try:
        if field == "grammar":
            constraint = Constraint.grammar(body.grammar)
        elif field == "json_schema":  # llama-server's field: the schema itself, enforced as far as it can be
            constraint = Constraint.json(body.json_schema or None, strict=False)
        elif fmt.type == "json_object":
            constraint = Constraint.json()
        else:
            spec = fmt.json_schema
            if spec is None:
                raise APIError(400, "response_format.json_schema is required when type is 'json_schema'",
                               "response_format.json_schema")
            field = "response_format.json_schema.schema"
            constraint = Constraint.json(spec.schema_ or None, strict=bool(spec.strict))
    except ValueError as e:
        raise APIError(400, f"{field}: {e}", field) from None
    return _compiled(constraint, field)


def top_logprobs_of(body: Any, chat: bool) -> int | None:
    """How many alternatives to report per token (None: no logprobs), in OpenAI's two request shapes: chat
    has `logprobs: bool` and `top_logprobs` (0..20), completions `logprobs: int` (0..5)."""
    logprobs, top = getattr(body, "logprobs", None), getattr(body, "top_logprobs", None)
    if chat:
        if logprobs not in (None, True, False):
            raise APIError(400, "logprobs must be true or false (top_logprobs sets how many alternatives)",
                           "logprobs")
        if top is not None and not 0 <= top <= 20:
            raise APIError(400, "top_logprobs must be an integer in 0..20", "top_logprobs")
        if top and not logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        return (top or 0) if logprobs else None
    if top is not None:
        raise APIError(400, "top_logprobs is a chat completions field; /v1/completions takes logprobs: "
                       "<number of alternatives>", "top_logprobs")
    if logprobs is None or logprobs is False:
        return None
    if logprobs is True or not isinstance(logprobs, int) or not 0 <= logprobs <= 5:
        raise APIError(400, "logprobs must be an integer in 0..5 on /v1/completions", "logprobs")
    return int(logprobs)


def generation_options(body: Any, chat: bool) -> dict[str, Any]:
    """The keyword arguments of `SpeculativeGenerator.open` these fields give (each only when set)."""
    options: dict[str, Any] = {}
    constraint = constraint_of(body)
    if constraint is not None:
        options["constraint"] = constraint
    for name in ("presence_penalty", "frequency_penalty", "repeat_penalty", "repeat_last_n"):
        value = getattr(body, name, None)
        if value is not None:
            options[name] = value
    top = top_logprobs_of(body, chat)
    if top is not None:
        options["logprobs"] = top
    return options
